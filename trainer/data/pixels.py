"""The training pixel pipeline of a stored frame: resized to the run's resolution, as a [-1, 1] tensor (shared by
the dataset and the latent cache, :mod:`.latent_cache`, so a cached latent encodes exactly the frames a step sees)."""
from __future__ import annotations

import numpy as np
import torch


def resize_frame(img: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    if img.shape[1] == w and img.shape[0] == h:
        return img
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if img.shape[1] > w else cv2.INTER_CUBIC)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
    return t.movedim(-1, -3)
