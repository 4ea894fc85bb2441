"""One evaluation: landmarks (given, or extracted from the frames with MediaPipe), then every metric whose
inputs are there. A metric that cannot be computed (no audio, no frames, no landmark model, a missing or
refused weight file) is left out with a note saying why and what to do; the others are still reported."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError
from .face import face_boxes, face_masks, five_points, points3d
from .identity import shape_drift
from .inputs import Clip
from .report import MIN_FACE_RATE, EvalReport
from .stability import background_flicker, face_rate, landmark_jitter
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


def _landmarks(clip: Clip, landmarker, notes: list):
    if clip.landmarks is not None:
        return clip.landmarks
    if clip.frames is None:
        return None
    if landmarker is None:
        notes.append("no face-landmark model: lip sync, jitter and shape drift need MediaPipe's face_landmarker.task "
                     "(pass --mediapipe-model, or put it in the models folder).")
        return None
    try:
        return landmarker.extract(list(clip.frames), policy="interpolate", fps=clip.fps)
    except EchoMimicError as exc:
        notes.append(f"landmarks: {exc}")
        return None


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
             face_mask: np.ndarray | None = None, real=None) -> EvalReport:
    """Score a clip. ``reference``: image (path or RGB array) for shape drift and CSIM; ``landmarker``: a
    :class:`~echomimic_lib.landmarks.extractor.FaceLandmarkExtractor` (needed unless the clip has landmarks);
    ``face_mask``: (H, W) or (F, H, W) face region for flicker when no landmarks are available; ``real``: a list
    of real (F, H, W, 3) RGB videos that FID and FVD compare the clip's frames with (when their weights are given)."""
    learned = learned or LearnedModels()
    notes: list[str] = []
    rep = EvalReport(clip.source, clip.num_frames, clip.fps, clip.num_frames / clip.fps, notes=notes)
    seq = _landmarks(clip, landmarker, notes)
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
    if clip.frames is not None and len(clip.frames) >= 2:
        masks = face_masks(px, clip.size) if px is not None else face_mask
        if masks is None:
            notes.append("no face region known: flicker is measured over the whole frame.")
        rep.flicker = background_flicker(clip.frames, masks)
    ref_image, ref_pts, rep.reference = _reference(reference, landmarker, pts[0] if pts is not None else None, notes)
    if pts is not None:
        drift = shape_drift(pts, ref_pts)
        rep.shape_drift, rep.shape_drift_max = float(drift.mean()), float(drift.max())
    _syncnet(rep, clip, px, seq.valid if seq is not None else None, learned, notes)
    _arcface(rep, clip, px, ref_image if ref_image is not None else (clip.frames[0] if clip.frames is not None else None),
             ref_pts, learned, notes)
    _distributions(rep, clip, real, learned, notes)
    return rep


def _distributions(rep: EvalReport, clip: Clip, real, learned: LearnedModels, notes: list) -> None:
    """FID and FVD of the clip's frames against the real videos, each when its weights are given."""
    if learned.inception is None and learned.i3d is None:
        return
    if clip.frames is None or not real:
        notes.append("FID / FVD need the video frames and real videos to compare with (--real VIDEO_OR_FOLDER).")
        return
    from .fid import FEW_SAMPLES, fid
    from .fvd import CLIP, fvd, video_clips
    from .i3d import I3D, load_i3d
    from .inception import InceptionV3, load_inception

    real_frames = [np.asarray(v) for v in real]
    if learned.inception is not None:
        try:
            net = learned.inception if isinstance(learned.inception, InceptionV3) else \
                load_inception(learned.inception, learned.inception_variant, learned.device)
            both = np.concatenate(real_frames)
            rep.fid = fid(net, clip.frames, both, learned.device)
            if min(len(both), len(clip.frames)) < FEW_SAMPLES:
                notes.append(f"FID from {len(clip.frames)} generated and {len(both)} real frames: below {FEW_SAMPLES} frames "
                             "it is biased upwards; compare it only with FIDs of the same sizes, not with papers'.")
        except EchoMimicError as exc:
            notes.append(f"FID left out: {exc}")
    if learned.i3d is not None:
        try:
            net = learned.i3d if isinstance(learned.i3d, I3D) else load_i3d(learned.i3d, learned.device)
            rep.fvd = fvd(net, [clip.frames], real_frames, learned.device)
            clips = len(video_clips(clip.frames)), sum(len(video_clips(v)) for v in real_frames)
            notes.append(f"FVD from {clips[0]} generated and {clips[1]} real clips of {CLIP} frames: small sets bias it "
                         "upwards; compare it only with FVDs of the same sizes.")
        except EchoMimicError as exc:
            notes.append(f"FVD left out: {exc}")


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


