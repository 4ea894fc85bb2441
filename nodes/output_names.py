"""The names of the files the nodes write into ComfyUI's output folder, by ComfyUI's own rules, outside ComfyUI too:
which ``filename_prefix`` may be used (:func:`prefix_problem`), the next numbered name as
``folder_paths.get_save_image_path`` gives it (:func:`stand_in_save_path`), the frontend's entry for a file
(:func:`saved_entry`) and the error when the folder cannot be used (:func:`save_failed`).

No ComfyUI here: :mod:`.comfy_bridge` passes the output folder in and calls ComfyUI's helper itself."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable

from ..echomimic_lib.errors import EchoMimicError
from ..echomimic_lib.io.os_errors import write_refused

MAX_PREFIX_PART = 200  # bytes per name of a filename_prefix: 255 less the numbering (_00001_.mp4) and a temporary name's


def prefix_problem(prefix, output_root: Callable[[], os.PathLike | str]) -> str | None:
    """Why a ``filename_prefix`` cannot be used, or None: empty, or a folder outside the output folder (ComfyUI's own
    rule: the prefix's folder part, normalised and joined to the output folder, must stay inside it).
    ``output_root()`` gives the output folder (asked once the prefix is a non-empty name)."""
    if not isinstance(prefix, str) or not prefix.strip():
        return "filename_prefix is empty: give a name such as 'echomimic/video' (sub-folders of the output folder are fine)."
    if "\x00" in prefix:
        return (f"filename_prefix {prefix!r} holds a NUL byte (\\x00), which no file name can hold: type the name again, "
                "such as 'echomimic/video'.")
    try:
        os.fsencode(prefix)
    except UnicodeEncodeError as exc:  # (a workflow's JSON may hold "\ud800": made and written only after the render)
        return (f"filename_prefix {prefix!r} holds {exc.object[exc.start]!r}, a character no file name on this system can "
                "hold (half of a surrogate pair): type the name again, such as 'echomimic/video'.")
    root = os.path.abspath(output_root())
    folder = os.path.abspath(os.path.join(root, os.path.dirname(os.path.normpath(prefix))))
    try:
        inside = os.path.commonpath((root, folder)) == root
    except ValueError:  # another drive (Windows)
        inside = False
    if not inside:
        return (f"filename_prefix '{prefix}' points outside ComfyUI's output folder ({root}): give a name inside it such "
                "as 'echomimic/video' (sub-folders are fine; '..' and absolute paths elsewhere are not).")
    parts = os.path.relpath(folder, root).split(os.sep) + [os.path.basename(os.path.normpath(prefix))]
    too_long = [p for p in parts if len(p.encode("utf-8", "surrogatepass")) > MAX_PREFIX_PART]
    if too_long:
        return (f"filename_prefix: the part '{too_long[0][:40]}...' is {len(too_long[0].encode('utf-8', 'surrogatepass'))} "
                f"bytes long; file systems allow 255 per name (less the numbering): give a name of at most {MAX_PREFIX_PART}.")
    step = root
    for part in parts[:-1]:
        step = os.path.join(step, part)
        if part not in ("", ".") and os.path.lexists(step) and not os.path.isdir(step):
            return (f"filename_prefix '{prefix}': {step} is a file, not a folder, so the video cannot go inside it; choose "
                    "another sub-folder name (or move that file away).")
    return None


def stand_in_save_path(prefix: str, root: Path, width: int, height: int) -> tuple[str, str, int, str]:
    """What ``folder_paths.get_save_image_path`` gives outside ComfyUI: %width% / %height% / %year% ... %second%
    filled in, the folder made, and the counter one past the highest ``<name>_<digits>_`` already there."""
    now = time.localtime()
    tokens = {"width": width, "height": height, "year": now.tm_year, "month": f"{now.tm_mon:02}", "day": f"{now.tm_mday:02}",
              "hour": f"{now.tm_hour:02}", "minute": f"{now.tm_min:02}", "second": f"{now.tm_sec:02}"}
    for key, value in tokens.items():
        prefix = prefix.replace(f"%{key}%", str(value))
    subfolder, name = os.path.split(os.path.normpath(prefix))
    folder = Path(root) / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for f in os.listdir(folder) if (m := re.match(re.escape(name) + r"_(\d+)_", f))]
    return str(folder), name, max(taken, default=0) + 1, subfolder


def save_failed(exc: OSError, prefix: str, root: Path) -> EchoMimicError:
    """The error for an output folder that cannot be used (a file where a folder goes, made since the check; no
    permission; a read-only disk), naming the prefix and the fix."""
    err = write_refused(exc, exc.filename or root / os.path.dirname(prefix), "")
    if err is None:
        return EchoMimicError(f"filename_prefix '{prefix}': cannot use {exc.filename or 'its folder'} in the output "
                              f"folder ({exc.strerror or exc}); choose another name.")
    return EchoMimicError(f"filename_prefix '{prefix}': {err}")


def saved_entry(folder, name: str, counter: int, ext: str, root: Path) -> tuple[Path, dict]:
    """The file ``<name>_<counter:05>_.<ext>`` in ``folder`` and the entry the frontend shows it by (the sub-folder
    relative to the output folder ``root``, also for an absolute prefix inside it)."""
    file = f"{name}_{counter:05}_.{ext}"
    subfolder = os.path.relpath(os.path.abspath(folder), os.path.abspath(root))
    return Path(folder) / file, {"filename": file, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}
