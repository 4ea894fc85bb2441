"""One ``echomimic batch`` per output folder: ``OUTDIR/.echomimic-batch.lock``.

Two batches on one folder (a second terminal, a cron job firing twice) would render the same rows and write over each
other's ``results.jsonl``. The batch holds an OS lock on the lock file while it runs (``fcntl.flock``; Windows:
``msvcrt.locking``): the operating system drops it when the process ends, however it ends, so a batch killed by
SIGKILL, a crash or a power cut leaves no lock that blocks the next run (the file stays; the next batch takes it over
and writes its own details). The file holds the holder's pid, host, start time and command line, which the refusal
names. The lock is released and the file removed when the batch ends.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from ...errors import EchoMimicError
from ...io.json_file import loads_json

LOCK_NAME = ".echomimic-batch.lock"
log = logging.getLogger(__name__)


def _try_lock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this file system has no locks (some network mounts)."""
    try:
        if os.name == "nt":
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if isinstance(exc, (BlockingIOError, PermissionError)) or exc.errno in (errno.EAGAIN, errno.EACCES,
                                                                                 getattr(errno, "EDEADLOCK", -1)):
            return False
        log.warning("%s: this file system cannot lock files (%s); the batch runs without the lock that keeps a second "
                    "batch out of this folder: start only one.", getattr(exc, "filename", None) or "the output folder",
                    exc.strerror or exc)
        return None


def _holder(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(1 if os.name == "nt" else 0)  # Windows: byte 0 is the locked one
            info = loads_json(fh.read(), str(path), expect=dict, empty={})
    except (OSError, ValueError):  # (being written, or damaged: nested too deeply, not an object)
        info = {}
    if not info:
        return "(its details are not written yet)"
    return (f"(pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}: "
            f"{info.get('command', '?')})")


class BatchLock:
    """``with BatchLock(outdir):`` (or :meth:`acquire` / :meth:`release`); raises :class:`EchoMimicError` naming the
    other batch when one holds the folder."""

    def __init__(self, outdir):
        self.path = Path(outdir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> BatchLock:
        for _ in range(20):  # the file can be removed by its releasing holder between our open and our lock: open again
            if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
                raise EchoMimicError(f"{self.path} is not a regular file; remove it (the batch keeps its lock there).")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            locked = _try_lock(fd)
            if locked is None:  # no locks here: said, and the file still names this batch
                self.fd = fd
                break
            if not locked:
                os.close(fd)
                raise EchoMimicError(
                    f"another `echomimic batch` is writing into {self.path.parent} {_holder(self.path)}. Two batches on "
                    "one folder would render the same rows and overwrite each other's results.jsonl: wait for it to "
                    "finish (or stop it), or choose another -o folder. The lock is the operating system's: it goes when "
                    "that process ends, however it ends.")
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                self.fd = fd
                break
            os.close(fd)
        else:
            raise EchoMimicError(f"{self.path}: could not take the batch lock (the file keeps changing); try again.")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv) or "?"}
        data = json.dumps(info).encode()
        os.ftruncate(fd, 0)  # a crashed holder's details: replaced
        os.lseek(fd, 0 if os.name != "nt" else 1, os.SEEK_SET)  # Windows: byte 0 is the locked one
        os.write(fd, data)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        if os.name == "nt":  # an open file cannot be removed there: close (which unlocks) first
            os.close(fd)
            try:
                self.path.unlink()
            except OSError:
                pass
            return
        try:
            self.path.unlink()  # while still locked: a batch waiting on this file sees it is gone and opens the new one
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> BatchLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
