"""Face geometry from 478-point face-mesh landmarks, shared by the metrics: the face scale (distance of the
outer eye corners), similarity alignment of point sets, face boxes and face-region masks.

All functions take pixel coordinates (``LandmarkSequence.pixels()``), so non-square frames keep their aspect.
"""
from __future__ import annotations

import numpy as np

from .._lazy import cv2
from ..landmarks.geometry import similarity_fit
from ..landmarks.parts import FACE_OVAL, RIGID

RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263      # subject's right / left outer eye corner
RIGHT_EYE_INNER, LEFT_EYE_INNER = 133, 362
NOSE_TIP = 4
MOUTH_RIGHT, MOUTH_LEFT = 61, 291               # subject's right / left mouth corner
MESH_POINTS = 468                               # face mesh without the iris points
OVAL: list[int] = sorted({i for e in FACE_OVAL for i in e})



def points3d(seq, size: tuple[int, int]) -> np.ndarray:
    """(F, N, 3) pixel coordinates of a ``LandmarkSequence`` in a (W, H) frame, depth in the scale of x (zero when
    the sequence has none)."""
    z = seq.lmks[..., 2:3] * size[0] if seq.lmks.shape[-1] > 2 else np.zeros(seq.lmks.shape[:2] + (1,))
    return np.concatenate([seq.pixels(size), z], axis=-1)


def face_scale(px: np.ndarray) -> np.ndarray:
    """Distance of the outer eye corners, per frame ((F,) for (F, N, 2), a float for (N, 2))."""
    px = np.asarray(px, dtype=np.float64)
    return np.linalg.norm(px[..., RIGHT_EYE_OUTER, :2] - px[..., LEFT_EYE_OUTER, :2], axis=-1)


def stabilise(px: np.ndarray, anchors: list[int] = RIGID, target: np.ndarray | None = None) -> np.ndarray:
    """Landmarks with the head motion removed: each frame mapped by the similarity that best moves its
    ``anchors`` onto the target's (default: the median shape of the sequence), then divided by the target's
    face scale, so values are in units of the eye-corner distance. (F, N, 2) -> (F, N, 2)."""
    px = np.asarray(px, dtype=np.float64)[..., :2]
    target = np.median(px, axis=0) if target is None else np.asarray(target, dtype=np.float64)[..., :2]
    out = np.empty_like(px)
    for i, frame in enumerate(px):
        s, r, t = similarity_fit(frame[anchors], target[anchors])
        out[i] = s * frame @ r.T + t
    return out / max(float(face_scale(target)), 1e-9)


def face_boxes(px: np.ndarray) -> np.ndarray:
    """(F, 4) x0, y0, x1, y1: extent of the face-mesh points in each frame."""
    xy = np.asarray(px, dtype=np.float64)[:, :MESH_POINTS, :2]
    return np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1)


def face_masks(px: np.ndarray, size: tuple[int, int], grow: float = 0.25) -> np.ndarray:
    """(F, H, W) bool: the convex hull of each frame's face mesh, scaled by ``1 + grow`` about its centre
    (so hair line, ears and jaw motion fall inside). ``size`` = (W, H) of the frames."""
    w, h = size
    out = np.zeros((len(px), h, w), dtype=np.uint8)
    for i, frame in enumerate(np.asarray(px, dtype=np.float64)[:, :MESH_POINTS, :2]):
        centre = frame.mean(axis=0)
        pts = centre + (frame - centre) * (1.0 + grow)
        hull = cv2.convexHull(np.round(pts).astype(np.int32))
        cv2.fillConvexPoly(out[i], hull, 1)
    return out.astype(bool)


def five_points(px: np.ndarray) -> np.ndarray:
    """(..., 5, 2) ArcFace alignment points in image order: eye on the image left, eye on the image right,
    nose tip, mouth corner on the image left, mouth corner on the image right."""
    px = np.asarray(px, dtype=np.float64)[..., :2]
    eye_a = (px[..., RIGHT_EYE_OUTER, :] + px[..., RIGHT_EYE_INNER, :]) / 2
    eye_b = (px[..., LEFT_EYE_OUTER, :] + px[..., LEFT_EYE_INNER, :]) / 2
    return np.stack([eye_a, eye_b, px[..., NOSE_TIP, :], px[..., MOUTH_RIGHT, :], px[..., MOUTH_LEFT, :]], axis=-2)
