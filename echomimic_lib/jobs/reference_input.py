"""The ``--reference`` image of an animate job: read (every readable kind, the others named) and, for V1/V2, big enough."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EchoMimicError

REFERENCE_KINDS = {None: "a portrait (V1) or half-body (V2) image file",
                   "v3": "an image file of the person, face to half body (V3)"}


def read_reference(path, version: str | None = None) -> np.ndarray:
    """RGB uint8 of ``--reference`` (:mod:`echomimic_lib.io.image_file`: a HEIC photo, an empty file, a video... named);
    ``version`` "v3": a missing file's message says what EchoMimicV3 takes."""
    from ..io.image_file import read_image_file

    return read_image_file(check_reference_file(path, version), "--reference")


def check_reference_file(path, version: str | None = None) -> Path:
    """``--reference`` as a Path, refused unless a regular file, saying what it is instead from ``stat`` alone (a named
    pipe is never opened: reading it would wait for a writer)."""
    import stat

    from ..io.os_errors import missing_text

    p = Path(path)
    try:
        mode = p.stat().st_mode
    except (OSError, ValueError):  # missing, a link to nothing (the reader names a permission problem itself)
        mode = None
    if mode is not None and stat.S_ISREG(mode):
        return p
    what = (missing_text(p) if mode is None else "is a folder, not an image" if stat.S_ISDIR(mode)
            else "is a named pipe (FIFO), not an image file" if stat.S_ISFIFO(mode)
            else "is a device, not an image file" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "is not a regular file (a socket?)")
    raise EchoMimicError(f"--reference {p}: {what}; give {REFERENCE_KINDS[version]} (png, jpg, webp, ...).")


def check_reference_size(image: np.ndarray, path) -> None:
    """V1/V2 need a short side of 64 px or more (found here, not after the weights have loaded)."""
    from ..landmarks._image import MIN_SIDE

    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise EchoMimicError(f"--reference {path}: {w}x{h} px is too small; EchoMimic needs at least {MIN_SIDE} px on the "
                             "short side (it renders at 512 px or more): give a larger image.")
