"""Aligning the reference image and the hand-pose sequence (EchoMimicV2).

The maintainers insist that the reference image and the poses be strictly aligned, otherwise heads deform.
Two tools:

**1. The half-body crop rule** (the reference's preprocessing, applied to the reference image *and* to
poses extracted from a video, so both land in the same frame). With keypoints normalised to the source
image (W x H), over all frames of the sequence (one frame for an image):

- ``top``    = min y of the face landmarks, ``bottom`` = max y of body keypoints 0-6 (nose, neck, shoulders,
  elbows), ``centre`` = mean x of the neck;
- margin ``m = 0.25 * (bottom - top)``; ``top -= 0.65 m`` (not above the image), ``bottom += 0.05 m``
  (not below it);
- a square of side ``(bottom - top) * H`` pixels centred on the neck; where it would leave the image the width
  shrinks symmetrically around the neck (the reference clamps the left edge to 0 and keeps width = 2 x neck x);
- the crop is resized to fit the working size S (768) and padded, centred, with black: the placement is the
  frame's ``draw_pose_params`` ([S, S, 0, S, 0, S] for a square crop). Keypoints are re-normalised to the crop.

:func:`halfbody_crop` computes the crop, :func:`crop_image` / :func:`crop_sequence` apply it,
:func:`align_reference_image` does it for a reference picture, :func:`align_reference_and_poses` for a
reference picture and a driving-video sequence together.

**2. Moving a loaded sequence onto the reference** (:func:`fit_sequence_to_reference`): released pose
folders were cropped from somebody else's video, so their shoulders need not be where the reference's are.
A similarity transform (uniform scale + translation, optionally rotation) is fitted by least squares from
the sequence's median neck/shoulder positions to the reference's, in canvas pixels, and applied to every
keypoint of every frame: the hands then move with the reference's body. Motion is preserved (one transform
for the whole sequence).

Points stored as exactly (-1, -1) mean "not detected" and are left untouched by every transform here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._lazy import cv2
import numpy as np

from ..errors import EchoMimicError
from .drawing import FITS, map_draw_params
from .sequence import PoseSequence

UPPER_BODY = (0, 1, 2, 3, 4, 5, 6)  # OpenPose-18: nose, neck, R shoulder, R elbow, R wrist, L shoulder, L elbow
NECK, R_SHOULDER, L_SHOULDER = 1, 2, 5
SCORE_THRESHOLD = 0.3


@dataclass(frozen=True)
class HalfBodyCrop:
    """A crop rectangle in source pixels and where it lands in the S x S working canvas."""

    x0: int
    y0: int
    x1: int
    y1: int
    image_size: tuple[int, int]  # source (W, H)
    size: int  # working size S
    draw_pose_params: tuple[int, int, int, int, int, int]  # [imh, imw, rb, re, cb, ce] in the S x S canvas

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def resize_and_pad_params(h: int, w: int, size: int) -> tuple[int, int, int, int, int, int]:
    """Placement of an h x w crop scaled to fit a size x size canvas, centred: [imh, imw, rb, re, cb, ce]."""
    half = size // 2
    if h > w:
        imh, imw = size, max(1, int(round(w / h * size)))
        cb = half - imw // 2
        return imh, imw, 0, size, cb, cb + imw
    imw, imh = size, max(1, int(round(h / w * size)))
    rb = half - imh // 2
    return imh, imw, rb, rb + imh, 0, size


def _visible(points: np.ndarray, scores: np.ndarray, threshold: float = SCORE_THRESHOLD) -> np.ndarray:
    finite = np.isfinite(points).all(axis=-1) & np.isfinite(scores)
    sentinel = (points == -1.0).all(axis=-1)
    return finite & ~sentinel & (np.nan_to_num(scores) > threshold)


def halfbody_crop(
    seq: PoseSequence, image_size: tuple[int, int], size: int = 768, margin: float = 0.25, top: float = 0.65, bottom: float = 0.05
) -> HalfBodyCrop:
    """The reference's half-body crop for keypoints normalised to a ``image_size`` (W, H) source image
    (a sequence extracted from a video, or one frame for an image). See the module docstring."""
    w_img, h_img = int(image_size[0]), int(image_size[1])
    face_ok = _visible(seq.faces, seq.faces_score)
    body_ok = _visible(seq.body[:, UPPER_BODY], seq.body_score[:, UPPER_BODY])
    neck_ok = _visible(seq.body[:, NECK], seq.body_score[:, NECK])
    if not face_ok.any():
        raise EchoMimicError(
            "half-body crop: no face landmarks were detected, so the top of the crop is unknown; "
            "use a picture/video where the face is visible."
        )
    if not neck_ok.any() or not body_ok.any():
        raise EchoMimicError("half-body crop: the neck/shoulders were not detected; use a half-body picture/video (head and shoulders visible).")
    h_min = float(seq.faces[..., 1][face_ok].min())
    h_max = float(seq.body[:, UPPER_BODY, 1][body_ok].max())
    mid = float(seq.body[:, NECK, 0][neck_ok].mean())
    if h_max <= h_min:
        raise EchoMimicError("half-body crop: the shoulders are above the face; the keypoints look wrong (upside-down picture?).")
    m = margin * (h_max - h_min)
    h_min = max(0.0, h_min - top * m)
    h_max = min(1.0, h_max + bottom * m)
    side = (h_max - h_min) * h_img
    cx = mid * w_img
    half = min(side / 2.0, cx, w_img - cx)
    if half <= 0:
        raise EchoMimicError("half-body crop: the neck lies on the image border; the person must be inside the picture.")
    x0, x1 = int(round(cx - half)), int(round(cx + half))
    y0, y1 = int(round(h_min * h_img)), int(round(h_max * h_img))
    x0, x1 = max(0, x0), min(w_img, max(x1, x0 + 1))
    y0, y1 = max(0, y0), min(h_img, max(y1, y0 + 1))
    params = resize_and_pad_params(y1 - y0, x1 - x0, size)
    return HalfBodyCrop(x0, y0, x1, y1, (w_img, h_img), int(size), params)


def crop_image(image: np.ndarray, crop: HalfBodyCrop) -> np.ndarray:
    """Apply a half-body crop to an (H, W, 3) image: S x S, crop resized into its draw area, black padding."""
    image = np.asarray(image)
    if image.shape[:2] != (crop.image_size[1], crop.image_size[0]):
        raise EchoMimicError(
            f"crop_image: the crop was computed for a {crop.image_size[0]}x{crop.image_size[1]} image, "
            f"got {image.shape[1]}x{image.shape[0]}."
        )
    imh, imw, rb, re, cb, ce = crop.draw_pose_params
    region = image[crop.y0 : crop.y1, crop.x0 : crop.x1]
    interp = cv2.INTER_AREA if imw < region.shape[1] else cv2.INTER_CUBIC
    out = np.zeros((crop.size, crop.size) + image.shape[2:], dtype=image.dtype)
    out[rb:re, cb:ce] = cv2.resize(region, (imw, imh), interpolation=interp).reshape((imh, imw) + image.shape[2:])
    return out


def _map_points(points: np.ndarray, fn) -> np.ndarray:
    out = np.array(points, dtype=np.float64, copy=True)
    keep = (out == -1.0).all(axis=-1)
    mapped = fn(out)
    mapped[keep] = -1.0
    return mapped


def crop_sequence(seq: PoseSequence, crop: HalfBodyCrop) -> PoseSequence:
    """Re-normalise a sequence whose keypoints are normalised to the source image to the crop's draw area."""
    w_img, h_img = crop.image_size
    scale = np.array([w_img / crop.width, h_img / crop.height])
    offset = np.array([crop.x0 / crop.width, crop.y0 / crop.height])
    out = seq.copy()
    for name in ("body", "hands", "faces"):
        setattr(out, name, _map_points(getattr(seq, name), lambda p: p * scale - offset))
    out.draw_pose_params = np.tile(np.asarray(crop.draw_pose_params, dtype=np.int64), (len(seq), 1))
    out.canvas_size = (crop.size, crop.size)
    out.validate()
    return out


