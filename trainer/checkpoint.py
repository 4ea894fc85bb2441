"""Atomic checkpoints on top of ``Accelerator.save_state``.

``save_state`` writes model, optimizer, registered objects (LR scheduler, train state, EMA) and every RNG
state into ``checkpoints/.tmp-step-00000100``; ``meta.json`` is added and the folder is renamed to
``checkpoints/step-00000100`` only then. A checkpoint folder therefore exists completely or not at all:
a run killed while saving leaves a ``.tmp-*`` folder, which the next run deletes. A step saved again keeps its
earlier folder aside (``.old-step-*``) until the new one is in place: a kill between the renames leaves the step
whole, listed (and resumed) from there. Only the newest ``keep_last`` checkpoints are kept.

Several nodes (``distributed.shared_fs: local``, accelerate's ``save_on_each_node``): the first process of each
node writes the whole checkpoint into its own ``output_dir`` (model, optimizer, registered objects, its node's
RNG states) and ``meta.json``, renames and prunes there, so every node can resume on its own; resuming checks
that every process found the same newest checkpoint. FSDP (``distributed.strategy: fsdp``): the model and
optimizer are written as sharded ``torch.distributed.checkpoint`` folders (each rank its part), and the main
process merges the model shards into ``model.safetensors`` (full weights: what ``export`` and the checksum
tools read) before the rename.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from echomimic_lib.io.os_errors import writing

PATTERN = re.compile(r"^step-(\d{8})$")
KEPT_CHECKPOINTS = " Nothing partial was kept; the earlier checkpoints are as they were (--resume goes on from the last)."
ASIDE = ".old-"  # ".old-step-N": step N's earlier checkpoint, kept while a new save of step N takes its place


def checkpoint_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def refuse_inside_checkpoint(path, what: str) -> None:
    """Raise a ConfigError when ``path`` (through links) is a checkpoint folder or inside one
    (``.../checkpoints/step-NNNNNNNN/...`` or a ``.tmp-step-*`` one): rotation (``keep_last``) deletes that folder
    whole, a new save of its step replaces it, and resuming from it reads every file in it."""
    from .config import ConfigError

    real = Path(os.path.realpath(path))
    for folder in (real, *real.parents):
        if folder.parent.name == "checkpoints" and (PATTERN.match(folder.name) or folder.name.startswith((".tmp-step-", ASIDE))):
            run = folder.parent.parent
            raise ConfigError(f"{what} {path} is inside the checkpoint folder {folder}: the run deletes that folder whole "
                              "when it rotates its checkpoints (checkpoint.keep_last), or replaces it when it saves that step "
                              f"again, and what was written there would be lost. Choose a folder outside {folder.parent}, "
                              f"e.g. {run / 'export'}.")


def _a_run(folder: Path) -> bool:
    """``folder`` holds a run's record (its log, lock, or the config.yaml echomimic-train writes): a run that may not
    have saved a checkpoint yet. A config.yaml of the user's own does not count."""
    if any(os.path.lexists(folder / n) for n in ("train_log.jsonl", ".echomimic-train.lock")):
        return True
    config = folder / "config.yaml"
    try:
        if config.is_file():
            with open(config, "rb") as f:
                return f.read(16) == b"# echomimic-trai"
    except OSError:
        pass
    return False


