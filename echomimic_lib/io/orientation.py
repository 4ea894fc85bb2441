"""Decoded video frames turned upright as a player shows them (ffmpeg's autorotate).

Phones store a portrait clip's frames sideways and tell the player how to turn them with a display matrix (the
container's rotation, handed to every decoded frame as DISPLAYMATRIX side data). The matrix maps a stored pixel
(x, y) (y down) to ``(a x + c y, b x + d y)`` on screen, ``a, b, c, d`` its entries 0, 1, 3, 4; for the quarter turns
and mirror images phones and editors write, that is a transpose and / or flips of the pixel array, the ones ffmpeg's
command line applies (``transpose=clock`` for an iPhone portrait clip, whose rotation reads -90 degrees, hflip /
vflip for a mirrored one). A matrix that turns by another angle (or scales or shears) is ignored with a warning,
once per file; a frame without a matrix, or with the identity, is handed on as decoded.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)


class Turn(NamedTuple):
    """How to turn a stored frame upright: transpose it (rows become columns), then flip its rows (top to bottom)
    and / or its columns (left to right)."""
    transpose: bool
    flip_rows: bool
    flip_cols: bool

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The displayed (width, height) of a stored ``width`` x ``height`` frame."""
        return (height, width) if self.transpose else (width, height)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``image`` (H, W, ...) as displayed (a contiguous array)."""
        if self.transpose:
            image = image.swapaxes(0, 1)
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)


def turn_of(matrix) -> Turn | None:
    """The :class:`Turn` of a 3x3 display matrix (9 int32, 16.16 fixed point, ffmpeg's layout), None for the identity;
    ValueError for a matrix that is no quarter turn or mirror image."""
    a, b, _, c, d = (int(v) for v in np.asarray(matrix, dtype=np.int64).reshape(-1)[:5])
    top = max(abs(a), abs(b), abs(c), abs(d))
    if not top:
        raise ValueError("a display matrix of zeros")
    small = top // 1000  # entries this close to 0 are 0 (a rotation written through cos/sin rounds to a few units)
    if abs(b) <= small and abs(c) <= small and min(abs(a), abs(d)) * 10 >= top * 9:
        turn = Turn(False, d < 0, a < 0)  # x' = a x, y' = d y
    elif abs(a) <= small and abs(d) <= small and min(abs(b), abs(c)) * 10 >= top * 9:
        turn = Turn(True, b < 0, c < 0)  # x' = c y, y' = b x: the rows of the transposed array are x
    else:
        raise ValueError(f"a display matrix that is no quarter turn or mirror ({a}, {b}, {c}, {d})")
    return None if turn == (False, False, False) else turn


_warned: set[str] = set()  # the files whose matrix was said to be ignored


def frame_turn(frame, name: str = "") -> Turn | None:
    """The :class:`Turn` that makes a decoded PyAV frame upright (its DISPLAYMATRIX side data), else None. A matrix
    that is no quarter turn is ignored, said once per file ``name``."""
    from av.sidedata.sidedata import Type

    data = frame.side_data.get(Type.DISPLAYMATRIX)
    if data is None:
        return None
    try:
        return turn_of(np.frombuffer(bytes(data), dtype=np.int32))
    except ValueError as exc:
        if name not in _warned:
            _warned.add(name)
            log.warning("%s: %s; the frames are read as stored (only quarter turns and mirror images are applied)",
                        name or "video", exc)
        return None


def upright_rgb(frame, name: str = "") -> np.ndarray:
    """A decoded PyAV video frame as RGB uint8 (H, W, 3), turned upright as a player shows it."""
    image = frame.to_ndarray(format="rgb24")
    turn = frame_turn(frame, name)
    return image if turn is None else turn.apply(image)
