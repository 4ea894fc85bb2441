"""What the operating system said, in one line a user can act on: :func:`os_error_text` names the path, says what the
system refused (no space left, permission denied, a read-only disk, a name too long, too many open files) and the fix.
The command lines (``echomimic``, ``echomimic-train``) end with it instead of a traceback; readers of inputs use it so
that a file that exists but cannot be opened is not called missing or damaged.

One form for every file: a reader raises :func:`refused` (``cannot read PATH: <what the system said>; <fix>.``), a
writer wraps its write in :func:`writing` (``cannot write PATH: ...; <fix>. Nothing partial was kept ...``), which
also knows the failed writes torch and safetensors report without the path or an errno."""
from __future__ import annotations

import errno
import re
from contextlib import contextmanager

from ..errors import EchoMimicError

_E = errno
# errno -> (what the system said, the fix)
_SAID = {
    _E.ENOSPC: ("no space left on the disk", "free some space, or choose a folder on another disk"),
    _E.EACCES: ("permission denied", "check the permissions of the file and of its folder, or choose another path"),
    _E.EPERM: ("operation not permitted", "check the permissions of the file and of its folder, or choose another path"),
    _E.EROFS: ("the file system is read-only", "choose a folder on a writable disk"),
    _E.ENAMETOOLONG: ("the file name is too long", "use a shorter file name or a shorter folder path"),
    _E.EMFILE: ("too many open files", "raise the limit on open files (ulimit -n) or run fewer jobs at once"),
    _E.ENFILE: ("too many open files on the system", "close other programs or raise the system's limit on open files"),
    _E.EIO: ("an input/output error (a failing disk or a dropped network mount)", "check the disk or mount, then try again"),
    _E.ENOENT: ("no such file or folder", "check the path"),
    _E.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    _E.EISDIR: ("it is a folder, not a file", "give a file name"),
}
if hasattr(_E, "EDQUOT"):
    _SAID[_E.EDQUOT] = ("the disk quota is exceeded", "free some space, or choose a folder on another disk")

WRITE_ONLY = {_E.ENOSPC, _E.EROFS, getattr(_E, "EDQUOT", _E.ENOSPC)}  # a failure only a write can meet


def os_said(exc: BaseException) -> str:
    """What the system said, in words (``permission denied``); the system's own text for an errno without words here."""
    said = _SAID.get(getattr(exc, "errno", None))
    if said:
        return said[0]
    return str(getattr(exc, "strerror", None) or exc)


def os_error_text(exc: OSError, path=None, doing: str | None = None, then: str = "") -> str:
    """``cannot <doing> <path>: <what the system said>; <the fix><then>.`` ``path``: the file the caller knows (else
    the error's own ``filename``); ``doing``: ``read``, ``write``, ... (else ``write`` for a failure only a write
    meets, ``use`` otherwise); ``then``: more of the fix (``, then run the download again``). A :class:`WriteError`
    says it already."""
    if isinstance(exc, WriteError):
        return str(exc)
    where = path if path is not None else (getattr(exc, "filename", None) or "a file")
    doing = doing or ("write" if getattr(exc, "errno", None) in WRITE_ONLY else "use")
    fix = _SAID.get(getattr(exc, "errno", None), (None, "check that the path exists, is a file or folder as expected, "
                                                        "and is readable or writable as needed"))[1]
    return f"cannot {doing} {where}: {os_said(exc)}; {fix}{then}."


def is_os_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the system refusing the file itself (permissions, a name too long, no file handles left)
    rather than a file whose contents are wrong (PyAV raises its codec errors as OSError subclasses too)."""
    return isinstance(exc, OSError) and getattr(exc, "errno", None) in _SAID


def refused(exc: BaseException, path, doing: str = "read", error=EchoMimicError, before: str = "", then: str = ""):
    """The error to raise instead of ``exc`` when it is the system refusing ``path`` (:func:`is_os_refusal`), else
    None (the caller re-raises or explains it its own way): ``error(before + "cannot <doing> <path>: ...; <fix><then>.")``;
    ``error``: the exception class, or any callable taking the message."""
    if not is_os_refusal(exc):
        return None
    return error(before + os_error_text(exc, path, doing, then))


KEPT = " Nothing partial was kept (a file already there is unchanged)."
_QUOTED = re.compile(r"\(os error (\d+)\)")  # how safetensors (Rust) quotes the system's error
_TORCH_WRITE = re.compile(r"PytorchStreamWriter failed|file write failed|inline_container.*unexpected pos")  # torch.save
_FULL = _SAID[_E.ENOSPC][1]


class WriteError(EchoMimicError, OSError):
    """A file could not be written: ``cannot write PATH: <what the system said>; <fix>.`` and what was kept. A user
    error (the command lines print it as it is, a node shows it) that is still an OSError for callers to whom a failed
    write is not fatal; ``os_errno`` is the system's errno (None where torch did not say), ``path`` the file named."""

    def __init__(self, message: str, os_errno: int | None = None, path=None):
        super().__init__(message)
        self.os_errno = os_errno
        self.path = path


