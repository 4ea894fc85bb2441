"""Reading a JSON file the project or its user wrote (a workflow, a queue state, a dataset's status and settings, a
landmark file, a clip's header), or JSON that arrived as text (a server's answer), with one form of error for all:
``<file>: <what> (<the problem>); <the fix>``, of the exception class the caller picks (so its ``except`` clauses keep
working). The problems said: not valid JSON (where), nested deeper than Python's parser reads (a RecursionError),
not UTF-8, a byte-order mark, empty, another top-level kind than expected, a folder, pipe or device instead of a file
(refused before it is opened for reading, so a pipe is never waited on), a file over the size given (refused before
it is read); the system refusing the file is said as :mod:`.os_errors` says it. Standard library only (the
``echomimic queue`` client uses it)."""
from __future__ import annotations

import json
import os
import stat

from ..errors import EchoMimicError
from .os_errors import os_said, refused

_KINDS = {dict: "an object {...}", list: "a list [...]", str: "text", bool: "true or false", type(None): "null",
          int: "a number", float: "a number"}
_RAISE = object()
NESTED = "nested too deeply to be read"  # (json's parser raises RecursionError past ~1000 levels of [ and {)


def json_problem(exc: BaseException) -> str | None:
    """What is wrong with JSON whose parse raised ``exc``, in words (``not valid JSON: Expecting value at line 1,
    column 1``, ``nested too deeply to be read``, ``not UTF-8 text ...``); None for an exception that is not about the
    text (the caller lets it through)."""
    if isinstance(exc, RecursionError):
        return NESTED
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at position {exc.start} cannot be decoded"
    if isinstance(exc, json.JSONDecodeError):
        if exc.msg.startswith("Unexpected UTF-8 BOM"):
            return "it starts with a byte-order mark (BOM); save it as UTF-8 without a BOM"
        return f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    if isinstance(exc, ValueError) and not isinstance(exc, EchoMimicError):
        return str(exc) or type(exc).__name__  # (an object_pairs_hook's refusal)
    return None


def kind_of(value) -> str:
    """``value``'s JSON kind, in words (``a list [...]``)."""
    return _KINDS.get(type(value), type(value).__name__)


def _checked(value, expect, where: str, what: str, fix: str, error):
    if expect is not None and not isinstance(value, expect):
        want = " or ".join(_KINDS[t] for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise error(f"{where}: {what} (it holds {kind_of(value)} where {want} belongs); {fix}")
    return value


def loads_json(text, where: str, what: str = "not readable JSON", fix: str = "check what wrote it",
               error=EchoMimicError, expect=None, empty=_RAISE, **json_kw):
    """``json.loads(text)`` (``str`` or UTF-8 ``bytes``), or ``error("<where>: <what> (<the problem>); <fix>")`` for text
    that is not JSON, not UTF-8, nested too deeply for the parser or (``expect``: a type or tuple of types) of another
    top-level kind. ``empty``: what blank text stands for (else blank text is refused); ``json_kw``: for json.loads
    (an ``object_pairs_hook`` may refuse with a ValueError: its words are the problem)."""
    try:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8")
        if empty is not _RAISE and not text.strip():
            return empty
        value = json.loads(text, **json_kw)
    except (ValueError, RecursionError) as exc:
        problem = json_problem(exc)
        if problem is None:
            raise
        if not text.strip():
            problem = "empty"
        raise error(f"{where}: {what} ({problem}); {fix}") from None
    return _checked(value, expect, where, what, fix, error)


def read_json(path, what: str = "not a readable JSON file", fix: str = "check the file, or write it again",
              error=EchoMimicError, max_bytes: int | None = None, expect=None, missing: str | None = None,
              empty=_RAISE, name: str | None = None, pipes: bool = False, **json_kw):
    """The JSON in the file ``path``, read once (:func:`loads_json` says what the errors say, ``<path>: <what>
    (<the problem>); <fix>``). Refused before anything is read: a folder, pipe or device instead of a file, a file over
    ``max_bytes``. The system refusing the file (permissions, too many open files) is said as :func:`os_errors.refused`
    says it; a missing file as ``error(missing)`` when given, else the same way. ``error``: the exception class (or any
    callable taking the message), so each caller's ``except`` keeps working; ``name``: how the messages name the file
    (``data.captions PATH``; default the path); ``pipes``: a pipe is read too (a file the user names on the command line:
    ``<(cat wf.json)``), waited on as any reader would."""
    where = str(path) if name is None else name
    try:
        if missing is not None and not os.path.lexists(path):
            raise error(missing)
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):  # (Windows cannot open a folder at all: said here for both)
            raise error(f"{where}: {what} (it is a folder, not a file); {fix}")
        piped = pipes and stat.S_ISFIFO(mode)
        wait = 0 if piped else getattr(os, "O_NONBLOCK", 0)  # a pipe not asked for: never waited on
        fd = os.open(path, os.O_RDONLY | wait | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) and not (piped and stat.S_ISFIFO(st.st_mode)):
                raise error(f"{where}: {what} (it is not a regular file but a pipe, socket or device); {fix}")
            if max_bytes is not None and st.st_size > max_bytes:
                raise error(f"{where}: {what} ({st.st_size} bytes, over the {max_bytes} one may be); {fix}")
            data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    except OSError as exc:
        if missing is not None and isinstance(exc, FileNotFoundError):
            raise error(missing) from None
        err = refused(exc, path, error=error)
        raise (err or error(f"{where}: {what} ({os_said(exc)}); {fix}")) from None
    if max_bytes is not None and len(data) > max_bytes:  # (grew while read)
        raise error(f"{where}: {what} (over the {max_bytes} bytes one may be); {fix}")
    return loads_json(data, where, what, fix, error, expect, empty, **json_kw)
