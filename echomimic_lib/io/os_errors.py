"""What the operating system said, in one line a user can act on: :func:`os_error_text` names the path, says what the
system refused (no space left, permission denied, a read-only disk, a name too long, too many open files) and the fix.
The command lines (``echomimic``, ``echomimic-train``) end with it instead of a traceback; readers of inputs use it so
that a file that exists but cannot be opened is not called missing or damaged."""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager

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


def os_error_text(exc: OSError, path=None, doing: str | None = None) -> str:
    """``cannot <doing> <path>: <what the system said>; <the fix>.`` ``path``: the file the caller knows (else the
    error's own ``filename``); ``doing``: ``read``, ``write``, ... (else ``write`` for a failure only a write meets,
    ``use`` otherwise)."""
    where = path if path is not None else (getattr(exc, "filename", None) or "a file")
    doing = doing or ("write" if getattr(exc, "errno", None) in WRITE_ONLY else "use")
    fix = _SAID.get(getattr(exc, "errno", None), (None, "check that the path exists, is a file or folder as expected, "
                                                        "and is readable or writable as needed"))[1]
    return f"cannot {doing} {where}: {os_said(exc)}; {fix}."


def is_os_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the system refusing the file itself (permissions, a name too long, no file handles left)
    rather than a file whose contents are wrong (PyAV raises its codec errors as OSError subclasses too)."""
    return isinstance(exc, OSError) and getattr(exc, "errno", None) in _SAID


@contextmanager
def naming(final, *temporaries):
    """An OSError raised inside that names one of ``temporaries`` (a temporary file the caller removes on failure) is
    raised again naming ``final``, the destination the user gave (same errno and subclass; the original chained)."""
    temps = {os.fspath(t) for t in temporaries}
    try:
        yield
    except OSError as exc:
        name = getattr(exc, "filename", None)
        if exc.errno is None or name is None or os.fspath(name) not in temps:
            raise
        raise OSError(exc.errno, exc.strerror, os.fspath(final)) from exc
