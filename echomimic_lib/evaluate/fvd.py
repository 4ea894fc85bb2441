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


class I3DFeed:
    """:func:`i3d_features` of a video's (or several videos') clips, fed one frame at a time (``add``; ``end_video()``
    between videos): a clip is preprocessed when its ``length`` frames are in and the I3D runs every ``batch`` clips,
    so a clip's frames and a batch of preprocessed clips are held; ``features()`` after the last frame."""

    def __init__(self, net: I3D, device: torch.device | str = "cpu", length: int = CLIP, size: int = SIZE,
                 batch: int = BATCH):
        self.net, self.device, self.length, self.size, self.batch = net, device, length, size, batch
        self.frames: list[np.ndarray] = []
        self.clips: list[torch.Tensor] = []
        self.out: list[torch.Tensor] = []
        self.count = self.frame_count = 0

    def add(self, frame: np.ndarray) -> None:
        self.frames.append(np.asarray(frame))
        self.frame_count += 1
        if len(self.frames) == self.length:
            self.clips.append(preprocess(np.stack(self.frames), self.size))
            self.frames, self.count = [], self.count + 1
            if len(self.clips) == self.batch:
                self._run()

    def end_video(self) -> None:
        """The frames since the last whole clip are dropped (clips never span two videos)."""
        self.frames = []

    @torch.no_grad()
    def _run(self) -> None:
        if self.clips:
            self.out.append(self.net(torch.stack(self.clips).to(self.device)).double().cpu())
            self.clips = []

    def features(self) -> np.ndarray:
        """(clips, classes) float64 features."""
        self._run()
        return torch.cat(self.out).numpy() if self.out else np.zeros((0, 0))


def check_sizes(clips_a: int, frames_a: int, clips_b: int, frames_b: int, length: int = CLIP) -> None:
    """FVD needs at least 2 clips on each side (``frames_*``: the frames they came from, for the message)."""
    for name, clips, frames in (("generated", clips_a, frames_a), ("real", clips_b, frames_b)):
        if clips < 2:
            raise EchoMimicError(f"FVD needs at least 2 clips of {length} frames on each side; the {name} videos give "
                                 f"{clips} ({frames} frames).")


def fvd(net: I3D, videos_a, videos_b, device: torch.device | str = "cpu", length: int = CLIP, size: int = SIZE) -> float:
    """FVD between two lists of (F, H, W, 3) videos, over their 16-frame clips; each side needs at least 2 clips."""
    sets = []
    for videos in (videos_a, videos_b):
        clips = [c for v in videos for c in video_clips(v, length)]
        sets.append((clips, sum(len(v) for v in videos)))
    check_sizes(len(sets[0][0]), sets[0][1], len(sets[1][0]), sets[1][1], length)
    return frechet_between(*(i3d_features(net, clips, device, size) for clips, _ in sets))
