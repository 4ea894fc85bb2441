"""Checks of the names a shared workflow picks from a node's lists (weights folder, VAE, LoRA, pose folder, metric file),
run by ComfyUI when the prompt is queued (each node's ``VALIDATE_INPUTS``; ComfyUI then leaves its own "Value not in
list" check of these inputs to us).

- A name written with the other system's separator (``echomimic\\v1`` from a Windows workflow on Linux, ``sub/vae``
  on Windows, where ComfyUI lists ``sub\\vae``) is the listed name: accepted. The node looks it up through
  :func:`.paths.safe_child`, which reads both separators and never leaves the folder (``..\\..`` stays refused).
- Any other name not in the list is refused, naming the close match: the same name in another case (Linux file names
  are case-sensitive), another extension of the same file (``.pth`` / ``.safetensors``), the same last part in
  another folder, or a near spelling.
"""
from __future__ import annotations

import difflib
import re
from pathlib import PurePosixPath

_DRIVE = re.compile(r"^[A-Za-z]:")


def _norm(name: str) -> str:
    return "/".join(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


def is_empty(name: str) -> bool:
    """Whether a picked name names nothing ("", spaces, "./", "\\"): a workflow saved where the list was empty."""
    return not _norm(name).strip()


def listed(value, options) -> str | None:
    """The option ``value`` stands for (the same name up to its path separators), or None."""
    if not isinstance(value, str):
        return None
    if value in options:
        return value
    by_norm = {_norm(o): o for o in options if isinstance(o, str)}
    return by_norm.get(_norm(value))


def close_match(value: str, options) -> str | None:
    """The option the user most likely meant: another case, another extension, another folder, a near spelling."""
    names = [o for o in options if isinstance(o, str)]
    norm = _norm(value)
    stem = PurePosixPath(norm)
    for test in (lambda o: _norm(o).lower() == norm.lower(),
                 lambda o: str(PurePosixPath(_norm(o)).with_suffix("")).lower() == str(stem.with_suffix("")).lower(),
                 lambda o: PurePosixPath(_norm(o)).name.lower() == stem.name.lower(),
                 lambda o: PurePosixPath(_norm(o)).stem.lower() == stem.stem.lower()):
        found = [o for o in names if test(o)]
        if found:
            return found[0]
    near = difflib.get_close_matches(norm.lower(), [_norm(o).lower() for o in names], n=1, cutoff=0.75)
    if near:
        return next(o for o in names if _norm(o).lower() == near[0])
    return None


def problem(value, options, what: str, where: str) -> str | None:
    """Why ``value`` is not one of ``options`` (after separators are normalised), or None when it is. ``what`` names the
    input (``"vae"``), ``where`` the folder the list comes from."""
    if value is None:  # linked (a Primitive node): not known when queued; the node checks it when it runs
        return None
    if not isinstance(value, str):
        return (f"{what}: {value!r} is not a name (a {type(value).__name__}): give one of the list's names as text, "
                "e.g. from the node's menu.")
    if listed(value, options) is not None:
        return None
    if not _norm(value).strip():  # a workflow saved where the list was empty: was "PurePosixPath('.') has an empty name"
        shown = ", ".join(repr(o) for o in options[:8] if isinstance(o, str))
        return (f"{what} is empty (the workflow was saved where {where} held nothing to pick?): put the file or folder "
                f"into {where}, press R in ComfyUI to refresh the lists, and pick one" + (f" ({shown})." if shown else "."))
    parts = value.replace("\\", "/").split("/")
    if value.replace("\\", "/").startswith("/") or _DRIVE.match(value) or ".." in parts:
        return (f"{what} '{value}' is not a name inside {where}: absolute paths and '..' are refused. Put the file or "
                f"folder into {where} and pick it from the list.")
    near = close_match(value, options)
    if near is not None:
        return (f"{what} '{value}' is not in {where}; did you mean '{near}'? (Names must match exactly: Linux tells "
                "upper from lower case, and .pth / .safetensors are different files.) Pick it from the list, or rename "
                "the file.")
    shown = [o for o in options if isinstance(o, str)][:8]
    more = f" ... ({len(options)} in all)" if len(options) > len(shown) else ""
    return (f"{what} '{value}' is not in {where} (the workflow was made where it exists?): put it there and press R in "
            f"ComfyUI to refresh the lists, or pick one of: {', '.join(repr(o) for o in shown)}{more}.")


def check(node_cls, where: dict, **values):
    """``VALIDATE_INPUTS`` of a node over its name inputs: True, or the first problem. ``where``: input -> the folder
    its list comes from (for the message); the options are the node's current ``INPUT_TYPES``."""
    spec = node_cls.INPUT_TYPES()
    inputs = {**spec.get("required", {}), **spec.get("optional", {})}
    for name, value in values.items():
        options = inputs[name][0]
        found = problem(value, options, name, where.get(name, "its folder"))
        if found:
            return found
    return True
