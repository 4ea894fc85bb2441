"""Integrated loudness (ITU-R BS.1770-4) and loudness normalisation, as EchoMimicV3 flash-pro applies it.

The official code normalises the whole 16 kHz clip to -23 LUFS with ``pyloudnorm`` before cutting it to
the video length, and leaves it unchanged when the measured loudness is beyond +-100 (a clip whose every
400 ms block is under the -70 LUFS gate measures -inf). Same algorithm here, same constants:
K-weighting = RBJ high shelf (+4 dB, Q 1/sqrt(2), 1500 Hz) then RBJ high pass (Q 0.5, 38 Hz), filtered
samples stored in the input's float type, 400 ms blocks with 75 % overlap (``round((T - 0.4) / 0.1) + 1``
blocks), absolute gate -70 LUFS, relative gate -10 LU, loudness ``-0.691 + 10 log10(mean square)``.
Deviation: a clip shorter than one 400 ms block (pyloudnorm raises) is returned unchanged.
"""
from __future__ import annotations

import numpy as np

TARGET_LUFS = -23.0
BLOCK_S = 0.4
OVERLAP = 0.75


def _biquad(kind: str, gain_db: float, q: float, fc: float, rate: float) -> tuple[np.ndarray, np.ndarray]:
    a_ = 10 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * (fc / rate)
    alpha = np.sin(w0) / (2.0 * q)
    c = np.cos(w0)
    if kind == "high_shelf":
        s = 2 * np.sqrt(a_) * alpha
        b = [a_ * ((a_ + 1) + (a_ - 1) * c + s), -2 * a_ * ((a_ - 1) + (a_ + 1) * c), a_ * ((a_ + 1) + (a_ - 1) * c - s)]
        a = [(a_ + 1) - (a_ - 1) * c + s, 2 * ((a_ - 1) - (a_ + 1) * c), (a_ + 1) - (a_ - 1) * c - s]
    else:  # high_pass
        b = [(1 + c) / 2, -(1 + c), (1 + c) / 2]
        a = [1 + alpha, -2 * c, 1 - alpha]
    return np.array(b) / a[0], np.array(a) / a[0]


def integrated_loudness(samples: np.ndarray, rate: int = 16000) -> float:
    """Gated integrated loudness of a mono clip in LUFS (-inf when every block is under -70 LUFS)."""
    from scipy.signal import lfilter

    x = np.array(samples, copy=True)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError("loudness: samples must be floating point")
    for stage in (("high_shelf", 4.0, 1 / np.sqrt(2), 1500.0), ("high_pass", 0.0, 0.5, 38.0)):
        b, a = _biquad(stage[0], *stage[1:], rate)
        x[:] = lfilter(b, a, x)  # stored back in the input dtype, as the reference does
    n_blocks = int(np.round(((x.shape[0] / rate - BLOCK_S) / (BLOCK_S * (1 - OVERLAP))))) + 1
    z = np.zeros(n_blocks)
    for j in range(n_blocks):
        lo = int(BLOCK_S * (j * (1 - OVERLAP)) * rate)
        hi = int(BLOCK_S * (j * (1 - OVERLAP) + 1) * rate)
        z[j] = (1.0 / (BLOCK_S * rate)) * np.sum(np.square(x[lo:hi]))
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(z)
        gated = z[block_lufs >= -70.0]
        if gated.size == 0:
            return float("-inf")
        rel = -0.691 + 10.0 * np.log10(np.mean(gated)) - 10.0
        keep = z[(block_lufs > rel) & (block_lufs > -70.0)]
        return float(-0.691 + 10.0 * np.log10(np.mean(keep) if keep.size else 0.0))


def loudness_normalise(samples: np.ndarray, rate: int = 16000, target: float = TARGET_LUFS) -> np.ndarray:
    """Scale the clip to ``target`` LUFS; unchanged if it measures beyond +-100 LUFS or is under 400 ms.
    The gain is a float64 scalar, so float32 input comes back as float64 (as with numpy 2 in the official)."""
    if samples.shape[0] < BLOCK_S * rate:
        return samples
    lufs = integrated_loudness(samples, rate)
    if abs(lufs) > 100:
        return samples
    return np.power(10.0, (target - lufs) / 20.0) * samples
