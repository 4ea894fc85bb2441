"""Opening a ``.npz`` archive a user (or a workflow) hands us without trusting it.

An ``.npz`` is a zip of ``.npy`` members. A few kilobytes of deflate can unpack to gigabytes (a zip bomb), and a
member's header can declare any shape, which numpy allocates before it reads a byte; either exhausts the memory of
the process (a ComfyUI server included). :func:`open_npz` checks, before any member is read, every member's unpacked
size (the zip entry's ``file_size``, which bounds what :mod:`zipfile` yields) and every ``.npy`` header's
shape x itemsize against a cap, and refuses object arrays (pickles) outright; it then returns numpy's own
``NpzFile`` opened with ``allow_pickle=False``.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError, UnsafeFileError

# The largest file this package writes for the longest video a job accepts (100,000 frames): a landmark sequence
# with its 3-D mesh, about 2 GB unpacked. Past this, a file is not ours (or was tampered with).
MAX_NPZ_BYTES = 4 << 30


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # not reached


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str):
    """``(shape, dtype)`` from a member's ``.npy`` header (at most numpy's header limit is read)."""
    fmt = np.lib.format
    try:
        with zf.open(info) as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, dtype = fmt.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _fortran, dtype = fmt.read_array_header_2_0(fh)
            else:
                raise ValueError(f".npy format version {version[0]}.{version[1]}, which numpy.savez never writes")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
        raise EchoMimicError(f"{where}: member {info.filename} is not a readable array ({exc}).") from None
    return shape, dtype


def check_npz(path: str | Path, fix: str, limit: int | None = None) -> None:
    """Refuse ``path`` unless every member fits the cap and holds no object array; reads headers only.

    ``fix`` ends the message (what to do instead, e.g. "extract it again with `echomimic landmarks`")."""
    path = Path(path)
    limit = MAX_NPZ_BYTES if limit is None else limit
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                claim = info.file_size
                if info.filename.endswith(".npy") and claim <= limit:
                    shape, dtype = _npy_header(zf, info, str(path))
                    if dtype.hasobject:
                        raise UnsafeFileError(f"{path}: member {info.filename} holds Python objects (a pickle), which "
                                              f"this format never contains; refusing to load it. {fix}")
                    claim = max(claim, math.prod(shape) * dtype.itemsize)
                total += claim
                if claim > limit or total > limit:
                    raise EchoMimicError(
                        f"{path}: member {info.filename} unpacks to {_size(claim)} ({_size(total)} so far; this file is "
                        f"{_size(path.stat().st_size)} on disk), over the {_size(limit)} any file of this kind holds: not "
                        f"a file this package wrote (a zip bomb?), so it is not read. {fix}")
    except zipfile.BadZipFile:
        return  # not a zip: numpy's own reading refuses it as before (a plain .npy is read from disk, never inflated)


def open_npz(path: str | Path, fix: str, limit: int | None = None):
    """:func:`check_npz`, then numpy's ``NpzFile`` (``allow_pickle=False``; use it as a context manager)."""
    check_npz(path, fix, limit)
    return np.load(path, allow_pickle=False)


__all__ = ["MAX_NPZ_BYTES", "check_npz", "open_npz"]
