"""Opt-in colour matching of a generated region to the original picture (paste-back).

Only the pixels inside ``mask`` are measured; the caller blends only inside its region, so nothing outside
it changes. Methods:

- ``"lab"``: per-channel mean and standard deviation in CIE L*a*b* (OpenCV's float conversion, D65),
  the generated region's statistics moved onto the original's (Reinhard-style transfer);
- ``"histogram"``: per-channel (RGB) histogram matching: each generated value is mapped to the original
  value of the same rank inside the region;
- ``"off"``: unchanged.
"""
from __future__ import annotations

import numpy as np

from .._lazy import cv2
from ..errors import EchoMimicError

METHODS = ("off", "lab", "histogram")
MIN_PIXELS = 16


def _lab_transfer(src: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
    s = cv2.cvtColor(src.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    r = cv2.cvtColor(ref.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    sv, rv = s[mask], r[mask]
    mu_s, sd_s = sv.mean(axis=0), sv.std(axis=0)
    mu_r, sd_r = rv.mean(axis=0), rv.std(axis=0)
    gain = np.where(sd_s > 1e-3, sd_r / np.maximum(sd_s, 1e-3), 1.0)
    out = (s - mu_s) * gain + mu_r
    rgb = cv2.cvtColor(out.astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _histogram_transfer(src: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(src)
    levels = np.arange(256, dtype=np.float64)
    for c in range(3):
        hs = np.bincount(src[..., c][mask], minlength=256).astype(np.float64)
        hr = np.bincount(ref[..., c][mask], minlength=256).astype(np.float64)
        cs, cr = np.cumsum(hs) / hs.sum(), np.cumsum(hr) / hr.sum()
        lut = np.interp(cs, cr, levels)
        out[..., c] = np.clip(np.round(lut), 0, 255).astype(np.uint8)[src[..., c]]
    return out


def match_colors(generated: np.ndarray, original: np.ndarray, mask: np.ndarray, method: str = "lab") -> np.ndarray:
    """``generated`` (h, w, 3) uint8 with its colours matched to ``original`` (same shape) over ``mask`` (h, w) bool."""
    if method not in METHODS:
        raise EchoMimicError(f"unknown colour matching '{method}'; choose one of {', '.join(METHODS)}.")
    gen, ref = np.asarray(generated), np.asarray(original)
    if gen.shape != ref.shape or gen.ndim != 3 or gen.shape[2] != 3 or gen.dtype != np.uint8 or ref.dtype != np.uint8:
        raise EchoMimicError(f"colour matching needs two uint8 (h, w, 3) pictures of one size, got {gen.shape} {gen.dtype} "
                             f"and {ref.shape} {ref.dtype}.")
    mask = np.asarray(mask, dtype=bool)
    if method == "off" or int(mask.sum()) < MIN_PIXELS:
        return gen
    return _lab_transfer(gen, ref, mask) if method == "lab" else _histogram_transfer(gen, ref, mask)
