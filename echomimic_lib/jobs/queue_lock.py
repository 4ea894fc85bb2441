"""The locks behind ``echomimic queue``'s state file (:mod:`.queue_state`; standard library only).

:class:`StateLock` is an operating-system lock (``fcntl.flock``; Windows: ``msvcrt.locking``) on a small file beside the
state file, held only while a run reads and writes the state: two runs sharing a folder never write over
each other's entries. The operating system drops it when the process ends, however it ends (SIGKILL, a crash), so no
lock is ever left behind to block the next run; the lock file itself stays (removing it would let a second process lock
a file a third has just replaced). The lock file is opened without following a symlink (``O_NOFOLLOW``) and must be a
regular file once open, so a link planted between the check and the open is refused, never followed.

:func:`alive` says whether a run recorded in the state (pid, host and, on Linux, the process's start time:
:func:`process_start`) still runs: a run killed without cleaning up is recognised as gone, not taken for a live one that
holds its jobs, even when an unrelated process has since been given its pid.

A run that finds the lock held says who holds it (the holder writes its pid, host and since when into the lock file)
and, on Linux, whether that process is stopped (Ctrl-Z: state ``T`` in ``/proc/<pid>/stat``) and how to let it go on,
then waits as before (Windows: that a run holds it, never "stopped", since the holder's mark cannot be read there).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

NO_LOCKS = {getattr(errno, n) for n in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS") if hasattr(errno, n)}
WINDOWS = os.name == "nt"  # the lock's msvcrt branch (tests/test_queue_state_3.py runs it with a fake msvcrt)


def host() -> str:
    return socket.gethostname()


def _read_proc(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as ``"<boot id>:<clock ticks since boot>"`` (Linux: field 22 of
    ``/proc/<pid>/stat``, read after the last ``)`` since the process name may hold spaces and parentheses); None where
    it cannot be read (another OS, no /proc, the process is gone): then a run is known by its pid only."""
    text = _read_proc(f"/proc/{int(pid)}/stat")
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()  # fields 3, 4, ...
    if len(fields) < 20 or not fields[19].isdigit():
        return None
    boot = (_read_proc("/proc/sys/kernel/random/boot_id") or "").strip()
    return f"{boot}:{fields[19]}"


def process_state(pid: int) -> str | None:
    """Linux: the state letter of process ``pid`` (field 3 of ``/proc/<pid>/stat``: ``R``, ``S``, ``T`` stopped, ...);
    None where it cannot be read."""
    text = _read_proc(f"/proc/{int(pid)}/stat")
    fields = text.rsplit(")", 1)[1].split() if text and ")" in text else []
    return fields[0] if fields else None


def alive(pid, on_host, started=None) -> bool:
    """Whether process ``pid`` of host ``on_host`` still runs (one on another host cannot be asked: taken as running).
    ``started``: the :func:`process_start` recorded with the pid; a process of that pid that started at another time is
    an unrelated one that was given the pid since (the run is gone). None (an older state file, another OS): pid only."""
    if on_host != host():
        return True
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    if pid == os.getpid():
        return started is None or process_start(pid) in (None, started)
    if not _pid_runs(pid):
        return False
    if started is None:
        return True
    now = process_start(pid)
    return now is None or now == started


def _pid_runs(pid: int) -> bool:
    if WINDOWS:  # (tests/test_queue_state_5.py runs it with a fake kernel32)
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
    except (ProcessLookupError, OverflowError):  # (OverflowError: past any pid, a damaged lock or state file's)
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
        try:  # (no following a symlink planted since the check; Windows has no O_NOFOLLOW, nor unprivileged symlinks)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(self.path):
                raise OSError(exc.errno, "a symlink was put where the queue state's lock is kept (never followed); "
                                         "remove it, or give --state a file in a folder of your own", str(self.path)) from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EEXIST, "not a regular file (the queue state's lock is kept there)", str(self.path))
            if not _ours(fd):  # a user's own file of that name: never truncated or overwritten
                raise OSError(errno.EEXIST, "not a lock file of `echomimic queue` (it holds something else, or is a hard "
                                            "link of another file: a file of yours?); it was left as it is: rename or move it, or give --state another "
                                            "file", str(self.path))
            if self.works:
                _lock(fd, self.path)
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


QUIET_S = 1.0  # a lock held longer than this by another run is said (who holds it); shorter waits are silent
MARK_BYTES = 256  # the holder's mark is padded with spaces to this length (JSON reads them as nothing)


