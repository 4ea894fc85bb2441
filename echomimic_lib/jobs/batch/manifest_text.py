"""A manifest file as spreadsheets and editors save it: its text, the CSV separator, the header, and its paths.

- Encoding: UTF-8, with or without the byte-order mark Excel's "CSV UTF-8" writes, or UTF-16 with its mark (Excel's
  "Unicode Text"). Any other encoding (Excel's plain "CSV (Comma delimited)" writes the Windows code page, so an
  ``é`` is one byte 0xE9) is refused naming the line: guessing it could silently change a name, a path or a prompt.
- Separator: a comma; a header with no comma but semicolons (Excel where the decimal mark is a comma: most of
  Europe) or tabs (a sheet pasted as text) is read with that separator. Column names never hold either character,
  so the header alone tells them apart.
- Header: column names are matched without case, surrounding spaces or the ``-``/``_`` difference; two names that
  match the same column are refused (which value wins would be a guess).
- Paths: ``~`` is the home folder; a Windows path with backslashes that is not found as written is looked up with
  ``/`` (``media\\face.png`` written on Windows), and a drive path (``C:\\...``) that does not exist here is named as such.
"""
from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

from ...errors import EchoMimicError

FIX_ENCODING = ("save it as UTF-8: in Excel File > Save As > 'CSV UTF-8 (Comma delimited)', in an editor the UTF-8 "
                "encoding, and run the same command again.")
MAX_MANIFEST_BYTES = 256 << 20  # a manifest row is a few hundred bytes: a million rows is a few hundred MB
MAX_LINE_CHARS = 1 << 20  # characters a line (a JSONL row) may hold; a CSV cell: csv's field limit, 128 K characters
FIX_SIZE = ("split the manifest into several files (a header line in each .csv) and run `echomimic batch` once for each "
            "(check that it is the manifest you meant, not a media or log file).")
_DRIVE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")  # C:\... or \\server\share


def read_text(path: Path) -> io.StringIO:
    """The manifest's text (a BOM dropped), ready for :mod:`csv` (newlines kept as written) or line reading. A file over
    :data:`MAX_MANIFEST_BYTES` is refused before it is read, one with a line over :data:`MAX_LINE_CHARS` once decoded."""
    size = Path(path).stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise EchoMimicError(f"{path}: the manifest is {size >> 20} MiB, over the {MAX_MANIFEST_BYTES >> 20} MiB one may be (a row "
                             f"is a few hundred bytes: paths and options); {FIX_SIZE}")
    data = Path(path).read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with its byte-order mark: unambiguous
        try:
            return _lines_checked(path, data.decode("utf-16"))
        except UnicodeDecodeError:
            pass
    try:
        return _lines_checked(path, data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        end = data.find(b"\n", exc.start)
        text = data[start: end if end >= 0 else len(data)].decode("utf-8", "replace").strip()
        raise EchoMimicError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[exc.start]:02X} in '{text[:80]}'): the file "
                             f"was saved in another encoding (Excel's 'CSV (Comma delimited)' uses the Windows code page); "
                             f"{FIX_ENCODING}") from None


def _lines_checked(path: Path, text: str) -> io.StringIO:
    """``text`` for reading, or an error naming the first line longer than :data:`MAX_LINE_CHARS` (each step looks at
    the next ``MAX_LINE_CHARS`` characters from a line's start: a few steps per MiB, whatever the number of lines)."""
    pos = 0
    while len(text) - pos > MAX_LINE_CHARS:
        nl = max(text.rfind("\n", pos, pos + MAX_LINE_CHARS + 1), text.rfind("\r", pos, pos + MAX_LINE_CHARS + 1))  # old Macs: \r
        if nl < 0:
            raise EchoMimicError(f"{path}: line {text.count(chr(10), 0, pos) + 1} is longer than {MAX_LINE_CHARS >> 20} MiB of "
                                 f"text (a manifest row is a few hundred characters; a quote left open, or not a manifest?); "
                                 f"fix that line, or {FIX_SIZE}")
        pos = nl + 1
    return io.StringIO(text, newline="")


def csv_rows(reader, path: Path):
    """The rows of ``reader``; a cell over csv's field limit (a quote left open swallows the lines after it) is an error
    naming the line, never a traceback."""
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise EchoMimicError(f"{path}: line {reader.line_num}: {exc} characters (a cell is a path, a number or a prompt; "
                                 f"a quote \" left open takes in the lines after it): close the quote, or {FIX_SIZE}") from None
        yield cells


def separator(header: str) -> str:
    """``,`` unless the header line has none and is split by semicolons or tabs instead."""
    if "," in header:
        return ","
    for sep in (";", "\t"):
        if sep in header:
            return sep
    return ","


def duplicate_columns(names, key, where: str = "header") -> str | None:
    """A message for two names in the ``header`` (or a JSONL ``line``) that ``key`` (the column normalisation) makes
    one, else None."""
    seen: dict[str, tuple[int, str]] = {}
    for n, name in enumerate(names, 1):
        if name is None or not str(name).strip():
            continue
        k = key(name)
        if k in seen:
            first_n, first = seen[k]
            unit = "column" if where == "header" else "key"
            return f"the {where} names column '{k}' twice: '{first}' ({unit} {first_n}) and '{name}' ({unit} {n}); keep one of them"
        seen[k] = (n, name)
    return None


def row_path(value, base: Path, column: str) -> str:
    """A row's path: ``~`` expanded, relative to ``base`` (the manifest's folder), Windows separators understood."""
    text = str(value).strip()
    p = Path(text).expanduser()
    path = p if p.is_absolute() else base / p
    if os.sep == "/" and "\\" in text and not path.exists():
        if _DRIVE.match(text):
            raise ValueError(f"{column}: {text} is a Windows path, which this computer cannot open; give the file's path "
                             f"here (a relative one is read from {base})")
        alt = Path(text.replace("\\", "/")).expanduser()
        alt = alt if alt.is_absolute() else base / alt
        if alt.exists():
            return str(alt)
    return str(path)


def not_a_file(path) -> str | None:
    """What is at ``path`` when it is no regular file nor folder, as a refusal says it (from ``stat`` alone: a named
    pipe is never opened); None for a file or a folder (the row's own checks read them), "not found" when nothing is."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "not found"
    except ValueError:  # a NUL byte in the cell
        return "not a file name (it holds a NUL byte)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc}); check the path and its permissions"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return ("is a named pipe (FIFO), not a regular file: the batch reads each input more than once (checked, then "
                "rendered); save the stream to a file and give that")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file; give a file"
    return "is not a regular file (a socket?); give a file"


__all__ = ["read_text", "separator", "duplicate_columns", "row_path", "not_a_file", "FIX_ENCODING", "FIX_SIZE", "MAX_MANIFEST_BYTES", "csv_rows"]
