"""The locks behind ``echomimic queue``'s state file (:mod:`.queue_state`; standard library only).

:class:`StateLock` is an operating-system lock (``fcntl.flock``; Windows: ``msvcrt.locking``) on a small file beside the
state file, held only while a run re-reads, merges and rewrites the state: two runs sharing a folder never write over
each other's entries. The operating system drops it when the process ends, however it ends (SIGKILL, a crash), so no
lock is ever left behind to block the next run; the lock file itself stays (removing it would let a second process lock
a file a third has just replaced).

:func:`alive` says whether a run recorded in the state (pid and host) still runs: a run killed without cleaning up is
recognised as gone, not taken for a live one that holds its jobs.
"""
from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

NO_LOCKS = {getattr(errno, n) for n in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS") if hasattr(errno, n)}


def host() -> str:
    return socket.gethostname()


def alive(pid, on_host) -> bool:
    """Whether process ``pid`` of host ``on_host`` still runs (one on another host cannot be asked: taken as running)."""
    if on_host != host():
        return True
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":  # pragma: no cover - Windows
        import ctypes

        kernel = ctypes.windll.kernel32
        handle = kernel.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.GetLastError() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        try:
            return bool(kernel.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
        finally:
            kernel.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


class StateLock:
    """``with StateLock(path):`` waits for and holds the OS lock on ``path`` (created if missing). A file system without
    locks (some network mounts) is said once on stderr and the run goes on unlocked; a path that is not a regular file
    (a folder, a link) is an OSError, never replaced."""

    def __init__(self, path):
        self.path, self.fd, self.works = Path(path), None, True

    def __enter__(self) -> StateLock:
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            raise OSError(errno.EEXIST, "not a regular file (the queue state's lock is kept there)", str(self.path))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if self.works:
                _lock(fd)
        except OSError as exc:
            if exc.errno not in NO_LOCKS:
                os.close(fd)
                raise
            self.works = False
            sys.stderr.write(f"warning: {self.path}: this file system cannot lock files ({exc.strerror or exc}); two "
                             "`echomimic queue` runs sharing this state file at once may lose each other's entries.\n")
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if self.works:
                _unlock(fd)
        finally:
            os.close(fd)  # (closing drops the lock anyway)


def _lock(fd: int) -> None:
    if os.name == "nt":  # pragma: no cover - Windows: LK_LOCK tries for 10 s, then raises; tried again until it is ours
        import msvcrt

        while True:
            os.lseek(fd, 0, os.SEEK_SET)
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                return
            except OSError as exc:
                if exc.errno not in (errno.EDEADLK, errno.EACCES, getattr(errno, "EDEADLOCK", -1)):
                    raise
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)  # waits (no polling: the holder only re-reads and rewrites one small file)


def _unlock(fd: int) -> None:
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)
