"""``echomimic dub``: give an existing video of a person new speech (EchoMimic V1, audio + selected landmarks).

1. The face is tracked through the source video and one crop is chosen for the clip
   (:mod:`echomimic_lib.frames.tracking`); the reference is one frame of the video cut to that crop
   (default: the first clear frontal face).
2. The video's own landmarks drive the eyes, brows, pupils and nose (``parts``; add ``mouth`` for the
   landmarks-only mouth), the new audio drives the mouth; the V1 landmark ("pose") weights generate the crop
   at the model's frame rate.
3. Every generated frame is pasted back onto its own source frame (:mod:`echomimic_lib.frames.composite`, a
   feathered landmark hull by default); source frames without a face are copied unchanged.
4. The output keeps the source's size and frame rate and lasts as long as the new audio (the source is
   extended by the retime policy, ping-pong by default, or cut): :mod:`echomimic_lib.jobs.dub_plan`.

Without ``audio`` the dub is landmark-only (the paper's "L" mode): unconditional audio, the mouth from the
landmarks, the length of the video, and the source's own sound track.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EchoMimicError
from ..modes import DEFAULT_FPS

log = logging.getLogger(__name__)

MODE = "v1-audio+landmarks"
MAX_FEATHER = 512.0  # pixels of soft edge
MAX_DILATION = 2.0  # the paste-back region grown by at most twice the face size


@dataclass
class DubRequest:
    video: str
    audio: str | None
    output: str
    acc: bool = False
    models: str | None = None
    reference_frame: int | None = None
    parts: str | None = None  # None: eyes,brows,pupils,nose (+ mouth without audio); "" = no parts
    retime: str = "ping-pong"
    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    fps: float = DEFAULT_FPS  # the model's frame rate (the output keeps the source's)
    width: int = 512
    height: int = 512
    length: int | None = None  # at most this many generated frames
    context_frames: int = 12
    context_overlap: int = 3
    dtype: str = "auto"  # auto: bf16/fp16 on a GPU, fp32 on the CPU (echomimic_lib.devices)
    device: str = "auto"  # auto: CUDA, then MPS, then the CPU
    download: bool = True
    mediapipe_model: str | None = None
    region: str = "hull"
    feather: float = 16.0
    dilation: float = 0.15
    color: str = "off"
    compile: bool = False  # regional torch.compile of the denoiser (echomimic_lib.speed)
    cuda_graphs: bool = False  # record the denoiser call once per generation and replay it (CUDA only)
    deep_cache: int = 0  # DeepCache interval (opt-in, changes the output): a full denoiser pass every N steps; 0 = off
    deep_cache_branch: int = 0  # DeepCache branch (0: the shallowest, fastest); only with deep_cache >= 2


@dataclass
class DubResult:
    frames: np.ndarray         # (n_out, H, W, 3) uint8 at the source size
    fps: float                 # the source's frame rate
    audio: np.ndarray | None   # (C, T) the sound track to mux
    sample_rate: int | None
    plan: object               # echomimic_lib.jobs.dub_plan.DubPlan
    schedule: object           # the DubSchedule actually rendered
    passthrough: np.ndarray    # output frames copied unchanged (no face in their source frame)


def parts_for(parts: str | None, with_audio: bool) -> frozenset:
    from ..landmarks import normalize_parts

    if parts is None:
        return normalize_parts("pose" if with_audio else "landmarks")
    try:
        return normalize_parts(parts)  # "" -> no parts
    except ValueError as exc:
        raise EchoMimicError(f"--parts: {exc}") from None


@dataclass
class _Checked:
    variant: str
    settings: object
    parts: frozenset
    device: object
    dtype: object
    root: Path
    mediapipe_model: Path


def _validate(req: DubRequest) -> _Checked:
    """Every check that needs no weights (numbers, files, options, output path, the MediaPipe model)."""
    from .animate_checks import check_output, default_models_dir
    from ..frames.composite import COLOR_METHODS, REGIONS
    from ..devices import resolve_device, resolve_dtype
    from ..landmarks.mp_models import import_mediapipe, resolve_model
    from ..pipeline import settings_for
    from ..retime import POLICIES
    from ..speed import check_deep_cache, check_speed_options

    variant = "acc" if req.acc else "normal"
    device = resolve_device(req.device)
    dtype = resolve_dtype(req.dtype, device)
    check_speed_options(device, compile=req.compile, cuda_graphs=req.cuda_graphs)
    deep_cache, branch = check_deep_cache(req.deep_cache, req.deep_cache_branch)
    settings = settings_for(MODE, variant, steps=req.steps, cfg=req.cfg, seed=req.seed, fps=req.fps, width=req.width,
                            height=req.height, context_frames=req.context_frames, context_overlap=req.context_overlap,
                            cuda_graphs=req.cuda_graphs, deep_cache=deep_cache, deep_cache_branch=branch)
    settings.validate()
    if not Path(req.video).is_file():
        raise EchoMimicError(f"--video {req.video}: source video not found; give a video file of one person.")
    from .dub_plan import MIN_SOURCE_FRAMES, check_source_frames
    from ..io.video_io import count_frames

    check_source_frames(count_frames(req.video, MIN_SOURCE_FRAMES), f"--video {req.video}")
    checks = [(req.retime, POLICIES, "--retime"), (req.region, REGIONS, "--mask"), (req.color, COLOR_METHODS, "--color-match")]
    for value, allowed, flag in checks:
        if value not in allowed:
            raise EchoMimicError(f"{flag}: unknown value '{value}'; choose one of {', '.join(allowed)}.")
    for flag, value, top, unit in (("--feather", req.feather, MAX_FEATHER, "source pixels of soft edge"),
                                   ("--dilation", req.dilation, MAX_DILATION, "times the face size")):
        if not (math.isfinite(value) and 0 <= value <= top):
            raise EchoMimicError(f"{flag} {value}: use a number from 0 to {top:g} ({unit}; the default is "
                                 f"{DubRequest.__dataclass_fields__[flag[2:]].default:g}).")
    if req.length is not None and req.length < 1:
        raise EchoMimicError("--length must be at least 1 frame.")
    parts = parts_for(req.parts, req.audio is not None)
    check_output(req.output, {"--video": req.video, "--audio": req.audio})
    root = Path(req.models).expanduser() if req.models else default_models_dir()
    face_model = resolve_model("face_landmarker", req.mediapipe_model, [root], download=req.download)
    import_mediapipe()
    return _Checked(variant, settings, parts, device, dtype, root, face_model)


def _speech(req: DubRequest, clip, fps: float):
    """(sound track, sample rate, seconds, generated frame count) of the new speech or, without it, the L mode."""
    if req.audio is None:
        frames = max(1, int(np.floor(len(clip.frames) * fps / clip.fps + 1e-9)))
        return clip.audio, clip.sample_rate, len(clip.frames) / clip.fps, frames
    from .animate_checks import frame_count, read_speech

    wav, sr, raw = read_speech(req.audio)
    return wav, sr, raw.num_samples_16k / 16000.0, frame_count(raw, fps, req.length)


def render_dub(req: DubRequest, progress: Callable[[int, int], None] | None = None, models=None) -> DubResult:
    """Everything but the encoding: the composited frames at the source size (uint8). The face is tracked (and a
    video without a face refused) before any weight is loaded."""
    import torch

    from ..audio import encode_audio
    from ..audio.unconditional import UnconditionalAudio
    from ..frames.composite import PasteBack
    from .dub_plan import plan_dub, reference_crop
    from ..landmarks import draw_landmark_sequence
    from ..pipeline import FrameCondition, Sampler
    from ..io.video_io import read_video

    ok = _validate(req)
    settings, w, h = ok.settings, ok.settings.width, ok.settings.height
    clip = read_video(req.video, with_audio=req.audio is None)
    sound, sr, seconds, n_model = _speech(req, clip, settings.fps)
    if req.length is not None:
        n_model = min(n_model, req.length)
    n_out = max(1, min(int(np.floor(seconds * clip.fps + 1e-6)), int(np.floor(n_model * clip.fps / settings.fps + 1e-6))))
    if req.audio is None and req.length is None:
        n_out = len(clip.frames)  # landmark-only: exactly the driving video's frames
    plan = plan_dub(clip.frames, clip.fps, n_model, settings.fps, n_out, (w, h), req.retime, req.reference_frame,
                    parts=ok.parts, model_path=ok.mediapipe_model)
    log.info("dub: crop %s of the %dx%d video, reference frame %d, %d frames at %g fps -> %d frames at %g fps",
             plan.geometry.box, *plan.source_size, plan.reference_frame, n_model, settings.fps, n_out, clip.fps)
    if models is None:
        from ..model_set import ensure_weights
        from ..model_set import load_models

        ensure_weights(ok.root, "v1_pose", ok.variant, download=req.download)
        models = load_models(ok.root, "v1_pose", ok.variant, device=ok.device, dtype=ok.dtype)
    if req.compile:  # (models handed in, e.g. a batch worker's, are compiled once: this is then a no-op)
        from ..speed import compile_denoiser

        compile_denoiser(models)
    if req.audio is None:
        feats = UnconditionalAudio(n_model, settings.fps)
    else:
        feats = encode_audio(sound, models.audio_encoder, sample_rate=sr, device=ok.device, frames=n_model, fps=settings.fps)
    px = plan.driving_pixels()
    parts = ok.parts
    condition = FrameCondition(n_model, lambda idx: draw_landmark_sequence(px[list(idx)], (w, h), parts, coord_size=(w, h)))
    generated: list[np.ndarray] = []

    def collect(start, frames):
        generated.append((frames.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())

    settings.num_frames = n_model
    Sampler(models)(reference_crop(plan, clip.frames), feats, condition, settings, progress=progress, frame_sink=collect)
    gen = np.concatenate(generated)
    schedule = plan.schedule.for_generated(len(gen))
    paster = PasteBack(plan.geometry, req.region, req.feather, req.dilation, req.color)
    frames, passthrough = composite_dub(plan, schedule, gen, clip.frames, paster)
    return DubResult(frames, clip.fps, sound, sr, plan, schedule, passthrough)


def source_regions(plan, s: int) -> dict:
    """The paste-back regions of source frame ``s``: its landmark hull and its V1 face box."""
    from ..frames.reference import v1_face_region

    box = tuple(int(round(v)) for v in plan.track.boxes[s])
    return {"hull": plan.track.hull(s), "face_box": v1_face_region(box, plan.source_size)}


def composite_dub(plan, schedule, generated, source_frames, paster, check: Callable[[], None] | None = None):
    """Paste each generated frame onto its source frame; frames without a face are copied. Returns
    (uint8 (n_out, H, W, 3), indices of the copied output frames). ``check`` runs every 16 frames (Cancel)."""
    track = plan.track
    out = np.empty((len(schedule.source),) + source_frames.shape[1:], np.uint8)
    for j, (s, g) in enumerate(zip(schedule.source, schedule.generated)):
        if check is not None and j % 16 == 15:
            check()
        if not track.valid[s]:
            out[j] = source_frames[s]
            continue
        out[j] = paster.frame(generated[g], source_frames[s], **source_regions(plan, s))
    passthrough = plan.passthrough(schedule)
    if len(passthrough):
        log.info("dub: %d of %d output frames show a source frame without a face; they are copied unchanged",
                 len(passthrough), len(out))
    return out, passthrough


def run_dub(req: DubRequest, progress: Callable[[int, int], None] | None = None) -> dict:
    """Render ``req.output``; returns a summary dict."""
    from ..io.video_io import write_video

    t0 = time.time()
    res = render_dub(req, progress)
    path = write_video(req.output, res.frames, res.fps, res.audio, res.sample_rate)
    h, w = res.frames.shape[1:3]
    return {"output": str(path), "frames": len(res.frames), "fps": res.fps, "size": (w, h),
            "video_seconds": round(len(res.frames) / res.fps, 3), "reference_frame": res.plan.reference_frame,
            "crop": res.plan.geometry.box, "passthrough": len(res.passthrough), "seconds": round(time.time() - t0, 2)}