def refuse_in_checkpoints(path, what: str) -> None:
    """:func:`refuse_inside_checkpoint`, and ``path`` (through links) equal to or inside a run's ``checkpoints/``
    folder (one holding checkpoints, or beside a run's ``config.yaml`` / ``train_log.jsonl``): an export written there
    lies among the run's checkpoints, where rotation, ``--resume`` and the next export look. A folder of the user's
    that is only named ``checkpoints`` is not a run's."""
    from .config import ConfigError

    refuse_inside_checkpoint(path, what)
    real = Path(os.path.realpath(path))
    for folder in (real, *real.parents):
        if folder.name == "checkpoints" and (list_checkpoints(folder) or _a_run(folder.parent)):
            raise ConfigError(f"{what} {path} is {'' if folder == real else 'inside '}the run's checkpoint folder {folder}: that folder is the run's own "
                              "(its checkpoints, rotated and resumed from there), not a place for exports. Choose a "
                              f"folder outside it, e.g. {folder.parent / 'export'}. Nothing was written.")


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    root = Path(root)
    if not root.is_dir():
        return []
    found: dict[int, Path] = {}
    for p in root.iterdir():
        aside = p.name.startswith(ASIDE)
        m = PATTERN.match(p.name[len(ASIDE):] if aside else p.name)
        if m and (p / "meta.json").is_file() and not (aside and int(m.group(1)) in found):
            found[int(m.group(1))] = p  # a step's own folder wins over its earlier one kept aside
    return sorted(found.items())


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def read_meta(ckpt: Path) -> dict:
    """A checkpoint's ``meta.json`` (its step and the run's settings). Damaged (cut short by a disk or a copy, not
    JSON, not an object, no step number): a ConfigError naming the file and the checkpoint to use instead, raised where
    it is first read (``fit`` / ``v3-fit --resume`` before anything is built or written, ``export`` before reading
    weights)."""
    from echomimic_lib.io.json_file import read_json

    from .config import ConfigError

    path = Path(ckpt) / "meta.json"
    fix = _earlier_checkpoint_fix(Path(ckpt))
    meta = read_json(path, "not a readable checkpoint record", fix, ConfigError, expect=dict)
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ConfigError(f"{path}: not a readable checkpoint record (no step number); {fix}")
    return meta


def _earlier_checkpoint_fix(ckpt: Path) -> str:
    """What to do about a checkpoint whose ``meta.json`` is damaged: the newest earlier checkpoint beside it."""
    m = PATTERN.match(ckpt.name)
    earlier = [p for s, p in list_checkpoints(ckpt.parent) if m and s < int(m.group(1))]
    if earlier:
        return (f"the checkpoint {ckpt} is damaged: use an earlier one, e.g. --resume {earlier[-1]} (or export it), or move "
                f"{ckpt.name} out of {ckpt.parent} and --resume takes the newest one left")
    return (f"the checkpoint {ckpt} is damaged and no earlier one is kept beside it: give an earlier checkpoint you have, "
            "or start the run over in a new output_dir")


def remove_partial(root: Path) -> list[Path]:
    root = Path(root)
    gone = []
    if root.is_dir():
        kept = {p for _, p in list_checkpoints(root)}
        for p in root.iterdir():
            # a save cut short; an earlier checkpoint kept aside whose step has its new one (one without is the step's)
            if p.name.startswith(".tmp-step-") or (p.name.startswith(ASIDE) and p not in kept):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p)
    return gone


def is_writer(accelerator) -> bool:
    """The process that writes, renames and prunes checkpoint folders: the main one, or with per-node checkpoints
    (``save_on_each_node``) the first process of each node."""
    if getattr(getattr(accelerator, "project_configuration", None), "save_on_each_node", False):
        return accelerator.is_local_main_process
    return accelerator.is_main_process


def _merge_fsdp_model(tmp: Path) -> None:
    """Collective with several processes (accelerate's ``merge_fsdp_weights`` merges on the main process, then
    waits for all): called on the main process alone, the others ran one barrier less and the run stopped at its
    end (seen with two CPU processes forced into FSDP's path)."""
    from accelerate.utils import merge_fsdp_weights

    shards = sorted(p for p in tmp.iterdir() if p.is_dir() and p.name.startswith("pytorch_model_fsdp_"))
    if shards:
        merge_fsdp_weights(str(shards[0]), str(tmp), safe_serialization=True)


