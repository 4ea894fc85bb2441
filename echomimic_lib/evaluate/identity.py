"""Identity / shape drift: how far each frame's face shape is from the reference's, after position, size
and rotation are taken out (Procrustes).

Shape points: the face oval, nose, brows and eye corners (the lips and eyelids are left out, so talking and
blinking do not count as drift), in 3-D when the landmarks have depth (MediaPipe's z, in the scale of x), so a
turned head is not mistaken for a changed face; 2-D landmarks (motion-synced V1 frames) are compared in 2-D.
The distance is the Procrustes disparity of the two point sets, both centred and scaled to unit size:
``1 - (sum of singular values of A^T B)^2`` (no reflection), 0 for identical shapes up to a similarity
transform; values are reported x 1000 (about 1-3 for the same face talking and turning, more when the face
deforms or changes identity).
"""
from __future__ import annotations

import numpy as np

from ..landmarks.parts import MOTION_PARTS
from .face import LEFT_EYE_INNER, LEFT_EYE_OUTER, OVAL, RIGHT_EYE_INNER, RIGHT_EYE_OUTER

SHAPE_POINTS: list[int] = sorted(set(OVAL) | set(MOTION_PARTS["nose"]) | set(MOTION_PARTS["left_brow"])
                                 | set(MOTION_PARTS["right_brow"])
                                 | {RIGHT_EYE_OUTER, RIGHT_EYE_INNER, LEFT_EYE_INNER, LEFT_EYE_OUTER, 6, 168, 10, 152})
SCALE = 1000.0


def _standardise(points: np.ndarray) -> np.ndarray:
    p = points - points.mean(axis=0)
    norm = float(np.linalg.norm(p))
    return p / norm if norm > 0 else p


def procrustes_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Procrustes disparity (0..1) of two (N, D) point sets, rotation without reflection."""
    a, b = _standardise(np.asarray(a, dtype=np.float64)), _standardise(np.asarray(b, dtype=np.float64))
    u, s, vt = np.linalg.svd(a.T @ b)
    if np.linalg.det(u @ vt) < 0:
        s = s.copy()
        s[-1] = -s[-1]
    return float(max(0.0, 1.0 - s.sum() ** 2))


def shape_drift(pts: np.ndarray, reference: np.ndarray, points: list[int] = SHAPE_POINTS) -> np.ndarray:
    """(F,) drift (disparity x 1000) of each frame of (F, N, D) landmarks to the (N, D) reference (D = 2 or 3,
    the smaller of the two is used)."""
    pts, ref = np.asarray(pts, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    dims = min(pts.shape[-1], ref.shape[-1])
    ref = ref[points, :dims]
    return np.array([procrustes_distance(frame[points, :dims], ref) * SCALE for frame in pts])
