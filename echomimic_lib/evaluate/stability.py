"""Temporal stability: landmark jitter per face part, background flicker, face-detection rate.

- Jitter: the landmarks are stabilised (head motion removed by a similarity fit of rigid points to the
  sequence's median shape, in units of the eye-corner distance), then the second difference
  ``x[t+1] - 2 x[t] + x[t-1]`` of every point is taken; a part's jitter is the mean length of that
  acceleration over its points and frames, in percent of the eye-corner distance per frame^2. Smooth motion
  scores low, frame-to-frame trembling high.
- Flicker: mean absolute change of the pixel values (0-255) between consecutive frames, over the pixels
  outside the face region of both frames (the face mesh hull, grown by a quarter); with no face region
  known, over the whole frame.
- Face rate: the fraction of frames in which exactly one face was found.
"""
from __future__ import annotations

import numpy as np

from ..errors import EchoMimicError
from ..landmarks.parts import MOTION_PARTS
from .face import OVAL, stabilise

PARTS: dict[str, list[int]] = {**{k: list(v) for k, v in MOTION_PARTS.items()}, "face_oval": OVAL}


def landmark_jitter(px: np.ndarray) -> dict[str, float]:
    """Jitter per part (``PARTS``) and ``"all"`` (mean over every mesh point of those parts)."""
    px = np.asarray(px, dtype=np.float64)
    if px.ndim != 3 or len(px) < 3:
        raise EchoMimicError(f"jitter needs at least 3 frames of (N, 2) landmarks, got shape {px.shape}.")
    st = stabilise(px)
    acc = np.linalg.norm(st[2:] - 2 * st[1:-1] + st[:-2], axis=-1) * 100.0  # (F-2, N), percent of the eye distance
    out = {name: float(acc[:, idx].mean()) for name, idx in PARTS.items()}
    every = sorted({i for idx in PARTS.values() for i in idx})
    return {"all": float(acc[:, every].mean()), **out}


class Flicker:
    """:func:`background_flicker` as running sums, fed one frame at a time (with its face mask, or None), so a long
    video is scored holding only the previous frame and its mask."""

    def __init__(self):
        self.total, self.count, self.pairs = 0.0, 0, 0
        self._prev = self._prev_mask = None

    def add(self, frame: np.ndarray, mask: np.ndarray | None = None) -> None:
        frame = np.asarray(frame)
        mask = None if mask is None else np.asarray(mask, dtype=bool)
        if self._prev is not None:
            scale = 255.0 if frame.dtype.kind == "f" else 1.0
            diff = np.abs(frame.astype(np.float32) - self._prev.astype(np.float32)).mean(axis=-1) * scale
            if mask is None:
                keep = np.ones(diff.shape, dtype=bool)
            else:
                keep = ~(self._prev_mask | mask)
            self.total += float(diff[keep].sum())
            self.count += int(keep.sum())
            self.pairs += 1
        self._prev, self._prev_mask = frame, mask

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")


def background_flicker(frames: np.ndarray, face_masks: np.ndarray | None = None) -> float:
    """Mean |frame[t+1] - frame[t]| (0-255 levels) outside the face region of both frames.

    ``frames``: (F, H, W, 3) uint8 (or float in 0..1); ``face_masks``: (F, H, W) or (H, W) bool, or None."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) < 2:
        raise EchoMimicError(f"flicker needs at least 2 frames (F, H, W, 3), got shape {frames.shape}.")
    masks = None if face_masks is None else np.asarray(face_masks, dtype=bool)
    acc = Flicker()
    for i, frame in enumerate(frames):
        acc.add(frame, None if masks is None else masks if masks.ndim == 2 else masks[i])
    return acc.value


def face_rate(valid) -> float:
    """Fraction of frames with exactly one face found (``LandmarkSequence.valid``)."""
    valid = np.asarray(valid, dtype=bool)
    return float(valid.mean()) if valid.size else float("nan")