def _lock(fd: int, path=None) -> None:
    if WINDOWS:  # LK_LOCK tries for 10 s, then raises; tried again until it is ours (said once: who holds it)
        import msvcrt

        said = False
        while True:
            os.lseek(fd, 0, os.SEEK_SET)
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                return
            except OSError as exc:
                if exc.errno not in (errno.EDEADLK, errno.EACCES, getattr(errno, "EDEADLOCK", -1)):
                    raise
            if not said:
                said = True
                sys.stderr.write(held_by(fd, path) + "\n")
    import fcntl

    quiet = time.monotonic() + QUIET_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:  # another run holds it (a few ms, to append a line): said when it holds it for long
            if time.monotonic() < quiet:
                time.sleep(0.005)
                continue
            sys.stderr.write(held_by(fd, path) + "\n")  # who, then wait as before
            fcntl.flock(fd, fcntl.LOCK_EX)
            break
    try:  # who holds it now, for a run that finds it held
        mark = json.dumps({"pid": os.getpid(), "host": host(), "pid_start": process_start(os.getpid()), "since": time.time()})
        data = mark.encode().ljust(MARK_BYTES)  # (written over the last one, never truncated to 0 first: ext4 flushes a
        os.pwrite(fd, data, 0)                  # file truncated to 0 to disk when closed, 2-3 ms a record)
        if os.fstat(fd).st_size > len(data):
            os.ftruncate(fd, len(data))
    except OSError:
        pass


def _ours(fd: int) -> bool:
    """Whether the lock file open as ``fd`` is empty or holds a holder's mark (:func:`_lock`); unreadable (Windows: the
    byte another run locked) counts as ours."""
    try:
        if os.fstat(fd).st_size > 4096:
            return False
        data = _mark(fd)
    except OSError:
        return True
    if not data.strip():  # (not a hard link of a user's empty file: it would be written through)
        return os.fstat(fd).st_nlink <= 1
    try:
        who = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return isinstance(who, dict) and {"pid", "since"} <= set(who) <= {"pid", "host", "pid_start", "since"}


def _mark(fd: int) -> bytes:
    """The holder's mark at the start of the lock file (Windows has no ``os.pread``: seek and read)."""
    if hasattr(os, "pread"):
        return os.pread(fd, 4096, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096)


def held_by(fd: int, path) -> str:
    """The line said when the lock on ``path`` (open as ``fd``) is held by another run: its pid, since when and, on
    Linux, whether it is stopped (Ctrl-Z), with what to do. On Windows (where the holder writes no mark, and a
    process is not stopped that way) it says that a run holds the lock, and the Windows way a console run pauses."""
    head = f"waiting for the lock on {path} (the queue state's): another `echomimic queue` run holds it"
    try:
        who = json.loads(_mark(fd).decode("utf-8", "replace") or "null")
    except (OSError, ValueError, RecursionError):  # (Windows: the locked byte cannot be read by another process)
        who = None
    pid = who.get("pid") if isinstance(who, dict) else None
    if not isinstance(pid, int) or isinstance(pid, bool) or not alive(pid, who.get("host"), who.get("pid_start")):
        if WINDOWS:
            return (f"{head}; waiting for it (if nothing happens, an `echomimic queue` whose console window has text "
                    "selected, which pauses it, may hold it: press Esc or Enter in that window).")
        return (f"{head}; waiting for it (if nothing happens, an `echomimic queue` stopped with Ctrl-Z may hold it: "
                "`jobs` in its terminal, then `fg`).")
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(who.get("since"))))
    except (TypeError, ValueError, OverflowError, OSError):
        since = "?"
    there = who.get("host") == host()
    head = f"{head} (pid {pid}{'' if there else ' on host ' + str(who.get('host'))}, since {since})"
    if there and not WINDOWS and process_state(pid) in ("T", "t"):
        return (f"{head}, and that process is stopped (suspended, e.g. with Ctrl-Z): it keeps the lock, and this run "
                f"waits, until it goes on. Resume it (`fg` in its terminal, or `kill -CONT {pid}`) or end it "
                f"(`kill -TERM {pid}` then `kill -CONT {pid}`); waiting...")
    return f"{head}; waiting for it (it holds the lock only while it writes to the state file)."


def _unlock(fd: int) -> None:
    if WINDOWS:
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)
