"""A fresh run keeps the record of an earlier run in its output folder.

A fresh run (no checkpoint to resume from) refuses a folder that has checkpoints, but an earlier run that stopped
before its first checkpoint leaves only its record there: ``train_log.jsonl``, the ``tensorboard`` folder, validation
videos (``validation/``, V3: ``samples/``), ``config.yaml`` and possibly ``checkpoints/loss.png``. The new run would
truncate the log, overwrite the videos of the same steps and the config, and mix its TensorBoard events with the old
ones. Before it writes anything, the main process renames each of them with the suffix ``.<UTC time>`` (the time the
earlier log was last written, ``-1``, ``-2``, ... added when a name is taken): ``train_log.20250101T120000Z.jsonl``,
``tensorboard.20250101T120000Z/``. Nothing is ever overwritten or deleted.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOG = "train_log.jsonl"
# what a run writes into its folder (besides checkpoints and caches), relative to it
RECORDS = (LOG, "tensorboard", "validation", "samples", "checkpoints/loss.png")
CONFIG = "config.yaml"


def _holds_something(path: Path) -> bool:
    if path.is_symlink():
        return True
    if path.is_file():
        return path.stat().st_size > 0
    return path.is_dir() and any(path.iterdir())


def _aside(path: Path, suffix: str) -> Path:
    """``train_log.jsonl`` -> ``train_log.<suffix>.jsonl``; a folder gets ``<name>.<suffix>``."""
    if path.suffix and not path.is_dir():
        return path.with_name(f"{path.stem}.{suffix}{path.suffix}")
    return path.with_name(f"{path.name}.{suffix}")


def _stamp(out: Path) -> str:
    log_file = out / LOG
    when = log_file.stat().st_mtime if log_file.is_file() else time.time()
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))


def keep_earlier_run(out_dir, names=RECORDS, with_config: bool = True) -> dict[str, Path]:
    """Rename an earlier run's record in ``out_dir`` aside (see the module's text); the main process of a fresh run
    calls it before writing anything there. ``names``: which records to look at (folder-relative). ``config.yaml`` goes
    with them (``with_config``) when echomimic-train wrote it and something else is kept (a config of the user's own
    is left to :func:`trainer.config_file.write_run_config`). Returns {name: its new path}; empty when there was nothing to keep
    (an empty log or folder is not a record)."""
    from .config_file import RUN_CONFIG_HEADER

    out = Path(out_dir)
    found = [n for n in names if _holds_something(out / n)]
    if not found:
        return {}
    config = out / CONFIG
    if with_config and config.is_file() and not config.is_symlink():
        with open(config, encoding="utf-8", errors="replace") as f:
            if f.read(len(RUN_CONFIG_HEADER)) == RUN_CONFIG_HEADER:
                found.append(CONFIG)
    base, n = _stamp(out), 0
    suffix = base
    while any(os.path.lexists(_aside(out / name, suffix)) for name in found):
        n += 1
        suffix = f"{base}-{n}"
    moved = {}
    for name in found:
        dest = _aside(out / name, suffix)
        os.rename(out / name, dest)
        moved[name] = dest
    log.warning("%s held the record of an earlier run (and no checkpoint): this fresh run keeps it as %s", out, ", ".join(str(p.relative_to(out)) + ("/" if p.is_dir() else "") for p in moved.values()))
    return moved
