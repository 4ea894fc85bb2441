"""One ``echomimic batch`` per output folder: ``OUTDIR/.echomimic-batch.lock``.

Two batches on one folder (a second terminal, a cron job firing twice) would render the same rows and write over each
other's ``results.jsonl``. The batch holds the folder's :class:`..run_lock.RunLock` while it runs: an OS lock the
operating system drops when the process ends, however it ends, so a batch killed by SIGKILL, a crash or a power cut
leaves no lock that blocks the next run (the file stays; the next batch takes it over and writes its own details). The
file holds the holder's pid, host, start time and command line, which the refusal names. The lock is released and the
file removed when the batch ends.
"""
from __future__ import annotations

import os
from pathlib import Path

from ...errors import EchoMimicError
from ..run_lock import RunLock, _live_other, holder as _holder

LOCK_NAME = ".echomimic-batch.lock"


class BatchLock(RunLock):
    """``with BatchLock(outdir):`` (or :meth:`acquire` / :meth:`release`); raises :class:`EchoMimicError` naming the
    other batch when one holds the folder."""

    what = "batch"
    unlocked = "the batch runs without the lock that keeps a second batch out of this folder: start only one."

    def __init__(self, outdir):
        super().__init__(Path(outdir) / LOCK_NAME)

    def refusal(self, held_by: str) -> str:
        return (f"another `echomimic batch` is writing into {self.path.parent} {held_by}. Two batches on one folder would "
                "render the same rows and overwrite each other's results.jsonl: wait for it to finish (or stop it), or "
                "choose another -o folder. The lock is the operating system's: it goes when that process ends, however "
                "it ends.")

    def check(self) -> None:
        """What :meth:`acquire` would refuse (a lock file that is not a regular file, or not one of this package's, or
        another batch's that still runs), said the same way; the file is only read, never made, locked or written (a
        dry run)."""
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            raise EchoMimicError(f"{self.path} is not a regular file; remove it (the {self.what} keeps its lock there).")
        if not self.path.is_file():
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return  # (gone meanwhile: the run takes it)
        self._refuse_foreign(fd)  # (closes it when it refuses)
        try:
            held = _held(fd) if os.name != "nt" else None
        finally:
            os.close(fd)
        if held or (held is None and _live_other(self.path)):
            raise EchoMimicError(self.refusal(_holder(self.path)))


def _held(fd: int) -> bool | None:
    """Whether another open of the file holds the run's lock (a shared lock tried, and let go at once); None: this file
    system has no locks."""
    import errno
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if isinstance(exc, BlockingIOError) or exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        return None
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False
