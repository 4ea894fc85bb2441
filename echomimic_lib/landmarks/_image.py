"""Input-image checks shared by the extractor and the preprocessing (RGB uint8, sane sizes)."""
from __future__ import annotations

import logging

import numpy as np

from ..errors import EchoMimicError

log = logging.getLogger(__name__)

MIN_SIDE = 64


def as_rgb_uint8(image, what: str = "image", min_side: int = MIN_SIDE) -> np.ndarray:
    """Return ``image`` as a contiguous uint8 (H, W, 3) RGB array.

    Grayscale (H, W) / (H, W, 1) is expanded to RGB, RGBA drops its alpha channel, float images in
    [0, 1] are scaled to 0..255. Anything else, or an image whose short side is under ``min_side``
    pixels, raises :class:`EchoMimicError` saying what to change.
    """
    if image is None:
        raise EchoMimicError(f"{what}: no image given.")
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise EchoMimicError(f"{what}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {arr.shape}.")
    if arr.size == 0:
        raise EchoMimicError(f"{what}: the image is empty (shape {arr.shape}).")
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise EchoMimicError(f"{what}: the image contains NaN or Inf values.")
            hi = float(arr.max())
            arr = np.clip(arr * (255.0 if hi <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
        elif arr.dtype.kind in "iub":
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        else:
            raise EchoMimicError(f"{what}: unsupported pixel type {arr.dtype}; use uint8 or float in [0, 1].")
    if arr.shape[2] == 1:
        log.info("%s: grayscale image expanded to RGB", what)
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        log.info("%s: RGBA image, alpha channel dropped", what)
        arr = arr[:, :, :3]
    h, w = arr.shape[:2]
    if min(h, w) < min_side:
        raise EchoMimicError(f"{what}: {w}x{h} px is too small to find a face; use an image of at least "
                             f"{min_side} px on its short side.")
    return np.ascontiguousarray(arr)
