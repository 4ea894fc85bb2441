"""Face landmarks tracked through a video, smoothed over time, and one crop for the whole clip (dubbing).

1. Every frame goes through the existing :class:`~echomimic_lib.landmarks.extractor.FaceLandmarkExtractor` (full frames, the largest
   face). Frames without a face are marked invalid (``valid``) and filled by interpolation between their
   neighbours, so the driving sequence stays continuous; dubbing passes those frames through unchanged.
2. Smoothing: a normalised Gaussian over time that only averages valid frames - the landmarks with
   ``landmark_sigma`` frames (light: blinks survive), the face boxes (landmark extent) with ``box_sigma``.
3. **One crop per clip** (our choice; no per-segment crops): V1's face-crop rule (the face box dilated by
   half its size, a square) applied to the median face size, enlarged by the range the crop centre travels
   through the clip, so every frame's face fits; clipped to the frame. A static crop cannot jitter, the
   reference frame and every driving frame share one framing, and the paste-back is one affine map. When the
   head travels so far that the square grows beyond ``max_growth`` times V1's size (the face then gets small
   in the model's 512 px), a warning says so: trim the clip, or dub it in parts.
4. Reference frame: the first valid frame with a clear frontal face (head yaw and pitch within
   ``max_angle`` degrees, eyes open, the face inside the crop); else the most frontal valid frame.

:func:`jitter` measures the per-frame crop centre's RMS second difference (px/frame^2): on the shared
``driving_a.mp4`` (512 x 512, 288 frames, MediaPipe's face landmarker) it is 2.04 px raw and 0.20 px
smoothed (box_sigma 3; 0.40 at sigma 1, 0.15 at sigma 4); ``tests/test_tracking.py`` asserts < 0.3 px and
< 15 % of the raw value. The clip crop itself is static (zero jitter).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .crop import CropGeometry
from ..errors import EchoMimicError
from ..landmarks.sequence import LandmarkSequence

log = logging.getLogger(__name__)

LANDMARK_SIGMA = 1.0
BOX_SIGMA = 3.0
CROP_DILATION = 0.5  # V1's facecrop_dilation_ratio
MAX_GROWTH = 1.5
MAX_ANGLE = 15.0
BLINK = 0.5


def smooth_time(values, valid, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 that averages valid frames only (normalised convolution)."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.asarray(valid, dtype=bool)
    if sigma <= 0 or len(v) < 2:
        return v.copy()
    r = max(1, int(math.ceil(3 * sigma)))
    shape = (-1,) + (1,) * (v.ndim - 1)
    num, den = np.zeros_like(v), np.zeros(len(v))
    for off in range(-r, r + 1):
        w = math.exp(-0.5 * (off / sigma) ** 2)
        lo, hi = max(0, -off), min(len(v), len(v) - off)  # frames i with i + off inside the clip
        if hi <= lo:  # the kernel is longer than the clip
            continue
        num[lo:hi] += w * v[lo + off:hi + off] * ok[lo + off:hi + off].reshape(shape)
        den[lo:hi] += w * ok[lo + off:hi + off]
    out = v.copy()
    has = den > 1e-9
    out[has] = num[has] / den[has].reshape(shape)
    return out


def jitter(centres, valid=None) -> float:
    """RMS of the second temporal difference of (F, 2) centres over runs of valid frames (px / frame^2)."""
    c = np.asarray(centres, dtype=np.float64)
    ok = np.ones(len(c), bool) if valid is None else np.asarray(valid, bool)
    both = ok[:-2] & ok[1:-1] & ok[2:]
    if not both.any():
        return 0.0
    d2 = c[2:] - 2 * c[1:-1] + c[:-2]
    return float(np.sqrt((d2[both] ** 2).sum(axis=1).mean()))


def head_angles(trans_mat) -> tuple[np.ndarray, np.ndarray]:
    """Yaw and pitch in degrees per frame from (F, 4, 4) facial transformation matrices (0, 0 = frontal)."""
    m = np.asarray(trans_mat, dtype=np.float64).reshape(-1, 4, 4)
    fwd = m[:, :3, 2] / np.maximum(np.linalg.norm(m[:, :3, 2], axis=1, keepdims=True), 1e-9)
    return np.degrees(np.arctan2(fwd[:, 0], fwd[:, 2])), np.degrees(np.arctan2(fwd[:, 1], fwd[:, 2]))


def _v1_square(boxes: np.ndarray, dilation: float = CROP_DILATION) -> tuple[np.ndarray, np.ndarray]:
    """Centres (F, 2) and sides (F,) of V1's square for face boxes (F, 4) (the bottom padded by the column
    padding, as V1 does), before clipping to the frame."""
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    top, bottom = boxes[:, 1] - dilation * bh, boxes[:, 3] + dilation * bw
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (top + bottom) / 2
    return np.stack([cx, cy], axis=1), np.minimum(bw * (1 + 2 * dilation), bottom - top)


@dataclass
class FaceTrack:
    pixels: np.ndarray          # (F, 478, 2) smoothed landmarks, source pixels
    raw_pixels: np.ndarray      # (F, 478, 2) as extracted (invalid frames interpolated)
    boxes: np.ndarray           # (F, 4) smoothed face boxes (landmark extent)
    raw_boxes: np.ndarray       # (F, 4)
    valid: np.ndarray           # (F,) a face was found in this frame
    fps: float
    source_size: tuple[int, int]
    sequence: LandmarkSequence | None = None

    def __len__(self) -> int:
        return len(self.pixels)

    def crop_centres(self, raw: bool = False) -> np.ndarray:
        """Per-frame centre of the V1 square each frame's own face box would give (F, 2)."""
        return _v1_square(self.raw_boxes if raw else self.boxes)[0]

    def hull(self, i: int) -> np.ndarray:
        """Smoothed landmarks of frame ``i`` (source pixels), for a per-frame paste-back hull."""
        return self.pixels[i]

    def clip_crop(self, output_size: tuple[int, int], max_growth: float = MAX_GROWTH) -> CropGeometry:
        """One square for the whole clip (see the module docstring), as a CropGeometry of kind ``video_face``."""
        w, h = self.source_size
        ok = self.valid
        centres, sides = _v1_square(self.boxes[ok])
        side_face = float(np.median(sides))
        travel = float(max(np.ptp(centres[:, 0]), np.ptp(centres[:, 1])))
        side = min(side_face + travel, float(min(w, h)))
        if side / side_face > max_growth:
            log.warning("the head moves over %.0f px, so one crop for the clip is %.1fx V1's face crop: the face gets "
                        "small in the model's picture. Trim the clip or dub it in parts for more detail.",
                        travel, side / side_face)
        mid = (centres.min(axis=0) + centres.max(axis=0)) / 2
        s = int(round(side))
        x0 = int(np.clip(round(mid[0] - s / 2), 0, w - s))
        y0 = int(np.clip(round(mid[1] - s / 2), 0, h - s))
        med = np.median(self.boxes[ok], axis=0)
        from .reference import v1_face_region

        face = v1_face_region(tuple(int(round(v)) for v in med), (w, h))
        return CropGeometry((w, h), (x0, y0, x0 + s, y0 + s), tuple(output_size), kind="video_face", face_box=face)

    def reference_frame(self, crop: CropGeometry | None = None, max_angle: float = MAX_ANGLE) -> int:
        """The first valid frame with a clear frontal face, else the most frontal valid one."""
        good = self.valid.copy()
        score = np.zeros(len(self))
        seq = self.sequence
        if seq is not None and seq.trans_mat is not None:
            yaw, pitch = head_angles(seq.trans_mat)
            score = np.abs(yaw) + np.abs(pitch)
            good &= (np.abs(yaw) < max_angle) & (np.abs(pitch) < max_angle)
        if seq is not None and seq.blendshapes is not None and seq.blendshape_names:
            names = list(seq.blendshape_names)
            for eye in ("eyeBlinkLeft", "eyeBlinkRight"):
                if eye in names:
                    good &= seq.blendshapes[:, names.index(eye)] < BLINK
        if crop is not None:
            x0, y0, x1, y1 = crop.box
            b = self.boxes
            good &= (b[:, 0] >= x0) & (b[:, 1] >= y0) & (b[:, 2] <= x1) & (b[:, 3] <= y1)
        if good.any():
            return int(np.flatnonzero(good)[0])
        pick = int(np.flatnonzero(self.valid)[np.argmin(score[self.valid])])
        log.warning("no frame shows a clear frontal face with open eyes; using the most frontal one (frame %d). "
                    "Choose another with --reference-frame / the reference_frame widget.", pick)
        return pick


