"""FVD (Fréchet Video Distance) between generated and real videos, with the user's I3D weights (:mod:`.i3d`), the
PyTorch FVD convention of VideoGPT: each video cut into clips of 16 consecutive frames (no overlap, the rest
dropped), each frame's shorter side resized to 224 (bilinear) and centre-cropped to 224 x 224, values scaled to
-1..1; a clip's feature is the I3D's 400 Kinetics logits; a Gaussian per set; the Fréchet distance in float64
(:mod:`.frechet`).

Like FID it is biased upwards for small sets (papers use hundreds of clips): compare FVDs of equal sizes only.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import EchoMimicError
from .frechet import frechet_between
from .i3d import I3D

CLIP = 16
SIZE = 224
BATCH = 4


def video_clips(frames, length: int = CLIP) -> list[np.ndarray]:
    """Consecutive, non-overlapping clips of ``length`` frames of one (F, H, W, 3) video."""
    frames = np.asarray(frames)
    return [frames[i:i + length] for i in range(0, len(frames) - length + 1, length)]


def preprocess(clip, size: int = SIZE) -> torch.Tensor:
    """(T, H, W, 3) RGB (uint8, or floats in 0..1) -> (3, T, size, size) in -1..1."""
    x = np.asarray(clip)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise EchoMimicError(f"FVD: a clip must be (T, H, W, 3) RGB, got shape {x.shape}.")
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    t = t.float() / 255.0 if x.dtype == np.uint8 else t.float().clamp(0, 1)
    h, w = t.shape[-2:]
    scale = size / min(h, w)
    t = F.interpolate(t, size=(max(size, math.ceil(h * scale)), max(size, math.ceil(w * scale))), mode="bilinear",
                      align_corners=False)
    top, left = (t.shape[-2] - size) // 2, (t.shape[-1] - size) // 2
    return (t[..., top:top + size, left:left + size] * 2 - 1).permute(1, 0, 2, 3).contiguous()


@torch.no_grad()
def i3d_features(net: I3D, clips, device: torch.device | str = "cpu", size: int = SIZE, batch: int = BATCH) -> np.ndarray:
    """(N, classes) float64 features of a list of (T, H, W, 3) clips."""
    out = []
    for i in range(0, len(clips), batch):
        x = torch.stack([preprocess(c, size) for c in clips[i:i + batch]]).to(device)
        out.append(net(x).double().cpu())
    return torch.cat(out).numpy()


def fvd(net: I3D, videos_a, videos_b, device: torch.device | str = "cpu", length: int = CLIP, size: int = SIZE) -> float:
    """FVD between two lists of (F, H, W, 3) videos, over their 16-frame clips; each side needs at least 2 clips."""
    sets = []
    for name, videos in (("generated", videos_a), ("real", videos_b)):
        clips = [c for v in videos for c in video_clips(v, length)]
        if len(clips) < 2:
            frames = sum(len(v) for v in videos)
            raise EchoMimicError(f"FVD needs at least 2 clips of {length} frames on each side; the {name} videos give "
                                 f"{len(clips)} ({frames} frames).")
        sets.append(i3d_features(net, clips, device, size))
    return frechet_between(*sets)
