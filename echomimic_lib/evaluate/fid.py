"""FID (Fréchet Inception Distance) between generated frames and real frames, with the user's Inception weights
(:mod:`.inception`): each frame's 2048-d pool features (299 x 299, bilinear, -1..1), a Gaussian per set, the Fréchet
distance in float64 (:mod:`.frechet`).

FID is biased upwards for small sets: the papers' numbers come from thousands of frames (EchoMimic V1: HDTF test
videos). With a few hundred frames compare FIDs of the same sizes only (settings, checkpoints), not with papers.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import EchoMimicError
from .frechet import frechet_between
from .inception import InceptionV3

BATCH = 16
FEW_SAMPLES = 2048  # below as many samples as feature dimensions the covariance is rank-deficient


def _as_float(frames) -> torch.Tensor:
    x = np.asarray(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or len(x) == 0:
        raise EchoMimicError(f"FID: frames must be a non-empty (N, H, W, 3) RGB array, got shape {x.shape}.")
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    return t.float() / 255.0 if x.dtype == np.uint8 else t.float().clamp(0, 1)


class InceptionFeed:
    """:func:`inception_features` fed one frame at a time (``add``): each batch runs when it is full, so only
    ``batch`` frames are held; ``features()`` after the last frame."""

    def __init__(self, net: InceptionV3, device: torch.device | str = "cpu", batch: int = BATCH):
        self.net, self.device, self.batch = net, device, batch
        self.pending: list[np.ndarray] = []
        self.out: list[torch.Tensor] = []
        self.count = 0

    def add(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if not self.count:
            _as_float(frame[None])  # shape check before any work
        self.pending.append(frame)
        self.count += 1
        if len(self.pending) == self.batch:
            self._run()

    @torch.no_grad()
    def _run(self) -> None:
        if self.pending:
            self.out.append(self.net(_as_float(np.stack(self.pending)).to(self.device)).double().cpu())
            self.pending = []

    def features(self) -> np.ndarray:
        """(N, 2048) float64 pool features of the frames added."""
        self._run()
        if not self.out:
            raise EchoMimicError("FID: no frames to compute features of.")
        return torch.cat(self.out).numpy()


def inception_features(net: InceptionV3, frames, device: torch.device | str = "cpu", batch: int = BATCH) -> np.ndarray:
    """(N, 2048) float64 pool features of (N, H, W, 3) RGB frames (uint8, or floats in 0..1)."""
    frames = np.asarray(frames)
    _as_float(frames[:1])  # shape check before any work
    feed = InceptionFeed(net, device, batch)
    for frame in frames:
        feed.add(frame)
    return feed.features()


def check_sizes(generated: int, real: int) -> None:
    """FID needs at least 2 frames on each side."""
    for name, n in (("generated", generated), ("real", real)):
        if n < 2:
            raise EchoMimicError(f"FID needs at least 2 {name} frames; got {n}.")


def fid(net: InceptionV3, frames_a, frames_b, device: torch.device | str = "cpu") -> float:
    """FID between two sets of RGB frames (N, H, W, 3); each set needs at least 2 frames."""
    check_sizes(len(frames_a), len(frames_b))
    return frechet_between(inception_features(net, frames_a, device), inception_features(net, frames_b, device))
