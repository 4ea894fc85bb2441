"""Face-landmark condition images (EchoMimic V1 visualiser rules), drawn with OpenCV.

Rules (they reproduce the reference pictures pixel for pixel):

- Drawing always happens on a black ``canvas`` x ``canvas`` image (512 in V1), which is resized
  (bilinear) to the output size at the end. Non-square outputs therefore stretch the drawing.
- Keypoints are normalised (``normed=True``) or pixel coordinates divided by ``coord_size``
  (default: the output size, as in V1), and stored as float32.
- A point is usable for lines when 0 <= x, y <= 1 (1 within 1e-9); it maps to pixel
  ``min(floor(v * canvas), canvas - 1)``. An edge with an unusable endpoint is skipped.
- Each edge is a 2-px 8-connected line in its part colour, groups in the order of
  :func:`parts.edge_groups`.
- Then 6x6 filled squares at the pupils (468, 473) and the nose tip (4) for points with
  0 <= x, y < 1: rows ``y-3 .. y+2``, columns ``x-3 .. x+2`` with ``x = int(canvas * x_norm)``
  (numpy slicing, so a square whose start would be negative is not drawn, as in V1).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import EchoMimicError
from .parts import SQUARE_HALF_WIDTH, edge_groups, normalize_parts, point_squares

__all__ = ["draw_landmarks", "draw_landmark_sequence"]


def _normalised_xy(kpts: np.ndarray, normed: bool, coord_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    if normed:
        x, y = kpts[:, 0], kpts[:, 1]
    elif kpts.dtype == np.float32:  # divide in the array's own precision
        x, y = kpts[:, 0] / np.float32(coord_size[0]), kpts[:, 1] / np.float32(coord_size[1])
    else:
        x, y = kpts[:, 0].astype(np.float64) / coord_size[0], kpts[:, 1].astype(np.float64) / coord_size[1]
    return x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)


def _usable(v: np.ndarray) -> np.ndarray:
    near_one = np.abs(v - 1.0) <= 1e-9 * np.maximum(1.0, np.abs(v))
    with np.errstate(invalid="ignore"):
        return (v >= 0) & ((v < 1) | near_one)


def _check_size(size, what: str) -> tuple[int, int]:
    try:
        w, h = int(size[0]), int(size[1])
    except Exception as exc:
        raise EchoMimicError(f"{what} must be (width, height), got {size!r}.") from exc
    if w <= 0 or h <= 0:
        raise EchoMimicError(f"{what} must be positive, got {w}x{h}.")
    return w, h


class _Painter:
    """One drawing setup (output size, parts, coordinates, canvas), checked once, for any number of frames."""

    def __init__(self, size, parts, normed: bool, coord_size, canvas: int, forehead_oval: bool):
        self.out_w, self.out_h = _check_size(size, "output size")
        self.coord_size = _check_size(coord_size, "coord_size") if coord_size is not None else (self.out_w, self.out_h)
        sel = normalize_parts(parts)
        self.groups = edge_groups(sel, forehead_oval)
        self.squares = point_squares(sel)
        self.needed = max([i for edges, _ in self.groups for e in edges for i in e] + [i for i, _ in self.squares] + [-1])
        self.normed, self.canvas = normed, canvas

    def __call__(self, kpts) -> np.ndarray:
        import cv2

        canvas = self.canvas
        img = np.zeros((canvas, canvas, 3), dtype=np.uint8)
        if kpts is not None:
            k = np.asarray(kpts)
            if k.ndim != 2 or k.shape[1] < 2:
                raise EchoMimicError(f"landmarks must be an (N, 2) or (N, 3) array, got shape {k.shape}.")
            if self.needed >= k.shape[0]:
                raise EchoMimicError(
                    f"the selected parts need landmark {self.needed} but only {k.shape[0]} are given; use 478-point "
                    "face-mesh landmarks (with iris) or drop 'pupils'/'iris' from the parts.")
            x, y = _normalised_xy(k, self.normed, self.coord_size)
            ok = _usable(x) & _usable(y)
            with np.errstate(invalid="ignore"):
                px = np.where(ok, np.minimum(np.floor(np.where(ok, x, 0) * canvas), canvas - 1), 0).astype(np.int64)
                py = np.where(ok, np.minimum(np.floor(np.where(ok, y, 0) * canvas), canvas - 1), 0).astype(np.int64)
            for edges, color in self.groups:
                for a, b in edges:
                    if ok[a] and ok[b]:
                        cv2.line(img, (int(px[a]), int(py[a])), (int(px[b]), int(py[b])), color, 2)
            hw = SQUARE_HALF_WIDTH
            for idx, color in self.squares:
                xv, yv = x[idx], y[idx]
                if not (0.0 <= xv < 1.0 and 0.0 <= yv < 1.0):
                    continue
                cx, cy = int(canvas * xv), int(canvas * yv)
                img[cy - hw: cy + hw, cx - hw: cx + hw, :] = color
        if (self.out_w, self.out_h) != (canvas, canvas):
            img = cv2.resize(img, (self.out_w, self.out_h), interpolation=cv2.INTER_LINEAR)
        return img


def draw_landmarks(
    kpts,
    size: tuple[int, int] = (512, 512),
    parts: str | Iterable[str] | None = "pose",
    normed: bool = False,
    coord_size: tuple[int, int] | None = None,
    canvas: int = 512,
    forehead_oval: bool = False,
) -> np.ndarray:
    """Draw one frame of face landmarks; returns uint8 (H, W, 3).

    kpts: (N >= 478, 2 or 3) landmarks (z ignored), or None for an empty (black) frame.
    size: output (W, H). parts: part selection (see :func:`parts.normalize_parts`; default = V1
    "selected landmarks": eyes, brows, pupils, nose). normed: kpts are already in [0, 1].
    coord_size: (W, H) of the pixel coordinate frame when ``normed=False``; defaults to ``size``
    (V1 behaviour). For V1 ``.pkl`` frames (512-px coordinates) pass ``coord_size=(512, 512)``.
    """
    return _Painter(size, parts, normed, coord_size, canvas, forehead_oval)(kpts)


def draw_landmark_sequence(
    seq,
    size: tuple[int, int] = (512, 512),
    parts: str | Iterable[str] | None = "pose",
    normed: bool = False,
    coord_size: tuple[int, int] | None = None,
    canvas: int = 512,
    forehead_oval: bool = False,
) -> np.ndarray:
    """Draw every frame of an (F, N, 2|3) landmark sequence (as :func:`draw_landmarks` draws one, with the
    setup checked once); returns uint8 (F, H, W, 3) RGB."""
    seq = np.asarray(seq)
    if seq.ndim != 3:
        raise EchoMimicError(f"a landmark sequence must be (F, N, 2|3), got shape {seq.shape}.")
    paint = _Painter(size, parts, normed, coord_size, canvas, forehead_oval)
    out = np.empty((seq.shape[0], paint.out_h, paint.out_w, 3), dtype=np.uint8)
    for i in range(seq.shape[0]):
        out[i] = paint(seq[i])
    return out