def align_reference_image(image: np.ndarray, reference_pose: PoseSequence, size: int = 768) -> tuple[np.ndarray, PoseSequence, HalfBodyCrop]:
    """Half-body crop of a reference picture from its own keypoints (normalised to the picture, e.g. from
    :func:`echomimic_lib.pose.dwpose.detect_image_pose`): ``(S x S image, its pose in the crop, the crop)``.
    This puts the picture in the framing of the released pose folders; follow with
    :func:`fit_sequence_to_reference` to move a loaded sequence onto the picture's shoulders."""
    h, w = np.asarray(image).shape[:2]
    crop = halfbody_crop(reference_pose, (w, h), size)
    return crop_image(image, crop), crop_sequence(reference_pose, crop), crop


def align_reference_and_poses(
    reference_image: np.ndarray, reference_pose: PoseSequence, driving_pose: PoseSequence, driving_size: tuple[int, int], size: int = 768
):
    """Half-body crop of the reference image (from its own keypoints) and of a driving sequence (from its
    keypoints over all frames), both normalised to their source images. Returns
    ``(reference_image_SxS, reference_pose_cropped, driving_pose_cropped, (reference_crop, driving_crop))``."""
    h, w = np.asarray(reference_image).shape[:2]
    ref_crop = halfbody_crop(reference_pose, (w, h), size)
    drv_crop = halfbody_crop(driving_pose, driving_size, size)
    return crop_image(reference_image, ref_crop), crop_sequence(reference_pose, ref_crop), crop_sequence(driving_pose, drv_crop), (ref_crop, drv_crop)


