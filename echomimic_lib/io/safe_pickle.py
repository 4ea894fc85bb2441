"""Allow-list unpickler for the pickle-based data files of the reference (pose `.npy`, landmark `.pkl`).

Only numpy arrays, numpy scalars/dtypes and plain Python containers can be rebuilt. Anything else
(`os.system`, `builtins.eval`, arbitrary classes) raises :class:`UnsafeFileError` naming the file and
the refused global, so a malicious file never runs code.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EchoMimicError, UnsafeFileError

_ALLOWED: dict[str, set[str]] = {
    "builtins": {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes", "bytearray", "slice", "range"},
    "collections": {"OrderedDict", "defaultdict"},
    "numpy": {"ndarray", "dtype", "float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "bool_"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy.core.numeric": {"_frombuffer"},
    "numpy._core.numeric": {"_frombuffer"},
    "_codecs": {"encode"},
}


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise UnsafeFileError(
            f"{self._source}: refused to load '{module}.{name}'. The file contains a pickled object outside the "
            "allow-list (numpy arrays, dicts, lists, numbers, strings); it could run code. Only use pose/landmark "
            "files from a trusted source, or convert them with a trusted tool."
        )


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with the allow-list."""
    try:
        return _AllowListUnpickler(io.BytesIO(data), source).load()
    except UnsafeFileError:
        raise
    except Exception as exc:  # truncated / corrupt pickle
        raise EchoMimicError(f"{source}: not a readable pickle file ({type(exc).__name__}: {exc}).") from exc


def load_pickle(path: str | Path) -> Any:
    """Read a ``.pkl`` file through the allow-list unpickler."""
    path = Path(path)
    return safe_loads(path.read_bytes(), str(path))


def load_npy(path: str | Path) -> Any:
    """Read a ``.npy`` file. Plain arrays load directly; object arrays (pickled dicts) go through the
    allow-list unpickler, never numpy's free unpickling. A 0-d object array returns the object it holds."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"PK":
        raise EchoMimicError(f"{path}: this is a .npz archive, not a .npy file.")
    buf = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            _shape, _fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        else:
            _shape, _fortran, dtype = np.lib.format.read_array_header_2_0(buf)
    except Exception as exc:
        raise EchoMimicError(f"{path}: not a valid .npy file ({exc}).") from exc
    if not dtype.hasobject:
        buf.seek(0)
        return np.load(buf, allow_pickle=False)
    obj = safe_loads(buf.read(), str(path))
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        return obj.item()
    return obj


__all__ = ["load_pickle", "load_npy", "safe_loads"]
