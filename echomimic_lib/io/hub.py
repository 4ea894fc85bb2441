"""Fetch files from the Hugging Face Hub into a models folder (every model set's download goes through here).

- A file that is already there is kept; it is replaced only with ``force``.
- Nothing half-written ever carries a final name: ``huggingface_hub`` downloads into ``<staging>/<repo>/.cache/
  ....incomplete`` and renames the finished file to ``<staging>/<repo>/<path>``; only then is it moved to its own
  name (:func:`~.file_safety.publish`: one rename on the same file system, the umask's permissions). The
  staging folder is the call's own (batch workers may fetch at the same time) and goes away afterwards, also
  after a failure (with it any partial download).
- A failed download raises :class:`MissingWeightsError` naming the repository, the file and the ways out; the disk
  refusing it (full, read-only, permissions) in one line: the file, what the system said and the fix
  (:func:`~.os_errors.refused`).
"""
from __future__ import annotations

import errno
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingWeightsError
from .file_safety import publish, temp_beside
from .os_errors import refused

log = logging.getLogger(__name__)

STAGING = ".echomimic-download-"  # + a unique suffix per call, inside the models folder: the final files' file system
FIX_HINT = ("If this machine cannot reach huggingface.co: set HF_ENDPOINT to a Hugging Face mirror and run again, or "
            "download the files elsewhere and copy them into the layout above (--offline lists what is missing).")


@dataclass(frozen=True)
class HubFile:
    repo: str  # Hugging Face repository id
    remote: str  # path inside the repository
    dest: Path  # final local path
    about: str = ""  # what it is (and its size), for the log


def _size(path: Path) -> str:
    n = path.stat().st_size
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # pragma: no cover


def _move(src: Path, dest: Path) -> None:
    """``src`` to ``dest`` by one rename; across file systems (a linked folder) by a copy to a unique temporary name beside
    ``dest`` first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        publish(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        tmp = temp_beside(dest)  # unique: two fetches of one file never share it
        try:
            shutil.copyfile(src, tmp)
            publish(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        src.unlink(missing_ok=True)


def fetch(files: list[HubFile], root: Path, context: str, force: bool = False) -> list[Path]:
    """Download each of ``files`` whose destination is missing (every one with ``force``), staged in a folder of its
    own under ``root``. ``context`` starts the error message of a failure (the list of what is missing and where it
    was looked for)."""
    todo = [f for f in files if force or not f.dest.exists()]
    for f in files:
        if f not in todo:
            log.info("keeping %s (already there; --force replaces it)", f.dest)
    if not todo:
        return []
    from .fetch_plan import is_planning, planned

    if is_planning():  # a dry run: each file said, none fetched
        for f in todo:
            planned(f.remote, f"https://huggingface.co/{f.repo}", f.dest)
        return []
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise MissingWeightsError(f"{context}\n(huggingface_hub is not installed: pip install huggingface_hub)",
                                  [str(f.dest) for f in todo]) from exc
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging, done = Path(tempfile.mkdtemp(prefix=STAGING, dir=root)), []
    except OSError as exc:  # the models folder is a file, read-only, on a full disk...
        wanted = [str(f.dest) for f in todo]
        err = None if root.is_file() else refused(exc, root, "write into", lambda m: MissingWeightsError(m, wanted),
                                                  before="Nothing was downloaded: ", then=" (the models folder)")
        if err:
            raise err from exc
        why = "it is a file, not a folder" if root.is_file() else exc.strerror or str(exc)
        raise MissingWeightsError(f"{context}\nNothing was downloaded: cannot write into {root} ({why}). Give a "
                                  "writable folder as the models folder.", [str(f.dest) for f in todo]) from exc
    try:
        for i, f in enumerate(todo, 1):
            log.info("downloading %d/%d: %s/%s%s -> %s", i, len(todo), f.repo, f.remote, f" ({f.about})" if f.about else "", f.dest)
            try:
                here = staging / f.repo.replace("/", "--")  # one folder per repository: no two files share a name
                here.mkdir(parents=True, exist_ok=True)
                got = Path(hf_hub_download(repo_id=f.repo, filename=f.remote, local_dir=str(here)))
                _move(got, f.dest)
            except Exception as exc:
                left = [str(g.dest) for g in todo[i - 1:]]
                err = refused(exc, f.dest, "download", lambda m: MissingWeightsError(m, left),
                              then=", then run the download again (files already fetched are kept)")
                if err:  # this disk, not the network: the file, what the system said and the fix
                    raise err from exc
                raise MissingWeightsError(
                    f"{context}\nDownloading https://huggingface.co/{f.repo} file {f.remote} failed: {type(exc).__name__}: "
                    f"{exc}\nNothing was written under {f.dest.name}; files already fetched are kept. {FIX_HINT}", left) from exc
            log.info("  %s: %s", f.dest.name, _size(f.dest))
            done.append(f.dest)
    finally:  # only huggingface_hub's bookkeeping and a broken-off partial file can be left in it
        shutil.rmtree(staging, ignore_errors=True)
    return done
