"""The shell commands in ``echomimic doctor``'s fixes, rendered for the shell of the machine it runs on: a POSIX shell
(``rm --``, ``curl -L``, ``mkdir -p``, ``shlex`` quoting), or on Windows PowerShell (``Remove-Item -LiteralPath``,
``curl.exe``, ``New-Item -ItemType Directory -Force``, double quotes with PowerShell's backtick escapes, ``& "python.exe"``
to call a quoted program). Commands are chained so that each runs only when the one before worked: ``&&`` in a POSIX
shell; in PowerShell ``a; if ($?) { b }`` (Windows PowerShell 5.1, the one Windows 10 and 11 ship, has no ``&&``, and a
plain ``;`` runs the next command after a failed one). A fix's remark (another way to fill the gap, what the command
fills) is a comment line of its own before the commands (``# ...``, a comment in a POSIX shell and in PowerShell), never
prose after a command, so every line of a fix can be pasted whole (:func:`fix`). Every doctor module builds its command
lines here; :func:`is_windows` is looked up at each call, so tests switch it with monkeypatch.
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


COMMENT = "# "  # a comment line in a POSIX shell and in PowerShell (there ``#`` starts a line comment too)


def comment(text: str) -> str:
    """A remark as a comment line of its own (one line: a newline in it would end the comment)."""
    return COMMENT + " ".join(str(text).split())


class Chain(str):
    """A fix: comment lines (its remarks), then one command line (a chain of :func:`then`, or none); it remembers both,
    so a fix given to :func:`then` again is joined as one flat chain with its remarks kept before it."""
    parts: tuple = ()
    remarks: tuple = ()


def _make(parts, remarks) -> Chain:
    parts, remarks = tuple(p for p in parts if p), tuple(r for r in remarks if r)
    if not parts:
        text = ""
    elif is_windows():
        text = parts[-1]
        for cmd in reversed(parts[:-1]):
            text = f"{cmd}; if ($?) {{ {text} }}"
    else:
        text = " && ".join(parts)
    out = Chain("\n".join([comment(r) for r in remarks] + ([text] if text else [])))
    out.parts, out.remarks = parts, remarks
    return out


def _split(line: str) -> tuple[list[str], list[str]]:
    if isinstance(line, Chain):
        return list(line.parts), list(line.remarks)
    lines = str(line).split("\n")
    n = next((i for i, x in enumerate(lines) if not x.startswith(COMMENT)), len(lines))  # the remarks come first
    command = "\n".join(lines[n:])  # (a quoted path may hold a newline)
    return [command] if command else [], [x[len(COMMENT):] for x in lines[:n]]


def fix(command: str | None, *remarks: str) -> str:
    """A command with its remarks, each a comment line before it (``command`` None or empty: remarks only, for a fix
    that is no command, such as a setting to switch on in ComfyUI)."""
    parts, before = _split(command) if command else ([], [])
    return _make(parts, [*before, *remarks])


def then(*lines: str) -> str:
    """Commands one after the other, each only when the one before worked (POSIX ``a && b``; PowerShell 5.1 and 7
    ``a; if ($?) { b }``, nested for more); the remarks of the lines go before the chain, as comment lines."""
    parts, remarks = [], []
    for line in lines:
        if not line:
            continue
        cmds, notes = _split(line)
        parts += cmds
        remarks += notes
    return _make(parts, remarks)
