"""The lock that refuses a second run at once (no waiting): one ``echomimic batch`` per output folder
(:class:`.batch.lock.BatchLock`) and one render per output file (:class:`.output_file.OutputClaim`).

The run holds an OS lock on a small lock file while it runs (``fcntl.flock``; Windows: ``msvcrt.locking``): the operating
system drops it when the process ends, however it ends, so a run killed by SIGKILL, a crash or a power cut leaves no lock
that blocks the next run (the file stays; the next run takes it over silently and writes its own details). The file
holds the holder's pid, host, start time and command line, which the refusal names. The lock is released and the file
removed when the run ends. On a file system without locks (some network mounts) that is said once, and the run named in
the file is asked whether it still runs (:func:`.queue_lock.alive`): a live one refuses, a gone one is taken over.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
from pathlib import Path

from ..errors import EchoMimicError
from ..io.json_file import loads_json
from .queue_lock import alive, host, process_start

log = logging.getLogger(__name__)


def _try_lock(fd: int, path, unlocked: str) -> bool | None:
    """True: locked; False: another process holds it; None: this file system has no locks (some network mounts; said,
    with ``unlocked``: what the run goes on without)."""
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
        log.warning("%s: this file system cannot lock files (%s); %s", getattr(exc, "filename", None) or path,
                    exc.strerror or exc, unlocked)
        return None


def _info(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            fh.seek(1 if os.name == "nt" else 0)  # Windows: byte 0 is the locked one
            return loads_json(fh.read(), str(path), expect=dict, empty={})
    except (OSError, ValueError):  # (being written, or damaged: nested too deeply, not an object)
        return {}


MARK = "echomimic-run-lock"  # the "claim" of every lock file this package writes: a file without it is never taken over
_LEGACY = {"pid", "host", "pid_start", "started", "command"}  # what a lock file of an older version holds


def _ours(fd: int) -> bool:
    """Whether the lock file open as ``fd`` is one this package wrote (its mark, or an older version's details) or
    empty (a run killed between making it and writing it; not when it has another name, a hard link of a user's empty
    file, which would be written through): a user's own file of that name is never truncated, overwritten or removed."""
    start = 1 if os.name == "nt" else 0  # (Windows: byte 0 is the locked one)
    st = os.fstat(fd)
    size = st.st_size
    if size <= start:
        return st.st_nlink <= 1
    if size > 64 * 1024:
        return False
    os.lseek(fd, start, os.SEEK_SET)
    try:
        info = loads_json(os.read(fd, size), "lock file", expect=dict)
    except (ValueError, RecursionError, EchoMimicError):
        return False
    return info.get("claim") == MARK or ({"pid", "started", "command"} <= set(info) <= _LEGACY)


def holder(path: Path) -> str:
    """The holder named in the lock file ``path``, as the refusal says it."""
    info = _info(path)
    if not info:
        return "(its details are not written yet)"
    return (f"(pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}: "
            f"{info.get('command', '?')})")


def _live_other(path: Path) -> bool:
    """Without OS locks: whether the lock file names another process that still runs."""
    info = _info(path)
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or (pid == os.getpid() and info.get("host") == host()):
        return False
    return alive(pid, info.get("host"), info.get("pid_start"))


class RunLock:
    """``with Sub(...):`` (or :meth:`acquire` / :meth:`release`) of a subclass that says :meth:`refusal` (the
    :class:`EchoMimicError` raised when another process holds ``path``), ``what`` (whose lock, for a lock file that
    is not a regular file) and ``unlocked`` (said where the file system has no locks)."""

    what = "run"
    unlocked = "start only one run at a time."

    def __init__(self, path):
        self.path = Path(path)
        self.fd: int | None = None

    def refusal(self, held_by: str) -> str:
        return f"another run holds {self.path} {held_by}."

    def acquire(self) -> RunLock:
        for _ in range(20):  # the file can be removed by its releasing holder between our open and our lock: open again
            if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
                raise EchoMimicError(f"{self.path} is not a regular file; remove it (the {self.what} keeps its lock there).")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                         0o644)
            locked = _try_lock(fd, self.path, self.unlocked)
            if locked is None:  # no locks here: said; a live run named in the file still refuses this one
                if _live_other(self.path):
                    os.close(fd)
                    raise EchoMimicError(self.refusal(holder(self.path)))
                self._refuse_foreign(fd)
                self.fd = fd
                break
            if not locked:
                os.close(fd)
                raise EchoMimicError(self.refusal(holder(self.path)))
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                self._refuse_foreign(fd)
                self.fd = fd
                break
            os.close(fd)
        else:
            raise EchoMimicError(f"{self.path}: could not take the {self.what}'s lock (the file keeps changing); try again.")
        info = {"claim": MARK, "pid": os.getpid(), "host": host(), "pid_start": process_start(os.getpid()),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv) or "?"}
        data = json.dumps(info).encode()
        os.ftruncate(fd, 0)  # a crashed holder's details: replaced
        os.lseek(fd, 0 if os.name != "nt" else 1, os.SEEK_SET)  # Windows: byte 0 is the locked one
        os.write(fd, data)
        return self

    def _refuse_foreign(self, fd: int) -> None:
        """Closes ``fd`` and refuses when the file is not one of this package's lock files (:func:`_ours`)."""
        try:
            ours = _ours(fd)
        except OSError:
            ours = False
        if not ours:
            os.close(fd)
            raise EchoMimicError(f"{self.path}: not a claim file of this package (it holds something else, or is a hard "
                                 f"link of another file: a file of yours?), so the {self.what} cannot keep its lock there; the file was left as it is. "
                                 "Rename or move it, then run again.")

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
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):  # (a file put there since, e.g. moved over it: kept)
                self.path.unlink()  # while still locked: a run that opened this file sees it is gone and opens the new one
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
