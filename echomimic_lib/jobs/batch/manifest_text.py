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

import io
import os
import re
from pathlib import Path

from ...errors import EchoMimicError

FIX_ENCODING = ("save it as UTF-8: in Excel File > Save As > 'CSV UTF-8 (Comma delimited)', in an editor the UTF-8 "
                "encoding, and run the same command again.")
_DRIVE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")  # C:\... or \\server\share


def read_text(path: Path) -> io.StringIO:
    """The manifest's text (a BOM dropped), ready for :mod:`csv` (newlines kept as written) or line reading."""
    data = Path(path).read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with its byte-order mark: unambiguous
        try:
            return io.StringIO(data.decode("utf-16"), newline="")
        except UnicodeDecodeError:
            pass
    try:
        return io.StringIO(data.decode("utf-8-sig"), newline="")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        end = data.find(b"\n", exc.start)
        text = data[start: end if end >= 0 else len(data)].decode("utf-8", "replace").strip()
        raise EchoMimicError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[exc.start]:02X} in '{text[:80]}'): the file "
                             f"was saved in another encoding (Excel's 'CSV (Comma delimited)' uses the Windows code page); "
                             f"{FIX_ENCODING}") from None


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


__all__ = ["read_text", "separator", "duplicate_columns", "row_path", "FIX_ENCODING"]
