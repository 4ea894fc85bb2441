"""One ``echomimic batch`` per output folder: ``OUTDIR/.echomimic-batch.lock``.

Two batches on one folder (a second terminal, a cron job firing twice) would render the same rows and write over each
other's ``results.jsonl``. The batch holds the folder's :class:`..run_lock.RunLock` while it runs: an OS lock the
operating system drops when the process ends, however it ends, so a batch killed by SIGKILL, a crash or a power cut
leaves no lock that blocks the next run (the file stays; the next batch takes it over and writes its own details). The
file holds the holder's pid, host, start time and command line, which the refusal names. The lock is released and the
file removed when the batch ends.
"""
from __future__ import annotations

from pathlib import Path

from ..run_lock import RunLock, holder as _holder  # noqa: F401 (_holder: tests)

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
