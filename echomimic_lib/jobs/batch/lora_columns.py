"""A manifest row's ``lora`` / ``lora-strength`` columns (V1/V2 and EchoMimicV3 rows alike), and the part of a row's
weight key they make.

``lora``: one file, or several separated by ``;`` (:data:`~echomimic_lib.jobs.lora_args.SEPARATOR`; a JSONL row may give
a list); ``lora-strength``: one number for every file, or one per file in the same order (``;``-separated, or a list).
Relative paths are read from the manifest's folder. A row with one file keeps the request fields it had before stacks
existed (``(path, strength)``), so its fingerprint and weight key are unchanged; several become two tuples.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import EchoMimicError
from ..lora_args import COLUMNS, lora_stack, request_fields, split_cell
from .manifest_text import not_a_file, row_path


def lora_columns(values: dict, base: Path) -> dict:
    """Pop ``lora`` / ``lora_strength`` from a row's values (keys normalised) -> the request fields to set (none when the
    row has neither). ValueError names the column: a file not found, a strength that is no number, counts that do not
    match, a file given twice."""
    if "lora" not in values and "lora_strength" not in values:
        return {}
    files = []
    for item in split_cell(values.pop("lora", None)):
        path = row_path(item, base, "lora")
        problem = not_a_file(path)
        if problem:
            raise ValueError(f"lora: {path} {problem}")
        files.append(path)
    strengths = []
    for item in split_cell(values.pop("lora_strength", None)):
        try:
            strengths.append(float(str(item).strip()) if isinstance(item, str) else float(item))
        except (TypeError, ValueError):
            raise ValueError(f"lora_strength: '{item}' is not a number") from None
    try:
        lora, strength = request_fields(files, strengths, COLUMNS)
    except EchoMimicError as exc:
        raise ValueError(str(exc)) from None
    out = {"lora_strength": strength} if strengths or isinstance(lora, tuple) else {}  # else the request's default
    if lora is not None:
        out["lora"] = lora
    return out


def lora_key(req) -> tuple:
    """(lora, strength) of a V1/V2 row's weight key: a row with one adapter (or none) as before stacks existed, several
    as a tuple of files and a tuple of strengths (every adapter and strength: rows share a loaded set only when all agree)."""
    if req.lora is None or isinstance(req.lora, (str, Path)):
        return req.lora or "", req.lora_strength
    stack = lora_stack(req.lora, req.lora_strength)
    return tuple(p for p, _ in stack), tuple(s for _, s in stack)


def v3_lora_key(row) -> tuple:
    """The V3 weight key's LoRA part: ("lora", file, strength) per adapter, in order (one adapter: as before)."""
    return tuple(("lora", p, float(s)) for p, s in lora_stack(row.lora, row.lora_strength))
