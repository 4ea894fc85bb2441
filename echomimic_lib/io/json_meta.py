"""The JSON header of a file the project writes (pose and landmark ``.npz`` files, the gesture index, a long render's
kept chunks, a prepared training clip): made before anything is written, so a value JSON cannot hold fails with a
clear error naming the file and the field, and no file is left half written.

numpy scalars and arrays, paths and tuples become their plain JSON form (``np.float32(25.0)`` -> ``25.0``); NaN and the
infinities (which JSON has no word for, and which ``json.dumps`` would write as the non-standard ``NaN``) and any other
object are refused."""
from __future__ import annotations

import json
import math
from pathlib import Path, PurePath

import numpy as np

from ..errors import EchoMimicError


class MetadataError(EchoMimicError):
    """A metadata value a file cannot keep (named with its file and field)."""


def _plain(value, field: str, where: str):
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MetadataError(f"{where}: metadata field '{field}' is {value}, which a JSON header cannot hold; this is "
                                "a bug in what made the value (give a finite number). Nothing was written.")
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = k.item() if isinstance(k, np.generic) else k
            if not isinstance(key, str):
                raise MetadataError(f"{where}: metadata field '{field}' has the key {k!r} ({type(k).__name__}); a JSON "
                                    "header takes text keys only. Nothing was written.")
            out[key] = _plain(v, f"{field}.{key}" if field else key, where)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{field}[{i}]", where) for i, v in enumerate(value)]
    raise MetadataError(f"{where}: metadata field '{field}' is a {type(value).__name__} ({value!r:.60}), which a JSON "
                        "header cannot hold (give a number, text, or a list of them). Nothing was written.")


def plain_meta(meta: dict, path: str | Path):
    """``meta`` with every value in its plain JSON form (see the module); :class:`MetadataError` names ``path`` and the
    field of a value that has none."""
    return _plain(meta, "", str(path))


def meta_json(meta: dict, path: str | Path, **dumps) -> str:
    """``json.dumps`` of :func:`plain_meta` (strict: no NaN), for the header of ``path``."""
    return json.dumps(plain_meta(meta, path), allow_nan=False, **dumps)
