"""The official EchoMimicV3 colour transfer (applied to every video the official CLI saves).

Each frame after the first is converted to 8-bit LAB (OpenCV), its per-channel mean and std (``cv2.meanStdDev``,
rounded to 2 decimals) are matched to those of frame 0 (``(x - mean_s) * std_t / std_s + mean_t`` in
float64, clipped to [0, 255], rounded and saturated by ``cv2.convertScaleAbs``), and converted back to RGB.
Deviation: a channel with zero spread in a frame is left as is instead of dividing by zero.
"""
from __future__ import annotations

import numpy as np


def _stats(lab: np.ndarray):
    import cv2

    mean, std = cv2.meanStdDev(lab)
    return np.hstack(np.around(mean, 2)), np.hstack(np.around(std, 2))


def color_transfer(frames_u8: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB -> same with frames 1.. colour-matched to frame 0 (frame 0 unchanged)."""
    import cv2

    out = np.array(frames_u8, copy=True)
    t_mean, t_std = _stats(cv2.cvtColor(np.ascontiguousarray(frames_u8[0]), cv2.COLOR_RGB2LAB))
    for i in range(1, frames_u8.shape[0]):
        lab = cv2.cvtColor(np.ascontiguousarray(frames_u8[i]), cv2.COLOR_RGB2LAB)
        s_mean, s_std = _stats(lab)
        s_std = np.where(s_std == 0, 1.0, s_std)  # a flat channel: the official divides by zero (NaN); keep it flat
        x = np.clip((lab - s_mean) * (t_std / s_std) + t_mean, 0, 255)
        out[i] = cv2.cvtColor(cv2.convertScaleAbs(x), cv2.COLOR_LAB2RGB)
    return out
