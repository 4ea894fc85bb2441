"""Cleaning rules and crop geometry for ``echomimic-train prepare``.

Rules (the papers' filtering where it is measurable; thresholds are options of :class:`PrepareConfig`;
``pose`` clips -- fully pose-driven, no speech -- skip ``no_audio`` and ``face_too_small``; ``full`` clips -- the
whole frame, no detector -- skip the three face rules):

- ``no_audio``        the video has no audio track and no sidecar audio file;
- ``too_short``       shorter than ``min_seconds`` after trimming video and audio to each other;
- ``no_face``         more than ``max_missing_face`` of the frames show no face (V2: no person);
- ``multiple_faces``  more than ``max_multi_face`` of the frames show several faces (V2: several people);
- ``face_too_small``  median face height below ``min_face_px`` source pixels;
- ``scene_cut``       a frame-to-frame content change above ``scene_threshold`` (PySceneDetect's
                      ContentDetector score: mean absolute HSV difference, default 27, as EMTD's
                      ``scenedetect`` slicing);
- ``unreadable``      the file cannot be decoded.

Frames with a missing face inside the tolerance are filled by interpolation of the neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PrepareConfig:
    kind: str = "headshot"  # headshot (V1 talking heads) | halfbody (V2) | pose (fully pose-driven, no speech) | full (V3)
    fps: float | None = None  # None: the kind's rate (DEFAULT_FPS: 25 for full, EchoMimicV3's; 24 otherwise)
    size: int = 512  # stored frame size (square; full: the shorter side); 768 for half-body
    min_seconds: float = 1.0
    max_seconds: float | None = None  # longer clips are truncated
    max_missing_face: float = 0.1
    max_multi_face: float = 0.02
    min_face_px: float = 96.0
    scene_threshold: float = 27.0
    crop_dilation: float = 0.5  # V1 facecrop_dilation_ratio (the inference crop rule, see clip_square)
    analysis_side: int = 512  # frames are analysed at this max side
    num_shards: int = 16
    jpeg_quality: int = 95
    face_landmarks: bool = True  # half-body: also run the face-mesh landmarker
    whisper_dtype: str = "float16"
    curate: object = field(default_factory=lambda: _curate_default())  # :class:`.curate_config.CurateConfig` (all filters off)

    def __post_init__(self):
        if self.fps is None:
            self.fps = DEFAULT_FPS.get(self.kind, 24.0)


KINDS = ("headshot", "halfbody", "pose", "full")
DEFAULT_FPS = {"full": 25.0}  # EchoMimicV3 animates at 25 fps; V1 / V2 train at 24


def _curate_default():
    from .curate_config import CurateConfig

    return CurateConfig()


def check_options(cfg: PrepareConfig) -> None:
    """Every option in range (finite numbers), before any clip is touched; raises ``ValueError`` naming the option."""
    import math

    def bad(option, value, rule):
        raise ValueError(f"{option} {value}: {rule}")

    if cfg.kind not in KINDS:
        bad("--kind", cfg.kind, "must be headshot, halfbody, pose or full")
    from echomimic_lib.modes import check_frame_rate

    check_frame_rate(cfg.fps, "--fps")  # the sampler's rule and words (an EchoMimicError, a ValueError)
    if not 64 <= cfg.size <= 4096 or cfg.size % 8:
        bad("--size", cfg.size, "the stored frame size must be a multiple of 8 between 64 and 4096 (512 headshot, 768 half-body, "
                                "768 full: the shorter side)")
    if not (math.isfinite(cfg.min_seconds) and cfg.min_seconds >= 0):
        bad("--min-seconds", cfg.min_seconds, "must be a number of seconds, 0 or more")
    if cfg.max_seconds is not None and not (math.isfinite(cfg.max_seconds) and cfg.max_seconds > max(cfg.min_seconds, 0)):
        bad("--max-seconds", cfg.max_seconds, f"must be a number of seconds above --min-seconds ({cfg.min_seconds})")
    for option, value in (("--max-missing-face", cfg.max_missing_face), ("--max-multi-face", cfg.max_multi_face)):
        if not (math.isfinite(value) and 0 <= value <= 1):
            bad(option, value, "must be a fraction of the frames between 0 and 1")
    if not (math.isfinite(cfg.min_face_px) and cfg.min_face_px >= 0):
        bad("--min-face-px", cfg.min_face_px, "must be a number of pixels, 0 or more")
    if not (math.isfinite(cfg.scene_threshold) and cfg.scene_threshold > 0):
        bad("--scene-threshold", cfg.scene_threshold, "must be a positive score (default 27)")
    if cfg.num_shards < 1:
        bad("--shards", cfg.num_shards, "must be 1 or more")
    if not 1 <= cfg.jpeg_quality <= 100:
        bad("--jpeg-quality", cfg.jpeg_quality, "must be between 1 and 100")
    from .curate_config import check_curate

    check_curate(cfg.curate)
    if cfg.curate.syncnet and cfg.kind == "pose":
        bad("curate.syncnet", cfg.curate.syncnet, "pose clips carry no speech to check lip sync against; leave it out for --kind pose")
    if cfg.curate.enabled and cfg.kind == "full":
        bad("--curate", "(--kind full)", "curation measures the face or the person, and --kind full runs no detector; leave "
                                         "--curate out, or prepare with --kind headshot or halfbody")


@dataclass
class Verdict:
    ok: bool
    reason: str = ""
    detail: str = ""


def check_clip(cfg: PrepareConfig, n_frames: int, seconds: float, face_counts: np.ndarray | None, face_heights_px: np.ndarray | None,
               cut_scores: np.ndarray, has_audio: bool) -> Verdict:
    """Apply the cleaning rules in order; the first failing rule is the reason. ``face_counts`` None: no detector
    ran (``full`` clips), the face rules are not applied."""
    pose_only = cfg.kind == "pose"  # fully pose-driven clips: no speech, faces may be small (full body)
    if not has_audio and not pose_only:
        return Verdict(False, "no_audio", "no audio stream and no sidecar audio file")
    if seconds < cfg.min_seconds or n_frames < 1:
        return Verdict(False, "too_short", f"{seconds:.2f} s < {cfg.min_seconds} s")
    if face_counts is None:
        cut = _scene_cut(cfg, cut_scores)
        return cut or Verdict(True, "", f"{n_frames} frames")
    counts = np.asarray(face_counts)
    none = float((counts == 0).mean()) if counts.size else 1.0
    many = float((counts > 1).mean()) if counts.size else 0.0
    if none >= 1.0 or none > cfg.max_missing_face:
        return Verdict(False, "no_face", f"no face in {none:.0%} of frames (max {cfg.max_missing_face:.0%})")
    if many > cfg.max_multi_face:
        return Verdict(False, "multiple_faces", f"several faces in {many:.0%} of frames (max {cfg.max_multi_face:.0%})")
    heights = np.asarray(face_heights_px, dtype=np.float64)
    heights = heights[np.isfinite(heights)]
    med = float(np.median(heights)) if heights.size else 0.0
    if med < cfg.min_face_px and not pose_only:
        return Verdict(False, "face_too_small", f"median face height {med:.0f} px < {cfg.min_face_px:.0f} px")
    cut = _scene_cut(cfg, cut_scores)
    return cut or Verdict(True, "", f"{n_frames} frames" + ("" if pose_only else f", median face {med:.0f} px"))


def _scene_cut(cfg: PrepareConfig, cut_scores: np.ndarray) -> Verdict | None:
    cuts = np.asarray(cut_scores, dtype=np.float64)
    if cuts.size and float(cuts.max()) > cfg.scene_threshold:
        at = int(cuts.argmax()) + 1
        return Verdict(False, "scene_cut", f"content change {cuts.max():.1f} > {cfg.scene_threshold} at frame {at}")
    return None


def fill_missing_rows(values: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-frame arrays; missing frames (None) are linearly interpolated / held at the ends."""
    valid = np.array([v is not None for v in values])
    if not valid.any():
        raise ValueError("no valid frame")
    good = np.flatnonzero(valid)
    ref = values[good[0]]
    out = np.stack([v if v is not None else np.zeros_like(ref) for v in values]).astype(np.float64)
    for i in np.flatnonzero(~valid):
        after, before = good[good > i], good[good < i]
        if len(before) and len(after):
            a, b = before[-1], after[0]
            t = (i - a) / (b - a)
            out[i] = (1 - t) * out[a] + t * out[b]
        else:
            out[i] = out[before[-1] if len(before) else after[0]]
    return out, valid