def _frames_and_size(frames):
    """(frames for the extractor, (width, height)): an (F, H, W, 3) array as a list of its frames, or any other
    iterable of (H, W, 3) frames (e.g. :class:`echomimic_lib.io.video_io.VideoFrames`) handed on as an iterator,
    its first frame read to learn the size (the frames are never gathered here)."""
    import itertools

    if isinstance(frames, np.ndarray) or not hasattr(frames, "__iter__"):
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
            raise EchoMimicError(f"face tracking needs video frames (F, H, W, 3), got shape {frames.shape}.")
        return list(frames), (frames.shape[2], frames.shape[1])
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise EchoMimicError("face tracking needs video frames (F, H, W, 3), got no frames.")
    first = np.asarray(first)
    if first.ndim != 3 or first.shape[-1] != 3:
        raise EchoMimicError(f"face tracking needs video frames (H, W, 3) each, got a frame of shape {first.shape}.")
    return itertools.chain([first], it), (first.shape[1], first.shape[0])


def track_faces(frames, fps: float, extractor=None, landmark_sigma: float = LANDMARK_SIGMA, box_sigma: float = BOX_SIGMA,
                **extractor_kwargs) -> FaceTrack:
    """Track the face through RGB frames (full frames, no centre crop): an (F, H, W, 3) array or an iterable of
    (H, W, 3) frames, handed to the extractor as they come (a video streamed from its file is never held whole)."""
    from ..landmarks.extractor import FaceLandmarkExtractor

    frames, (w, h) = _frames_and_size(frames)
    own = extractor is None
    ex = extractor or FaceLandmarkExtractor(multiple_faces="largest", **extractor_kwargs)
    try:
        seq = ex.extract(frames, policy="interpolate", fps=fps)
    finally:
        if own:
            ex.close()
    raw = seq.pixels((w, h))
    valid = np.asarray(seq.valid, bool)
    if valid.sum() < len(valid):
        log.info("face tracking: no face in %d of %d frames (%s)", int((~valid).sum()), len(valid), seq.report())
    pixels = smooth_time(raw, valid, landmark_sigma)
    raw_boxes = np.concatenate([raw.min(axis=1), raw.max(axis=1)], axis=1)
    boxes = smooth_time(raw_boxes, valid, box_sigma)
    return FaceTrack(pixels, raw, boxes, raw_boxes, valid, float(fps), (w, h), seq)