def write_errno(exc: BaseException) -> int | None:
    """The errno of a refused write: an OSError's, or the one safetensors quotes in its text (``(os error 28)``)."""
    if isinstance(exc, WriteError):
        return exc.os_errno
    if isinstance(exc, OSError):
        return exc.errno
    found = _QUOTED.search(str(exc)) if type(exc).__name__ == "SafetensorError" else None
    return int(found.group(1)) if found else None


def write_refused(exc: BaseException, path, kept: str = KEPT, doing: str = "write") -> WriteError | None:
    """:class:`WriteError` naming ``path`` when ``exc`` is a write the system refused (an OSError it has words for,
    safetensors' quoted errno) or torch.save's failed write (a RuntimeError with neither path nor errno: most often a
    full disk); None for anything else."""
    if isinstance(exc, WriteError):
        return exc
    code = write_errno(exc)
    if code in _SAID:
        return WriteError(os_error_text(OSError(code, ""), path, doing) + kept, code, path)
    if isinstance(exc, RuntimeError) and _TORCH_WRITE.search(str(exc)):
        return WriteError(f"cannot {doing} {path}: the write stopped part way (most often a full disk or an exceeded "
                          f"quota); {_FULL}.{kept}", path=path)
    return None


@contextmanager
def writing(path, kept: str = KEPT, staged: bool = False):
    """Inside, a write the system refuses or torch/safetensors cannot finish raises :class:`WriteError` naming ``path``
    (the destination the user gave, not a temporary file; the caller removes that), the original chained.
    ``staged``: the writes inside fill a temporary copy of ``path`` through helpers that name the file they were given
    (``save_pose_npz(seq, staged_file)``): their :class:`WriteError` is said again of ``path``."""
    try:
        yield
    except Exception as exc:
        if staged and isinstance(exc, WriteError) and exc.__cause__ is not None:
            exc = exc.__cause__  # what the system said, for the destination's name
        err = write_refused(exc, path, kept)
        if err is None or err is exc:
            raise
        raise err from exc


def missing_text(path, not_found: str = "file not found") -> str:
    """Why ``path``, which the system could not find, is missing, in the words every input's message uses after
    ``OPTION PATH: ``: ``not_found`` (``file not found``), or for a symbolic link whose target is gone (a file moved or
    deleted that the link still names) ``is a link to TARGET, which does not exist`` -- the link's own words, then the
    place they mean when relative (``../m/x.mp4 (/abs/m/x.mp4)``), a chain's last link named too -- or a loop of links
    as such."""
    import os

    p = os.fspath(path)
    try:
        os.stat(p)
        return not_found  # it is there (a link to a pipe, a folder...): the caller's own words
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:  # a loop of links is walked below; permissions and the like are not "missing"
        if exc.errno != errno.ELOOP:
            return not_found
    except ValueError:  # a NUL byte
        return not_found
    seen, hops = [p], []
    while True:
        try:
            said = os.readlink(seen[-1])
        except (OSError, ValueError):  # not a link (or no longer): the last name is the missing one
            break
        where = os.path.normpath(os.path.join(os.path.dirname(seen[-1]), said))
        hops.append(said if said == where else f"{said} ({where})")
        if where in seen or len(seen) > 40:
            return f"is a link that loops back on itself ({' -> '.join([p, *hops])}); point the link at the file itself"
        seen.append(where)
    if not hops:
        return not_found
    return f"is a link to {hops[0]}" + "".join(f" (a link to {h})" for h in hops[1:]) + ", which does not exist"


def not_file_text(path, not_found: str = "file not found") -> str | None:
    """None when ``path`` is a regular file (through links); else what is there instead, in the words an input's
    message uses after ``PATH: `` (from ``stat`` alone: a named pipe is never opened, a device never read):
    :func:`missing_text` for nothing there (``not_found``, a link to nothing, a loop of links), ``is a folder, not a
    file``, ``is a named pipe (FIFO), not a file``, ``is a device (/dev/zero), not a file``. A path the system will not
    let be looked at (permissions) is None: the reader's own open says it (:func:`refused`)."""
    import os
    import stat

    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return missing_text(path, not_found)
    except OSError as exc:
        return missing_text(path, not_found) if exc.errno == errno.ELOOP else None
    if stat.S_ISREG(mode):
        return None
    target = os.path.realpath(path)
    seen = f" ({target})" if target != os.path.abspath(path) else ""
    if stat.S_ISDIR(mode):
        return f"is a folder{seen}, not a file"
    if stat.S_ISFIFO(mode):
        return f"is a named pipe (FIFO){seen}, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return f"is a device{seen}, not a file"
    return f"is not a regular file (a socket?){seen}"