def landmark_boxes(lmks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(F, 478, 3) normalised landmarks -> (F, 4) pixel boxes x0, y0, x1, y1."""
    xy = lmks[:, :, :2] * np.array([width, height], dtype=np.float64)
    return np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1)


def clip_square(boxes: np.ndarray, width: int, height: int, dilation: float = 0.5) -> tuple[int, int, int]:
    """One square crop (x0, y0, side) for a whole clip, framed exactly as inference frames a reference: the
    library's V1 rule (:func:`echomimic_lib.landmarks.preprocess.v1_face_mask_and_crop`: the face box dilated
    by ``dilation`` x its size, the square of the rectangle's shorter side, centred, clipped) applied to the
    clip's median face box (face-mesh extent, the inference's default box). A face therefore fills the same
    share of the crop in training as in the reference at inference; head motion happens inside that frame."""
    from echomimic_lib.landmarks.preprocess import v1_face_mask_and_crop

    box = np.median(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), axis=0)
    # only the geometry is used: a blank image of the source size, an 8 x 8 output
    sq = v1_face_mask_and_crop(np.zeros((int(height), int(width), 3), np.uint8), box, 8, 8, crop_dilation=dilation).square
    x0, y0, x1, y1 = (int(v) for v in sq)
    return x0, y0, min(x1 - x0, y1 - y0)
