"""Context windows as pure functions (closed-loop uniform schedule of the reference sampler).

``base_windows`` is computed once per generation; at denoising step ``i`` every frame index ``j``
becomes ``(j + i * shift) % num_frames``. Predictions are averaged uniformly per frame.
"""
from __future__ import annotations


def base_windows(num_frames: int, context: int = 12, overlap: int = 3) -> list[list[int]]:
    if num_frames <= 0:
        return []
    if context <= 0 or overlap < 0 or overlap >= context:
        raise ValueError(f"context windows need 0 <= overlap < context frames (got context={context}, overlap={overlap})")
    if num_frames <= context:
        return [list(range(num_frames))]
    stride = context - overlap
    return [[(s + k) % num_frames for k in range(context)] for s in range(0, num_frames, stride)]


def shift_windows(windows: list[list[int]], step_index: int, shift: int, num_frames: int) -> list[list[int]]:
    off = step_index * shift
    return [[(j + off) % num_frames for j in w] for w in windows]


def step_windows(num_frames: int, step_index: int, context: int = 12, overlap: int = 3, shift: int = 2) -> list[list[int]]:
    return shift_windows(base_windows(num_frames, context, overlap), step_index, shift, num_frames)


def frame_counts(windows: list[list[int]], num_frames: int) -> list[int]:
    counts = [0] * num_frames
    for w in windows:
        for j in w:
            counts[j] += 1
    return counts


def window_runs(window: list[int]) -> list[tuple[int, int]]:
    """A window's frame indices as contiguous runs ``(start, stop)``: a closed-loop window that wraps
    around the end of the video is two runs, any other one run. Lets the sampler gather and scatter
    windows with slices (no index tensors, nothing copied to or read back from the device)."""
    runs: list[list[int]] = []
    for j in window:
        if runs and j == runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([j, j + 1])
    return [(a, b) for a, b in runs]


def take_runs(t, runs: list[tuple[int, int]], dim: int):
    """The runs of indices ``runs`` (from :func:`window_runs`) of tensor ``t`` along ``dim``, concatenated (a view for
    a single run)."""
    import torch

    parts = [t.narrow(dim, a, b - a) for a, b in runs]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)
