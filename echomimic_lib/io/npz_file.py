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
        _check_plain_npy(path, fix, limit)  # not a zip: a plain .npy (numpy reads it too), or numpy refuses it as before


def _check_plain_npy(path: Path, fix: str, limit: int) -> None:
    """A ``.npy`` under an ``.npz`` name: numpy allocates its header's shape before reading a byte, so a header that
    declares more than the file holds (or than the cap) is refused here, by its header alone."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            if fh.read(len(fmt.MAGIC_PREFIX)) != fmt.MAGIC_PREFIX:
                return  # neither a zip nor a .npy: numpy's own reading refuses it
            fh.seek(0)
            version = fmt.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version[0]}.{version[1]}, which numpy.save never writes for it")
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _fortran, dtype = read_header(fh)
            held = max(path.stat().st_size - fh.tell(), 0)
    except (ValueError, OSError, EOFError) as exc:
        raise EchoMimicError(f"{path}: a .npy file (not an .npz archive) whose header cannot be read ({exc}). {fix}") from None
    if dtype.hasobject:
        raise UnsafeFileError(f"{path}: a .npy file of Python objects (a pickle), which this format never contains; refusing "
                              f"to load it. {fix}")
    declared = math.prod(shape) * dtype.itemsize
    if declared > held:
        raise EchoMimicError(f"{path}: a .npy file (not an .npz archive) whose header declares {_size(declared)} (shape "
                             f"{shape}, {dtype}) but the file holds {_size(held)}: cut off, or not a file this package "
                             f"wrote, so it is not read. {fix}")
    if declared > limit:
        raise EchoMimicError(f"{path}: a .npy file of {_size(declared)}, over the {_size(limit)} any file of this kind "
                             f"holds: not a file this package wrote, so it is not read. {fix}")


def open_npz(path: str | Path, fix: str, limit: int | None = None):
    """:func:`check_npz`, then numpy's ``NpzFile`` (``allow_pickle=False``; use it as a context manager)."""
    check_npz(path, fix, limit)
    return np.load(path, allow_pickle=False)


__all__ = ["MAX_NPZ_BYTES", "check_npz", "open_npz"]