def fit_image(image: np.ndarray, size: tuple[int, int], fit: str = "stretch") -> np.ndarray:
    """Map an image to the output size (W, H) exactly as :func:`echomimic_lib.pose.drawing.draw_hands` maps the
    pose canvas (``stretch`` / ``contain`` / ``cover``), so reference image and condition images stay aligned."""
    if fit not in FITS:
        raise EchoMimicError(f"unknown fit '{fit}'; choose one of {', '.join(FITS)}.")
    image = np.asarray(image)
    h, w = image.shape[:2]
    W, H = int(size[0]), int(size[1])
    imh, imw, rb, _re, cb, _ce = map_draw_params((h, w, 0, h, 0, w), (w, h), (W, H), fit)
    resized = cv2.resize(image, (imw, imh), interpolation=cv2.INTER_AREA if imw < w else cv2.INTER_CUBIC).reshape((imh, imw) + image.shape[2:])
    out = np.zeros((H, W) + image.shape[2:], dtype=image.dtype)
    r0, c0, r1, c1 = max(rb, 0), max(cb, 0), min(rb + imh, H), min(cb + imw, W)
    out[r0:r1, c0:c1] = resized[r0 - rb : r1 - rb, c0 - cb : c1 - cb]
    return out


# ---------------------------------------------------------------------------------------------- similarity
def _to_canvas(points: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Normalised points (F, ..., 2) -> canvas pixels, per frame params (F, 6)."""
    p = params.astype(np.float64).reshape((len(params),) + (1,) * (points.ndim - 2) + (6,))
    return np.stack([p[..., 4] + points[..., 0] * p[..., 1], p[..., 2] + points[..., 1] * p[..., 0]], axis=-1)


def _from_canvas(points: np.ndarray, params: np.ndarray) -> np.ndarray:
    p = params.astype(np.float64).reshape((len(params),) + (1,) * (points.ndim - 2) + (6,))
    return np.stack([(points[..., 0] - p[..., 4]) / p[..., 1], (points[..., 1] - p[..., 2]) / p[..., 0]], axis=-1)


def similarity_from_points(src: np.ndarray, dst: np.ndarray, rotation: bool = False) -> np.ndarray:
    """Least-squares similarity (2 x 3 matrix) mapping src (K, 2) onto dst (K, 2): uniform scale + translation,
    plus rotation when ``rotation`` (Umeyama). Needs K >= 2 distinct points."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s0, d0 = src - ms, dst - md
    var = (s0**2).sum()
    if len(src) < 2 or var < 1e-12:
        raise EchoMimicError("similarity transform: need at least two distinct keypoints (neck and shoulders).")
    if rotation:
        cov = d0.T @ s0 / len(src)
        u, sig, vt = np.linalg.svd(cov)
        d = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
        r = u @ d @ vt
        scale = float(np.trace(np.diag(sig) @ d) / (var / len(src)))
    else:
        r = np.eye(2)
        scale = float((s0 * d0).sum() / var)
    if scale <= 0:
        raise EchoMimicError("similarity transform: the keypoints are mirrored relative to the reference; check left/right.")
    a = scale * r
    return np.hstack([a, (md - a @ ms)[:, None]])


def fit_sequence_to_reference(
    seq: PoseSequence, reference: PoseSequence, rotation: bool = False, keypoints=(NECK, R_SHOULDER, L_SHOULDER)
) -> tuple[PoseSequence, np.ndarray]:
    """Move/scale ``seq`` so its (median) neck and shoulders land on the reference's, in canvas pixels.

    ``reference``: the reference image's pose (frame 0 is used) in the canvas the output is drawn on, e.g. from
    :func:`crop_sequence` after :func:`halfbody_crop` of the reference. The result uses the reference's canvas
    and draw_pose_params. Returns ``(moved sequence, 2x3 matrix in canvas pixels)``.
    """
    kp = list(keypoints)
    ref_params = reference.draw_pose_params[:1]
    ref_ok = _visible(reference.body[0, kp], reference.body_score[0, kp])
    seq_ok = _visible(seq.body[:, kp], seq.body_score[:, kp])
    seq_px = _to_canvas(seq.body[:, kp], seq.draw_pose_params)
    src, dst = [], []
    for j, k in enumerate(kp):
        if ref_ok[j] and seq_ok[:, j].any():
            src.append(np.median(seq_px[seq_ok[:, j], j], axis=0))
            dst.append(_to_canvas(reference.body[:1, k], ref_params)[0])
    if len(src) < 2:
        raise EchoMimicError(
            "fit_sequence_to_reference: the neck/shoulders are not visible in the reference pose or in the sequence; "
            "use a half-body reference picture (shoulders visible), or skip this step."
        )
    m = similarity_from_points(np.array(src), np.array(dst), rotation)
    out = seq.copy()
    target = np.tile(reference.draw_pose_params[0], (len(seq), 1))
    for name in ("body", "hands", "faces"):
        pts = getattr(seq, name)
        px = _to_canvas(pts, seq.draw_pose_params)
        moved = px @ m[:, :2].T + m[:, 2]
        norm = _from_canvas(moved, target)
        norm[(pts == -1.0).all(axis=-1)] = -1.0
        setattr(out, name, norm)
    out.draw_pose_params = target
    out.canvas_size = reference.canvas_size
    out.validate()
    return out, m
