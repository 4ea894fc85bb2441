"""A name typed by a user (a batch row's ``name``, a file's stem in a queued job's prefix) made into one file name that
every file system takes: the batch's ``OUTDIR/<name>.mp4`` and the queue client's ComfyUI ``filename_prefix`` use
this one rule (:func:`safe_file_name`).

- Unicode letters, their marks and digits are kept, in NFC (``café`` typed as ``e`` + accent and as ``é`` is one name),
  with ``. _ + -``; anything else (``/ \\ : * ? " < > |``, control characters, spaces, other punctuation, which shells
  and glob patterns read) becomes ``_`` (a run of them one ``_``);
- no leading or trailing ``.`` or ``_`` (Windows drops trailing dots; a leading dot hides the file);
- at most ``max_chars`` characters and ``max_bytes`` bytes of UTF-8 (file names are limited to 255 bytes, suffixes
  included), cut between whole characters and never between a letter and its accent;
- a Windows device name (``CON``, ``NUL``, ``COM1``, ``LPT¹``, ... with or without a suffix) gets a leading ``_``.
"""
from __future__ import annotations

import unicodedata

WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", "conin$", "conout$",
                             *(f"{d}{i}" for d in ("com", "lpt") for i in (*"0123456789", "¹", "²", "³"))})
KEPT_PUNCTUATION = "._+-"


def plain_file_name(name) -> bool:
    """``name`` (read from a file: a weight index's shard) is a file name in its folder: text with no folder part
    (``/``, ``\\``, a drive's ``:``), not ``.`` or ``..``, no NUL."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\:\0")


def _kept(ch: str) -> bool:
    return ch in KEPT_PUNCTUATION or unicodedata.category(ch)[0] in "LMN"


def safe_file_name(text, fallback: str = "job", max_chars: int = 120, max_bytes: int = 200) -> str:
    """``text`` as one portable file name (no suffix added; see the module's notes); ``fallback`` when nothing is
    left of it."""
    text = unicodedata.normalize("NFC", str(text))
    out, gap = [], False
    for ch in text:
        if _kept(ch):
            out.append(ch)
            gap = False
        elif not gap:
            out.append("_")
            gap = True
    name = "".join(out).strip("._")
    full = name
    name = name[:max_chars]
    while len(name.encode("utf-8")) > max_bytes:
        name = name[:-1]
    while name and len(name) < len(full) and unicodedata.category(full[len(name)])[0] == "M":
        name = name[:-1]  # the cut fell between a letter and its combining mark: the letter goes too
    name = name.rstrip("._") or fallback
    return f"_{name}" if name.split(".")[0].casefold() in WINDOWS_DEVICES else name
