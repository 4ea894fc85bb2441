"""Allow-list unpickler for the pickle-based data files of the reference (pose `.npy`, landmark `.pkl`).

Only numpy arrays, numpy scalars/dtypes and plain Python containers can be rebuilt. Anything else
(`os.system`, `builtins.eval`, arbitrary classes) raises :class:`UnsafeFileError` naming the file and
the refused global, so a malicious file never runs code.

Nor can a few bytes exhaust memory: ``range`` (a lazy ``set(range(10**10))``) is not on the list, ``bytes(n)`` /
``bytearray(n)`` of a count is refused, an array's declared size is checked before numpy allocates it, and every
allowed call that builds from an iterable (``list(x)``, ``set(x)``, ``encode(s)`` on a memoised ``x`` again and again)
spends a budget of elements proportional to the file's size (:data:`BUDGET_PER_BYTE` each byte, at least
:data:`MIN_BUDGET`).
"""
from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EchoMimicError, UnsafeFileError

_ALLOWED: dict[str, set[str]] = {
    "builtins": {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes", "bytearray", "slice"},
    "collections": {"OrderedDict", "defaultdict"},
    "numpy": {"ndarray", "dtype", "float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "bool_"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy.core.numeric": {"_frombuffer"},
    "numpy._core.numeric": {"_frombuffer"},
    "_codecs": {"encode"},
}


_ENCODINGS = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "utf-8", "utf8"}  # what numpy's pickles use (latin1)
BUDGET_PER_BYTE = 2  # elements any allowed calls may build, per byte of the pickle
MIN_BUDGET = 1 << 20


class BudgetGuard:
    """An allowed callable as the pickle sees it: each call first spends the unpickler's budget on its inputs (the
    unpickler has ``spend(n, what)`` and ``refuse(what)``; the trainer's checkpoint-index unpickler uses it too)."""

    def __init__(self, fn, unpickler, name: str):
        self.fn, self.unpickler, self.name = fn, unpickler, name

    def __call__(self, *args, **kwargs):
        u = self.unpickler
        args = tuple(a.fn if isinstance(a, BudgetGuard) else a for a in args)  # _reconstruct(ndarray, ...): the real class
        if self.name in ("bytes", "bytearray") and args and isinstance(args[0], int) and not isinstance(args[0], bool):
            u.refuse(f"{self.name}({args[0]}) (a count, not data)")
        if self.name in ("ndarray", "_reconstruct"):  # numpy allocates the declared shape (ndarray.__new__)
            rest = args[1:] if self.name == "_reconstruct" else args  # (subtype,) shape, dtype
            shape, dtype = rest[0] if rest else (), rest[1] if len(rest) > 1 else float
            shape = (shape,) if isinstance(shape, int) else tuple(shape)
            u.spend(math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize, f"an array of shape {shape}")
        elif self.name == "str" and args and not isinstance(args[0], (str, bytes, bytearray)):
            u.refuse(f"str() of a {type(args[0]).__name__} (its text could be far larger than the file)")
        elif self.name == "encode" and str(args[1] if len(args) > 1 else kwargs.get("encoding", "utf-8")).lower() not in _ENCODINGS:
            u.refuse(f"_codecs.encode(..., {args[1]!r})")
        for a in (*args, *kwargs.values()):
            if isinstance(a, np.ndarray):
                u.spend(a.nbytes, f"{self.name}() of an array of {a.nbytes} bytes")
            elif isinstance(a, (str, bytes, bytearray, list, tuple, dict, set, frozenset)):
                u.spend(len(a), f"{self.name}() of {len(a)} items")
        return self.fn(*args, **kwargs)


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str, size: int = 0):
        super().__init__(file, encoding="latin1")
        self._source = source
        self.budget = max(MIN_BUDGET, BUDGET_PER_BYTE * size)

    def spend(self, n: int, what: str) -> None:
        self.budget -= n
        if self.budget < 0:
            self.refuse(f"{what}, past the building budget of {BUDGET_PER_BYTE} elements per byte of the file (at least "
                        f"{MIN_BUDGET}; a pickle bomb?)")

    def refuse(self, what: str) -> None:
        raise UnsafeFileError(f"{self._source}: refused to build {what}; a data file never needs it and it could exhaust "
                              "memory. Only use pose/landmark files from a trusted source, or convert them with a trusted tool.")

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        if name in _ALLOWED.get(module, ()):
            found = super().find_class(module, name)
            return found if name in _PLAIN else BudgetGuard(found, self, name)
        raise UnsafeFileError(
            f"{self._source}: refused to load '{module}.{name}'. The file contains a pickled object outside the "
            "allow-list (numpy arrays, dicts, lists, numbers, strings); it could run code. Only use pose/landmark "
            "files from a trusted source, or convert them with a trusted tool."
        )


