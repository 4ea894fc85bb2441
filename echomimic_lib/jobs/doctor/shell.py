"""The shell commands in ``echomimic doctor``'s fixes, rendered for the shell of the machine it runs on: a POSIX shell
(``rm --``, ``curl -L``, ``mkdir -p``, ``shlex`` quoting), or on Windows PowerShell (``Remove-Item -LiteralPath``,
``curl.exe``, ``New-Item -ItemType Directory -Force``, double quotes with PowerShell's backtick escapes, ``& "python.exe"``
to call a quoted program). Commands are chained with ``;`` there: Windows PowerShell 5.1, the one Windows ships, has no
``&&``. Every doctor module builds its command lines here; :func:`is_windows` is looked up at each call, so tests
switch it with monkeypatch.
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
    ``curl`` is Invoke-WebRequest, which takes none of these options)."""
    if is_windows():
        return f"curl.exe -L --create-dirs -o {quote(dest)} {quote(url)}"
    return f"curl -L --create-dirs -o {quote(dest)} {url}"


def make_dirs(*paths) -> str:
    """Make these folders and their parents (no error when there)."""
    if is_windows():
        return "New-Item -ItemType Directory -Force -Path " + ", ".join(quote(p) for p in paths)
    return "mkdir -p " + " ".join(quote(p) for p in paths)


def then(*lines: str) -> str:
    """Commands one after the other (POSIX: each only when the one before worked)."""
    return ("; " if is_windows() else " && ").join(lines)
