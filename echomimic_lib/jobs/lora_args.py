"""The ``--lora`` / ``--lora-strength`` values of a job, for a stack of adapters: counts, duplicates, the request's fields
and a batch cell's items. No file is read and nothing heavy is imported (the command line checks before torch loads).

Given as ``--lora A --lora B`` with ``--lora-strength`` once (every adapter) or once per ``--lora`` in the same order,
as a batch row's ``lora`` cell of files separated by :data:`SEPARATOR` (``lora-strength`` likewise; a JSONL row may
give lists), or to the library as a list / tuple (a single string is one file, as before). :func:`lora_stack` checks
the counts and refuses a file given twice (give it once with the summed strength); :func:`request_fields` gives the
request's fields: one adapter stays ``(path, strength)`` exactly as before (the same batch fingerprint and weight
key), several become two tuples. Merging: :mod:`echomimic_lib.lora.stack`.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

from ..errors import EchoMimicError

SEPARATOR = ";"  # between files (and strengths) in a batch cell: not a path character on Linux or Windows in practice


class Names(NamedTuple):
    """How the messages name the two values (the command line's flags, or a manifest's columns)."""
    lora: str = "--lora"
    strength: str = "--lora-strength"
    per: str = "once per --lora, in the same order"


CLI = Names()
COLUMNS = Names("lora", "lora-strength", f"one value per file of the lora cell, separated by '{SEPARATOR}', in the same order")


def files_of(lora) -> tuple[str, ...]:
    """None / "" -> (); one path (str or Path) -> (path,); a list / tuple -> its non-empty items as strings."""
    if lora is None:
        return ()
    if isinstance(lora, (str, os.PathLike)):
        return (str(lora),) if str(lora).strip() else ()
    return tuple(str(p) for p in lora if p is not None and str(p).strip())


def strengths_of(strength) -> tuple:
    """None -> (); one number -> (number,); a list / tuple -> its items (unconverted: the caller checks them)."""
    if strength is None:
        return ()
    if isinstance(strength, (list, tuple)):
        return tuple(strength)
    return (strength,)


def _number(value, names: Names) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise EchoMimicError(f"{names.strength} must be a number, got {value!r}.") from None
    if not math.isfinite(out):
        raise EchoMimicError(f"{names.strength} must be a finite number, got {value!r}.")
    return out


def _same(a: str, b: str) -> bool:
    if os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b)):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def lora_stack(lora, strength, names: Names = CLI) -> list[tuple[str, float]]:
    """(file, strength) per adapter, in order; refuses a count of strengths that is neither 1 nor one per file, and a
    file given twice (the same path, or a link to it). Reads no file."""
    files, values = files_of(lora), [_number(v, names) for v in strengths_of(strength)]
    if not files:
        if len(values) > 1:
            raise EchoMimicError(f"{len(values)} {names.strength} values but no {names.lora} file: give the LoRA files "
                                 f"with {names.lora}, or drop {names.strength}.")
        return []
    if not values:
        values = [1.0]
    if len(values) == 1:
        values = values * len(files)
    elif len(values) != len(files):
        raise EchoMimicError(f"{len(files)} {names.lora} file(s) but {len(values)} {names.strength} values: give "
                             f"{names.strength} once (it applies to every LoRA) or {names.per}.")
    for i, a in enumerate(files):
        for j in range(i):
            if _same(files[j], a):
                raise EchoMimicError(
                    f"{names.lora} {a} is given twice (also as {files[j]}): a LoRA is applied once. For more of it, give it "
                    f"once with a larger {names.strength} (here {values[j]:g} + {values[i]:g} = {values[j] + values[i]:g}).")
    return list(zip(files, values))


def request_fields(lora, strength, names: Names = CLI) -> tuple:
    """A request's ``(lora, lora_strength)``: (None, the strength given, else 1.0) without a file; ``(path, strength)``
    for one file (as before stacks existed: the same fingerprint and weight key); two tuples for several."""
    stack = lora_stack(lora, strength, names)
    if not stack:
        given = strengths_of(strength)
        return None, (_number(given[0], names) if given else 1.0)
    if len(stack) == 1:
        return stack[0]
    return tuple(p for p, _ in stack), tuple(s for _, s in stack)


def split_cell(value) -> list:
    """A manifest cell -> its items: a JSON list as is, a string split at :data:`SEPARATOR` (blank items dropped), a
    number as one item."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [v for v in value if v is not None and str(v).strip()]
    if isinstance(value, str):
        return [v.strip() for v in value.split(SEPARATOR) if v.strip()]
    return [value]
