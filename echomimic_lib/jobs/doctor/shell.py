"""The shell commands in ``echomimic doctor``'s fixes, rendered for the shell of the machine it runs on: a POSIX shell
(``rm --``, ``curl -L``, ``mkdir -p``, ``shlex`` quoting), or on Windows PowerShell (``Remove-Item -LiteralPath``,
``curl.exe``, ``New-Item -ItemType Directory -Force``, double quotes with PowerShell's backtick escapes, ``& "python.exe"``
to call a quoted program). Commands are chained so that each runs only when the one before worked: ``&&`` in a POSIX
shell; in PowerShell ``a; if ($?) { b }`` (Windows PowerShell 5.1, the one Windows 10 and 11 ship, has no ``&&``, and a
plain ``;`` runs the next command after a failed one). A remark after a command (two spaces and a parenthesis) stays
after the whole chain. Every doctor module builds its command lines here; :func:`is_windows` is looked up at each
call, so tests switch it with monkeypatch.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import sys

_PS_SAFE = re.compile(r"[A-Za-z0-9_\-.:\\/]+")  # PowerShell: ',' makes an array, '@' splats, '$' expands, '`' escapes
_PS_SPECIAL = re.compile('[`"$\u201c\u201d\u201e]')  # escaped with a backtick inside "...": PowerShell takes curly quotes as '"'


def is_windows() -> bool:
    return os.name == "nt"


def quote(arg) -> str:
    """One argument, quoted for the shell when it needs it (a path with spaces, a requirement with '<' or '>')."""
    arg = str(arg)
    if not is_windows():
        return shlex.quote(arg)
    if _PS_SAFE.fullmatch(arg):
        return arg
    return '"' + _PS_SPECIAL.sub(r"`\g<0>", arg) + '"'


def command(*args) -> str:
    """A program and its arguments (the program a plain name on PATH, such as ``echomimic``)."""
    return " ".join(quote(a) for a in args)


def run(program, *args) -> str:
    """A program given by its path (which may need quotes: PowerShell then calls it with ``&``)."""
    line = command(program, *args)
    return "& " + line if is_windows() else line


def echomimic(*args) -> str:
    """An ``echomimic`` command line. On Windows, where the command is on no PATH (the portable build installs it into
    python_embeded\\Scripts, which no shell searches), through the Python running the doctor instead."""
    if is_windows() and not shutil.which("echomimic"):
        return run(sys.executable, "-m", "echomimic_lib.cli", *args)
    return command("echomimic", *args)


def python_pip(*args) -> str:
    """pip of the Python running the doctor (in ComfyUI's portable build python_embeded's, in Desktop its .venv's)."""
    return run(sys.executable, "-m", "pip", *args)


def remove(paths) -> str:
    """Delete these files (each a literal path: no wildcards)."""
    paths = [str(p) for p in paths]
    if is_windows():
        return "Remove-Item -LiteralPath " + ", ".join(quote(p) for p in paths)
    return "rm -- " + " ".join(quote(p) for p in paths)


def download(dest, url: str) -> str:
    """Fetch ``url`` to ``dest``, its folders made (Windows 10 and 11 ship curl.exe; in Windows PowerShell a plain
    ``curl`` is Invoke-WebRequest, which takes none of these options). ``-f``: an HTTP error fails the command (exit
    22) instead of saving the server's error page as the file."""
    return f"{'curl.exe' if is_windows() else 'curl'} -fL --create-dirs -o {quote(dest)} {quote(url)}"


def copy(src, dest) -> str:
    """Copy the file ``src`` to ``dest`` (literal paths)."""
    if is_windows():
        return f"Copy-Item -LiteralPath {quote(src)} -Destination {quote(dest)}"
    return f"cp -- {quote(src)} {quote(dest)}"


def make_dirs(*paths) -> str:
    """Make these folders and their parents (no error when there)."""
    if is_windows():
        return "New-Item -ItemType Directory -Force -Path " + ", ".join(quote(p) for p in paths)
    return "mkdir -p " + " ".join(quote(p) for p in paths)


REMARK = "  ("  # a fix's prose after its command: "cmd  (or ...)"


class Chain(str):
    """A :func:`then` line that remembers its commands and remark, so a chain given to :func:`then` again is joined
    as one flat chain."""
    parts: tuple = ()
    remark: str = ""


def _split(line: str) -> tuple[list[str], str]:
    if isinstance(line, Chain):
        return list(line.parts), line.remark
    at = line.find(REMARK)
    while at != -1 and (line.count("'", 0, at) % 2 or line.count('"', 0, at) % 2):  # inside a quoted path
        at = line.find(REMARK, at + 1)
    return ([line[:at]], line[at:]) if at != -1 else ([line], "")


def then(*lines: str) -> str:
    """Commands one after the other, each only when the one before worked (POSIX ``a && b``; PowerShell 5.1 and 7
    ``a; if ($?) { b }``, nested for more); the remarks of the lines go after the chain."""
    parts, remarks = [], []
    for line in lines:
        if not line:
            continue
        cmds, remark = _split(line)
        parts += cmds
        remarks += [remark] if remark else []
    if not parts:
        return ""
    if is_windows():
        text = parts[-1]
        for cmd in reversed(parts[:-1]):
            text = f"{cmd}; if ($?) {{ {text} }}"
    else:
        text = " && ".join(parts)
    out = Chain(text + "".join(remarks))
    out.parts, out.remark = tuple(parts), "".join(remarks)
    return out
