"""Condition inputs of the sampler, all rendered lazily per context window so memory stays flat.

- :class:`MaskCondition`: V1 audio mode, one face-region mask broadcast over all frames (1 channel).
- :class:`FrameCondition`: V1 landmark drawings or V2 hand-pose drawings, one RGB picture per frame,
  produced on demand by a ``render(indices) -> uint8 (n, H, W, 3)`` callable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import EchoMimicError


def _as_float_image(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    return t.float()


@dataclass
class MaskCondition:
    mask: torch.Tensor | np.ndarray  # (H, W) in [0, 1] or uint8
    channels: int = 1
    single_frame: bool = True

    def tensor(self, height: int, width: int) -> torch.Tensor:
        m = _as_float_image(self.mask)
        if m.dim() == 3:
            m = m[..., 0] if m.shape[-1] in (1, 3) else m[0]
        if tuple(m.shape) != (height, width):
            raise EchoMimicError(
                f"the face mask is {m.shape[1]}x{m.shape[0]} but the video is {width}x{height}; prepare the reference and "
                "mask at the output size (EchoMimic Reference Preparation does this)."
            )
        return m.view(1, 1, 1, height, width)


@dataclass
class FrameCondition:
    num_frames: int
    render: Callable[[Sequence[int]], np.ndarray]  # indices -> uint8 (n, H, W, 3) RGB
    channels: int = 3
    single_frame: bool = False

    def tensor(self, indices: Sequence[int], height: int, width: int) -> torch.Tensor:
        imgs = np.asarray(self.render(list(indices)))
        if imgs.ndim != 4 or imgs.shape[1:] != (height, width, 3):
            raise EchoMimicError(f"condition frames must be (n, {height}, {width}, 3), got {imgs.shape}.")
        return _as_float_image(imgs).permute(3, 0, 1, 2).unsqueeze(0)  # (1, 3, n, H, W)


def frames_condition(frames: np.ndarray | torch.Tensor) -> FrameCondition:
    """A FrameCondition over pre-rendered frames (F, H, W, 3), uint8 or float in [0, 1]."""
    arr = frames
    n = len(arr)

    def render(idx):
        sel = arr[list(idx)]
        if isinstance(sel, torch.Tensor):
            sel = sel.cpu().numpy()
        return sel if sel.dtype == np.uint8 else (np.clip(sel, 0, 1) * 255 + 0.5).astype(np.uint8)

    return FrameCondition(n, render)