_PLAIN = {"int", "float", "complex", "bool", "slice"}  # a number from a number: nothing to amplify


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with the allow-list."""
    try:
        return _AllowListUnpickler(io.BytesIO(data), source, len(data)).load()
    except UnsafeFileError:
        raise
    except Exception as exc:  # truncated / corrupt pickle
        raise EchoMimicError(f"{source}: not a readable pickle file ({type(exc).__name__}: {exc}).") from exc


MAX_FRAME_FILE_BYTES = 64 << 20  # a released pose frame (.npy) or landmark frame (.pkl) holds a few KB


def read_frame_file(path: str | Path, limit: int = MAX_FRAME_FILE_BYTES) -> bytes:
    """The bytes of one small data file (a pose ``.npy`` / landmark ``.pkl`` frame), read whole only when it is a
    regular file of at most ``limit`` bytes: a named pipe among the frames is never waited on (it hung the reader), a
    link to a device (``/dev/zero``) never read (it filled the memory), a folder, a missing file or a file far past
    any frame's size said as such, with the path and the fix."""
    import os
    import stat

    from .os_errors import not_file_text, refused

    fix = "give the frame files themselves (0.npy, 1.npy, ... / 0.pkl, 1.pkl, ...), or take the folder from its source again"
    if problem := not_file_text(path):
        raise EchoMimicError(f"{path}: {problem}; {fix}.")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):  # (replaced by a pipe or a device since it was looked at)
                raise EchoMimicError(f"{path}: is not a regular file (a pipe or a device); {fix}.")
            if st.st_size > limit:
                raise EchoMimicError(f"{path}: {st.st_size} bytes, far past any frame file (a few KB; at most {limit}): "
                                     f"not a frame file, so it is not read; {fix}.")
            data = fh.read(limit + 1)
    except OSError as exc:
        raise (refused(exc, path) or EchoMimicError(f"{path}: cannot be read ({exc}); {fix}.")) from None
    if len(data) > limit:  # (grew while read)
        raise EchoMimicError(f"{path}: past {limit} bytes, far past any frame file: not read; {fix}.")
    return data


def load_pickle(path: str | Path) -> Any:
    """Read a ``.pkl`` file through the allow-list unpickler (:func:`read_frame_file`: a small regular file only)."""
    path = Path(path)
    return safe_loads(read_frame_file(path), str(path))


def load_npy(path: str | Path) -> Any:
    """Read a ``.npy`` file. Plain arrays load directly; object arrays (pickled dicts) go through the
    allow-list unpickler, never numpy's free unpickling. A 0-d object array returns the object it holds."""
    path = Path(path)
    raw = read_frame_file(path)
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
        declared, held = math.prod(_shape) * dtype.itemsize, len(raw) - buf.tell()
        if declared > held:  # numpy allocates the declared shape before reading a buffer
            raise EchoMimicError(f"{path}: its header declares {declared} bytes of {dtype} (shape {_shape}) but the file holds "
                                 f"{held}: cut off or not a real array file; copy it again from its source.")
        buf.seek(0)
        return np.load(buf, allow_pickle=False)
    obj = safe_loads(buf.read(), str(path))
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        return obj.item()
    return obj


__all__ = ["MAX_FRAME_FILE_BYTES", "load_pickle", "load_npy", "read_frame_file", "safe_loads"]
