"""Audio features for landmark-only driving (the paper's "L" mode): the model's unconditional audio.

:class:`UnconditionalAudio` stands in for :class:`~.features.AudioFeatures` in the sampler: its chunks are
all-zero whisper tokens. The denoiser's audio attention has bias-free key/value projections, so zero tokens
give exactly its zero-audio output (the ``audio=None`` path the sampler uses for unconditional rows);
``tests/test_dub.py`` checks the two agree. Its length is set by the driving sequence, not by a clip
(:meth:`UnconditionalAudio.for_driving`): ``echomimic animate --mode landmarks`` without ``--audio``,
``echomimic dub`` without ``--audio`` and the EchoMimic Landmark-Only Driving node use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import EchoMimicError
from .features import CHUNK_OFFSETS

WHISPER_STATES = 5  # whisper-tiny encoder states stacked per feature row
WHISPER_WIDTH = 384


@dataclass
class UnconditionalAudio:
    """``num_frames`` video frames at ``fps`` of unconditional (zero) audio tokens."""

    num_frames: int
    fps: float
    width: int = WHISPER_WIDTH

    def __post_init__(self):
        if int(self.num_frames) < 1:
            raise EchoMimicError("landmark-only driving needs a driving sequence of at least one frame.")
        if not float(self.fps) > 0:
            raise EchoMimicError(f"fps must be positive, got {self.fps!r}.")
        self.num_frames, self.fps = int(self.num_frames), float(self.fps)

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps

    def frame_count(self, fps: float) -> int:
        """Frames at ``fps`` covering the same duration (the driving sequence's length)."""
        fps = float(fps)
        if abs(fps - self.fps) < 1e-6:
            return self.num_frames
        return max(1, int(np.floor(self.num_frames * fps / self.fps + 1e-9)))

    def video_frame_count(self, fps: float) -> int:
        """Frames of a video that follows this (silent) clip: its driving length, as :meth:`frame_count`."""
        return self.frame_count(fps)

    def chunks_at(self, frames: Sequence[int], fps: float, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        idx = np.asarray(frames, dtype=np.int64).reshape(-1)
        count = self.frame_count(fps)
        if idx.size and (idx.min() < 0 or idx.max() >= count):
            raise EchoMimicError(f"audio chunk frame index out of range: 0..{count - 1} exist at {fps} fps.")
        tokens = len(CHUNK_OFFSETS) * WHISPER_STATES
        return torch.zeros((len(idx), tokens, self.width), device=device, dtype=dtype or torch.float32)

    def chunks(self, start: int, stop: int, fps: float, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.chunks_at(np.arange(start, stop), fps, device, dtype)

    def to(self, device=None, dtype=None) -> "UnconditionalAudio":
        return self

    @classmethod
    def for_driving(cls, landmarks, fps: float, length: int | None = None) -> "UnconditionalAudio":
        """As long as the driving sequence: a video or a saved sequence (resampled to ``fps``) or a folder of V1 ``.pkl`` frames (one
        frame each, as the landmark conditions read them), cut to ``length`` frames if given."""
        from pathlib import Path

        from ..landmarks.io import is_sequence_file, load_driver_sequence

        p = Path(landmarks)
        if is_sequence_file(p):  # saved by `echomimic landmarks`: its frames at its fps, as a video's
            seq = load_driver_sequence(p)
            n = max(1, int(np.floor(len(seq) * float(fps) / float(seq.fps or fps) + 1e-9)))
        elif p.is_dir():
            n = len(list(p.glob("*.pkl")))
            if n == 0:
                raise EchoMimicError(f"--landmarks {p}: no .pkl landmark frames in the folder.")
        else:
            from ..io.video_io import probe

            info = probe(p)
            if not info["frames"]:
                raise EchoMimicError(f"--landmarks {p}: the video has no frames.")
            n = max(1, int(np.floor(info["frames"] * float(fps) / float(info["fps"] or fps) + 1e-9)))
        return cls(n if not length else min(n, int(length)), fps)