def _syncnet(rep: EvalReport, clip: Clip, px, valid, learned: LearnedModels, notes: list) -> None:
    if learned.syncnet is None:
        return
    if clip.frames is None or px is None or clip.wave16k is None:
        notes.append("LSE-C / LSE-D need the video frames, face landmarks and audio.")
        return
    from .syncnet import PROTOCOLS, SyncNet, face_crops, frame_indices_25, load_syncnet, lse_scores, published_track_problem

    if learned.lse_protocol not in PROTOCOLS:
        raise EchoMimicError(f"LSE protocol must be one of {', '.join(PROTOCOLS)}; got {learned.lse_protocol!r}.")
    idx = frame_indices_25(len(clip.frames), clip.fps)
    boxes = face_boxes(px[idx])
    if learned.lse_protocol == "published":
        problem = published_track_problem(boxes, None if valid is None else np.asarray(valid)[idx])
        if problem:
            notes.append(f"LSE-C / LSE-D left out: {problem}")
            return
        notes.append("LSE-C / LSE-D with the published protocol's track rules (> 100 frames at 25 fps, faces > 100 px, "
                     "gaps <= 25 frames); not matched: S3FD boxes (face-mesh boxes here), the JPEG / XVID re-encodes, "
                     "scene-cut splitting (docs/evaluation.md).")
    try:
        net = learned.syncnet if isinstance(learned.syncnet, SyncNet) else load_syncnet(learned.syncnet, learned.device)
        crops = face_crops(clip.frames, boxes, idx)
        s = lse_scores(net, crops, clip.wave16k, learned.device)
    except EchoMimicError as exc:
        notes.append(f"LSE-C / LSE-D left out: {exc}")
        return
    rep.lse_c, rep.lse_d, rep.syncnet_av_offset = s.lse_c, s.lse_d, s.av_offset


def _arcface(rep: EvalReport, clip: Clip, px, ref_image, ref_px, learned: LearnedModels, notes: list) -> None:
    if learned.arcface is None:
        return
    if clip.frames is None or px is None or ref_image is None:
        notes.append("CSIM needs the video frames and face landmarks.")
        return
    from .arcface import ArcFace, csim

    try:
        model = learned.arcface if isinstance(learned.arcface, ArcFace) else ArcFace(learned.arcface, learned.onnx_providers)
        rep.csim = csim(model, clip.frames, five_points(px), ref_image, five_points(ref_px))
    except EchoMimicError as exc:
        notes.append(f"CSIM left out: {exc}")
        return
    if rep.reference == "first frame":
        notes.append("CSIM compares with the first frame (give a reference image to compare with the portrait).")


def score_frames(frames, wave16k, fps: float, face_mask=None, mediapipe_model=None, models_dir=None,
                 source: str = "frames") -> EvalReport:
    """Weight-free metrics of rendered frames (e.g. a training validation video). Landmarks come from MediaPipe
    when its model is found (``mediapipe_model``, or in ``models_dir``; never downloaded); without it only the
    metrics that need no landmarks are computed (flicker inside-out of ``face_mask``), with a note saying so."""
    from ..errors import MissingWeightsError
    from ..landmarks.extractor import FaceLandmarkExtractor
    from .inputs import clip_from_arrays

    clip = clip_from_arrays(frames, wave16k, 16000, fps, source=source) if wave16k is not None else \
        clip_from_arrays(frames, None, None, fps, source=source)
    try:
        landmarker = FaceLandmarkExtractor(model_path=mediapipe_model, models_dir=models_dir, download=False)
    except MissingWeightsError as exc:
        report = evaluate(clip, None, None, None, face_mask)
        report.notes.insert(0, f"no MediaPipe face_landmarker model ({exc}): only the metrics without landmarks.")
        return report
    with landmarker:
        return evaluate(clip, None, landmarker, None, face_mask)
