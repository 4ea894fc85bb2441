"""The output folder's own checks, said before any row is checked, the same for a run and a ``--dry-run``.

A run makes ``OUTDIR`` (and the folders above it), takes its lock (:mod:`.lock`), appends to ``OUTDIR/results.jsonl``
and moves earlier videos into ``OUTDIR/stale/``: each of these refuses a name that is taken by something else (a
file where a folder goes, a named pipe, a folder where a file goes, a link to nothing or a loop of links). The
refusals are here (results.jsonl's in :mod:`.results`), so a dry run says them word for word (and with the same
exit code) while it makes, opens for writing and moves nothing.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from ...errors import EchoMimicError
from .results import check_results_file, kind_of as _what  # noqa: F401 (check_results_file: the runner)

STALE_DIR = "stale"  # OUTDIR/stale/: earlier videos of rows rendered again (no row's output: names hold no '/')


def check_outdir(outdir) -> None:
    """``OUTDIR`` is a folder, or can be made: nothing that is not a folder at its name or above it."""
    outdir = Path(outdir)
    for folder in (outdir, *outdir.parents):
        if not os.path.lexists(folder):
            continue
        if not folder.is_dir():
            which = f"-o {outdir}: " + (f"{folder}, on its path," if folder != outdir else "it")
            raise EchoMimicError(f"{which} is {_what(folder)}, not a folder; the batch writes <name>.mp4 for every row "
                                 "and results.jsonl into a folder: give a new or existing folder.")
        return


def check_stale_folder(outdir) -> Path:
    """``OUTDIR/stale/`` is a folder (not a link) or not there yet; returns it."""
    folder = Path(outdir) / STALE_DIR
    if os.path.lexists(folder) and (folder.is_symlink() or not folder.is_dir()):
        raise _refuse_stale(folder)
    return folder


_FD_CALLS = (os.open, os.mkdir, os.rename, os.stat)
_BY_HANDLE = (bool(getattr(os, "O_NOFOLLOW", 0) and getattr(os, "O_DIRECTORY", 0))
              and all(call in os.supports_dir_fd for call in _FD_CALLS))


def _refuse_stale(folder) -> EchoMimicError:
    return EchoMimicError(f"{folder} is not a folder; the earlier videos of rows rendered again are kept there. "
                          "Move it away and run the batch again.")


def move_to_stale(outdir, src, stem: str, suffix: str) -> Path:
    """Move ``src`` to ``OUTDIR/stale/<stem><suffix>`` (``<stem>.N<suffix>`` when taken; ``stale/`` made when not
    there); returns the new path. The move goes through a handle on ``stale/`` opened without following links, so a
    ``stale`` swapped for a link after :func:`check_stale_folder` is refused, never followed (where the system has no
    such handles: the check by path, then the move by path)."""
    folder = Path(outdir) / STALE_DIR
    if not _BY_HANDLE:
        check_stale_folder(outdir)
        folder.mkdir(exist_ok=True)
        return _rename_into(src, stem, suffix, folder, lambda name: os.path.lexists(folder / name),
                            lambda name: os.rename(src, folder / name))
    top = os.open(outdir, os.O_RDONLY | os.O_DIRECTORY)  # OUTDIR as given (held under the batch's lock)
    try:
        try:
            os.mkdir(STALE_DIR, dir_fd=top)
        except FileExistsError:
            pass
        try:
            fd = os.open(STALE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
        except OSError as exc:  # ELOOP (EMLINK on BSD): a link there, not followed; ENOTDIR: a file there
            if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR, errno.ENOENT):
                raise _refuse_stale(folder) from exc
            raise
    finally:
        os.close(top)
    try:
        def taken(name):
            try:
                os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            return True
        return _rename_into(src, stem, suffix, folder, taken, lambda name: os.rename(src, name, dst_dir_fd=fd))
    finally:
        os.close(fd)


def _rename_into(src, stem, suffix, folder: Path, taken, rename) -> Path:
    name, n = f"{stem}{suffix}", 1
    while taken(name):
        n += 1
        name = f"{stem}.{n}{suffix}"
    rename(name)  # the same folder tree: a rename, never a copy half-written
    return folder / name


def stale_videos(outdir) -> tuple[int, int]:
    """(count, bytes) of the earlier videos kept in ``OUTDIR/stale/`` (regular files, links not followed; nothing there
    or not a folder: (0, 0)). Every edited row's rerun adds one and the batch never deletes them, so a run says this."""
    folder = Path(outdir) / STALE_DIR
    if not os.path.isdir(folder) or os.path.islink(folder):
        return 0, 0
    count = size = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    count += 1
                    size += entry.stat(follow_symlinks=False).st_size
    except OSError:
        return 0, 0
    return count, size


def size_text(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def stale_note(outdir) -> str | None:
    """What ``OUTDIR/stale/`` holds and how to clear it, or None when it holds nothing."""
    count, size = stale_videos(outdir)
    if not count:
        return None
    folder = Path(outdir) / STALE_DIR
    return (f"{folder} holds {count} earlier video(s) ({size_text(size)}) of rows since rendered again or changed (the "
            f"batch never deletes them); when none is needed any more, clear it: rm -r {folder}")
