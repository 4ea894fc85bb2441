"""One evaluation: landmarks (given, or extracted from the frames with MediaPipe), then every metric whose
inputs are there. A metric that cannot be computed (no audio, no frames, no landmark model, a missing or
refused weight file) is left out with a note saying why and what to do; the others are still reported."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError
from .face import points3d
from .identity import shape_drift
from .inputs import Clip
from .passes import FlickerMetric, arcface_metric, distribution_metrics, frame_pass, score_against_real, syncnet_metric
from .report import MIN_FACE_RATE, EvalReport
from .stability import face_rate, landmark_jitter
from .sync import MIN_FRAMES, MIN_SYNC_SECONDS, NULL_P95_LEVEL, av_sync, mouth_opening, sync_null

log = logging.getLogger(__name__)


@dataclass
class LearnedModels:
    """Optional learned-metric models: file paths (loaded on use) or loaded objects."""

    syncnet: object = None      # path of syncnet_v2.model, or a loaded SyncNet
    arcface: object = None      # path of an ArcFace .onnx, or a loaded ArcFace
    device: object = "cpu"     # torch device (or its name) for SyncNet, Inception and I3D
    onnx_providers: list | None = None
    inception: object = None    # path of InceptionV3 weights (FID), or a loaded InceptionV3
    i3d: object = None          # path of I3D weights (FVD), or a loaded I3D
    inception_variant: str = "auto"
    lse_protocol: str = "default"  # "published": also the face-track rules of syncnet_python's run_pipeline.py


LANDMARK_HINT = "pass --mediapipe-model, or put it in the models folder"  # `echomimic evaluate`'s; the trainer has its own


def _landmarks(clip: Clip, landmarker, notes: list, hint: str = LANDMARK_HINT):
    if clip.landmarks is not None:
        return clip.landmarks
    if clip.frames is None:
        return None
    if landmarker is None:
        notes.append(f"no face-landmark model: lip sync, jitter and shape drift need MediaPipe's face_landmarker.task ({hint}).")
        return None
    if isinstance(clip.frames, np.ndarray):
        try:
            return landmarker.extract(list(clip.frames), policy="interpolate", fps=clip.fps)
        except EchoMimicError as exc:
            notes.append(f"landmarks: {exc}")
            return None
    source_errors = []

    def frames():  # a streamed video, decoded as the landmarker goes; its own errors (a damaged file) are raised
        try:
            yield from clip.frames
        except EchoMimicError as exc:
            source_errors.append(exc)
            raise

    try:
        seq = landmarker.extract(frames(), policy="interpolate", fps=clip.fps, total=clip.frames.estimated_frames)
    except EchoMimicError as exc:
        if source_errors:
            raise
        notes.append(f"landmarks: {exc}")
        return None
    clip.frame_count = len(seq)
    return seq


def _reference(reference, landmarker, first_frame_px, notes: list):
    """(image or None, (N, 2) landmarks, label) of what shape drift and CSIM compare against."""
    if reference is not None:
        from ..landmarks._image import as_rgb_uint8

        image = as_rgb_uint8(_read_image(reference) if isinstance(reference, (str, Path)) else reference, "reference")
        if landmarker is None:
            notes.append("reference image given but no face-landmark model: shape drift compares with the first frame.")
        else:
            try:
                seq = landmarker.extract(image, policy="fail")
                return image, points3d(seq, seq.image_size)[0], "reference image"
            except EchoMimicError as exc:
                notes.append(f"reference image: {exc}; shape drift compares with the first frame.")
    return None, first_frame_px, "first frame"


def _read_image(path) -> np.ndarray:
    from .._lazy import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise EchoMimicError(f"{path}: cannot be read as an image (png, jpg, ...).")
    return bgr[..., ::-1]


def evaluate(clip: Clip, reference=None, landmarker=None, learned: LearnedModels | None = None,
             face_mask: np.ndarray | None = None, real=None, landmark_hint: str = LANDMARK_HINT) -> EvalReport:
    """Score a clip. ``reference``: image (path or RGB array) for shape drift and CSIM; ``landmarker``: a
    :class:`~echomimic_lib.landmarks.extractor.FaceLandmarkExtractor` (needed unless the clip has landmarks);
    ``face_mask``: (H, W) or (F, H, W) face region for flicker when no landmarks are available; ``real``: a list
    of real (F, H, W, 3) RGB videos (arrays, or :class:`~echomimic_lib.io.video_io.VideoFrames` streamed) that FID
    and FVD compare the clip's frames with (when their weights are given); ``landmark_hint``: how the caller's user
    gives the MediaPipe model (said in the note when there is none).

    The frames are gone through at most twice (landmarks, then every per-frame metric in one pass,
    :mod:`.passes`), a frame at a time: a streamed video is never whole in memory."""
    learned = learned or LearnedModels()
    notes: list[str] = []
    rep = EvalReport(clip.source, 0, clip.fps, 0.0, notes=notes)  # frames and seconds: after the frame pass
    seq = _landmarks(clip, landmarker, notes, landmark_hint)
    pts = points3d(seq, clip.size) if seq is not None else None      # (F, N, 3): x, y in pixels, depth
    px = pts[..., :2] if pts is not None else None
    if seq is not None:
        rep.face_rate = face_rate(seq.valid)
    elif clip.frames is not None and landmarker is not None:
        rep.face_rate = 0.0
    if not rep.reliable:
        notes.insert(0, f"UNRELIABLE: a face was found in only {rep.face_rate * 100:.1f} % of the frames (at least "
                        f"{MIN_FACE_RATE * 100:.0f} % are needed); every number ('?') describes those few frames. Score a "
                        "video where the face is visible, or check the MediaPipe model.")
    if px is not None and clip.wave16k is None:
        notes.append("no audio: the lip-sync metrics need the clip's audio (the video has no audio track; pass --audio).")
    elif px is not None and len(px) >= MIN_FRAMES:
        rep.sync = av_sync(mouth_opening(px), clip.wave16k, clip.fps)
        rep.av_offset_ms, rep.av_sync_corr = rep.sync.offset_ms, rep.sync.corr
        if rep.sync.offset_ms is None:
            notes.append("lip sync undefined: the audio is silent or the mouth never moves.")
        else:
            _sync_confidence(rep, clip, notes)
    elif px is not None:
        notes.append(f"lip sync needs at least {MIN_FRAMES} frames.")
    if px is not None and len(px) >= 3:
        rep.jitter = landmark_jitter(px)
    metrics = []
    if clip.frames is not None and (not isinstance(clip.frames, np.ndarray) or len(clip.frames) >= 2):
        if px is None and face_mask is None:
            notes.append("no face region known: flicker is measured over the whole frame.")
        metrics.append(FlickerMetric(rep, notes, px, clip.size, face_mask))
    ref_image, ref_pts, rep.reference = _reference(reference, landmarker, pts[0] if pts is not None else None, notes)
    if pts is not None:
        drift = shape_drift(pts, ref_pts)
        rep.shape_drift, rep.shape_drift_max = float(drift.mean()), float(drift.max())
    learned_notes: list[list[str]] = [[], [], [], []]  # SyncNet, CSIM, FID, FVD: in this order in the report
    metrics.append(syncnet_metric(rep, clip, px, seq.valid if seq is not None else None, learned, learned_notes[0]))
    metrics.append(arcface_metric(rep, clip, px, ref_image, ref_pts, learned, learned_notes[1]))
    distributions = distribution_metrics(rep, clip, real, learned, learned_notes[2], learned_notes[3])
    metrics = [m for m in metrics + distributions if m is not None]
    if clip.frames is not None:
        n = frame_pass(clip.frames, metrics)
        if not isinstance(clip.frames, np.ndarray):
            clip.frame_count = n
        score_against_real(distributions, real)
    rep.frames = clip.num_frames
    rep.seconds = rep.frames / clip.fps
    notes.extend(n for group in learned_notes for n in group)
    return rep


def _sync_confidence(rep: EvalReport, clip: Clip, notes: list) -> None:
    null = sync_null(rep.sync, clip.wave16k)
    if null is None:
        return
    rep.av_sync_p, rep.av_sync_z, rep.av_sync_null_p95 = null.p_value, null.z, null.null_p95
    rep.av_sync_meaningful = null.meaningful
    if not null.meaningful:
        notes.append(f"lip sync ('!'): the clip lasts {null.seconds:.1f} s; below {MIN_SYNC_SECONDS:g} s a mouth unrelated to "
                     f"the speech scores above {NULL_P95_LEVEL} too often (here 5 % of unrelated audio scores above "
                     f"{null.null_p95:.2f}), so the offset and sync strength say little. Score a longer clip.")


def score_frames(frames, wave16k, fps: float, face_mask=None, mediapipe_model=None, models_dir=None,
                 source: str = "frames", landmark_hint: str | None = None) -> EvalReport:
    """Weight-free metrics of rendered frames (e.g. a training validation video). Landmarks come from MediaPipe
    when its model is found (``mediapipe_model``, or in ``models_dir``; never downloaded); without it only the
    metrics that need no landmarks are computed (flicker inside-out of ``face_mask``), with one note saying so and
    ``landmark_hint`` (how the caller's user gives the model; default: where to download it to)."""
    from ..errors import MissingWeightsError
    from ..landmarks.extractor import FaceLandmarkExtractor
    from .inputs import clip_from_arrays

    clip = clip_from_arrays(frames, wave16k, 16000, fps, source=source) if wave16k is not None else \
        clip_from_arrays(frames, None, None, fps, source=source)
    try:
        landmarker = FaceLandmarkExtractor(model_path=mediapipe_model, models_dir=models_dir, download=False)
    except MissingWeightsError:  # (its text offers a download, never done here: the note says where it looked)
        from ..landmarks.mp_models import MODELS, SUBFOLDERS, _folders

        folders = _folders(models_dir)
        if mediapipe_model is not None:
            where = f"{mediapipe_model} not found"
        elif folders:
            where = f"none in {', '.join(map(str, folders))} or their {'/, '.join(s for s in SUBFOLDERS if s)}/ sub-folders"
        else:
            where = "no models folder given"
        if landmark_hint is None:
            into = f" into {folders[0] / SUBFOLDERS[0]}" if folders and mediapipe_model is None else ""
            landmark_hint = f"download it from {MODELS['face_landmarker']['url']}{into}"
        report = evaluate(clip, None, None, None, face_mask, landmark_hint=landmark_hint)
        report.notes.insert(0, f"no MediaPipe face_landmarker model ({where}): only the metrics without landmarks.")
        return report
    with landmarker:
        return evaluate(clip, None, landmarker, None, face_mask)
