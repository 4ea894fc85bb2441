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


@torch.no_grad()
def inception_features(net: InceptionV3, frames, device: torch.device | str = "cpu", batch: int = BATCH) -> np.ndarray:
    """(N, 2048) float64 pool features of (N, H, W, 3) RGB frames (uint8, or floats in 0..1)."""
    frames = np.asarray(frames)
    _as_float(frames[:1])  # shape check before any work
    out = [net(_as_float(frames[i:i + batch]).to(device)).double().cpu() for i in range(0, len(frames), batch)]
    return torch.cat(out).numpy()


def fid(net: InceptionV3, frames_a, frames_b, device: torch.device | str = "cpu") -> float:
    """FID between two sets of RGB frames (N, H, W, 3); each set needs at least 2 frames."""
    for name, f in (("generated", frames_a), ("real", frames_b)):
        if len(f) < 2:
            raise EchoMimicError(f"FID needs at least 2 {name} frames; got {len(f)}.")
    return frechet_between(inception_features(net, frames_a, device), inception_features(net, frames_b, device))