def save_checkpoint(accelerator, out_dir: Path, step: int, meta: dict, keep_last: int) -> Path:
    """Collective: every process calls it. Returns the final checkpoint folder."""
    from .distributed import is_fsdp

    root = checkpoint_dir(out_dir)
    tmp = root / f".tmp-step-{step:08d}"
    final = root / f"step-{step:08d}"
    writer = is_writer(accelerator)
    if writer:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        with writing(final, KEPT_CHECKPOINTS):  # torch/safetensors' full disk names the checkpoint, not a bare error
            accelerator.save_state(str(tmp), safe_serialization=True)
            accelerator.wait_for_everyone()
            if is_fsdp(accelerator):  # every process: merge_fsdp_weights ends with a barrier (the main process writes)
                _merge_fsdp_model(tmp)
            if writer:
                (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=1))
                _fsync_dir(tmp)
    except BaseException:  # a full disk, Ctrl-C: no half-written checkpoint stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if writer:
        aside = root / f"{ASIDE}{final.name}"
        if final.exists():  # the step saved again (a resumed run): its earlier checkpoint stays until the new one is in
            shutil.rmtree(aside, ignore_errors=True)  # place, so a kill between the two renames loses neither
            os.replace(final, aside)
        os.replace(tmp, final)
        _fsync_dir(root)
        shutil.rmtree(aside, ignore_errors=True)
        for _, old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def intern_state_keys(optimizer) -> None:
    """Make the loaded per-parameter state's key strings (``step``, ``exp_avg``, ...) the interned ones the optimizer
    uses for a parameter it steps for the first time. ``torch.save`` pickles each distinct string object once and then
    refers back to it: with unpickled keys for the loaded parameters and interned ones for parameters first trained
    after the resume point (a later phase), a resumed run's ``optimizer.bin`` held the same tensors as the uninterrupted
    run's but other bytes. Call after loading a checkpoint; the order of the keys is kept."""
    for state in optimizer.state.values():
        if isinstance(state, dict):
            for key in list(state):
                if isinstance(key, str):
                    state[sys.intern(key)] = state.pop(key)


def agree_on_resume(accelerator, ckpt: Path | None) -> None:
    """Every process must resume from the same step (per-node checkpoints: a node that lost or never got the newest
    one would silently diverge). Collective."""
    from accelerate.utils import gather_object

    if accelerator.num_processes < 2:
        return
    step = read_meta(ckpt)["step"] if ckpt is not None else None
    steps = gather_object([(accelerator.process_index, step)])
    if len({s for _, s in steps}) > 1:
        found = ", ".join(f"rank {r}: {'none' if s is None else f'step {s}'}" for r, s in steps)
        raise FileNotFoundError(f"the processes found different newest checkpoints to resume from ({found}); with per-node "
                                "checkpoints (distributed.shared_fs: local) copy the newest checkpoint folder to every node's "
                                "output_dir/checkpoints, or resume every node from the same one (--resume FOLDER)")


def refuse_missing(path) -> None:
    """A checkpoint or run folder given (``--resume``, ``export``, ``v3-export``) that does not exist: said as such,
    with the checkpoints beside it (a step number misread), not as "no checkpoints under it"."""
    p = Path(path)
    if p.exists():
        return
    near = [c for folder in (p.parent, checkpoint_dir(p.parent)) for _, c in list_checkpoints(folder)]
    there = f"; the checkpoints in {near[0].parent}: {', '.join(c.name for c in near)}" if near else ""
    raise FileNotFoundError(f"{path}: no such checkpoint folder (give a checkpoint folder, or the run's output_dir for "
                            f"its newest checkpoint){there}")


def resolve_resume(resume, out_dir: Path) -> Path | None:
    """``resume`` = True/"latest" (newest checkpoint of the run, or None when there is none yet), or a path."""
    if not resume:
        return None
    if resume is True or resume == "latest":
        return latest_checkpoint(checkpoint_dir(out_dir))
    p = Path(resume)
    if (p / "meta.json").is_file():
        return p
    refuse_missing(p)
    latest = latest_checkpoint(checkpoint_dir(p))
    if latest is None:
        raise FileNotFoundError(f"{resume}: not a checkpoint folder, and no checkpoints under it")
    return latest
