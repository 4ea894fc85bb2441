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
   extended by the retime policy, ping-pong by default, or cut): :mod:`echomimic_lib.jobs.dub_plan`. A variable
   frame rate source (a screen recording that paused) is read one frame a tick of its rate, the frame shown nearest
   it (:mod:`echomimic_lib.io.retime`): output frame k shows the source at k / fps, in step with the sound.

Memory (:func:`run_dub`, the batch): the source video is never held whole. It is decoded frame by frame to count it,
to track the face (only the frames the plan uses) and to fetch the reference, and again while compositing; each
output frame goes straight to the MP4 writer, the generated crops wait in a temporary file beside the output
(:mod:`echomimic_lib.jobs.dub_stream`). :func:`render_dub` is the in-memory form (one array of every output frame).

Without ``audio`` the dub is landmark-only (the paper's "L" mode): unconditional audio, the mouth from the
landmarks, the length of the video, and the source's own sound track.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EchoMimicError, MissingWeightsError
from ..modes import DEFAULT_FPS, get_mode
from .dub_stream import source_regions  # noqa: F401  (the ComfyUI Paste Back node's preview uses it from here)

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
    dtype: str = "auto"  # auto: bf16/fp16 on a GPU (fp16 on MPS), fp32 on the CPU (echomimic_lib.devices)
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
    resumable: bool = False  # keep the denoising state beside the output; a rerun goes on from it (pipeline.resume)


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
    from .animate_checks import check_numbers
    from .models_folder import models_root
    from .output_file import check_output
    from ..frames.composite import COLOR_METHODS, REGIONS
    from ..devices import resolve_device, resolve_dtype
    from ..landmarks.mp_models import import_mediapipe, resolve_model
    from ..retime import POLICIES
    from ..speed import check_speed_options

    variant = "acc" if req.acc else "normal"
    device = resolve_device(req.device)
    dtype = resolve_dtype(req.dtype, device)
    check_speed_options(device, compile=req.compile, cuda_graphs=req.cuda_graphs)
    from .resume_plan import check_request

    check_request(req)  # --resumable: no DeepCache, and a state file name that can be written
    settings, _ = check_numbers(req, get_mode(MODE), variant, dtype, zero_default=False)  # as animate's, by option names
    if not Path(req.video).is_file():
        from ..io.os_errors import missing_text

        what = "is a folder, not a video" if Path(req.video).is_dir() else missing_text(req.video, "source video not found")
        raise EchoMimicError(f"--video {req.video}: {what}; give a video file of one person.")
    from .dub_plan import MIN_SOURCE_FRAMES, check_source_frames, check_source_rate
    from .video_inputs import check_video_input
    from ..io.video_io import VideoFrames

    frames = check_video_input(req.video, "--video", "give a video of one person (mp4, mov, webm, mkv, ...).", MIN_SOURCE_FRAMES)
    check_source_frames(frames, f"--video {req.video}")
    check_source_rate(VideoFrames(req.video).fps, f"--video {req.video}")
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
    root = models_root(req)  # --models (a file refused), else $ECHOMIMIC_MODELS or ~/.cache/echomimic
    try:
        face_model = resolve_model("face_landmarker", req.mediapipe_model, [root], download=req.download)
    except MissingWeightsError as exc:  # the options that fix it, as animate and landmarks say them
        hint = " (Without --offline it is downloaded once.)" if not req.download and not req.mediapipe_model else ""
        raise MissingWeightsError(f"{exc}{hint} Or pass --mediapipe-model FILE.", exc.missing) from exc
    import_mediapipe()
    return _Checked(variant, settings, parts, device, dtype, root, face_model)


def _speech(req: DubRequest, video: str, n_src: int, src_fps: float, fps: float, has_audio: bool):
    """(sound track, sample rate, seconds, generated frame count, log-mel maximum of a long track's start or None) of
    the new speech or, without it, the L mode (the source's own sound, when it has one: ``has_audio`` from the header
    the caller read)."""
    if req.audio is None:
        from ..io.audio_file import read_audio

        # with --length only its seconds are muxed (the writer trims the sound to the video): the rest is not decoded
        seconds = None if req.length is None else req.length / fps + 1.0
        from .speech_input import check_rate

        audio, sr = read_audio(video, duration=seconds) if has_audio else (None, None)
        check_rate(video, sr, "--video")  # (its sound goes into the output as it is: said now, not by the writer)
        frames = max(1, int(np.floor(n_src * fps / src_fps + 1e-9)))
        return audio, sr, n_src / src_fps, frames, None
    from .speech_input import frame_count, read_speech

    # with --length only the start those frames need is kept (a long track's rest is read a piece at a time for its
    # checks, its length and the whisper features' log-mel maximum: the features are a whole read's)
    wav, sr, raw = read_speech(req.audio, fps, req.length) if req.length else read_speech(req.audio)
    whole = getattr(raw, "whole_samples", 0)
    seconds = whole / sr if whole else raw.num_samples_16k / 16000.0
    return wav, sr, seconds, frame_count(raw, fps, req.length), getattr(raw, "mel_peak", None)


@dataclass
class DubJob:
    """A dub planned before any weight loads: the face tracked, the reference cut, the sound track read."""
    request: DubRequest
    checked: _Checked
    fps: float                 # the source's frame rate (the output's)
    audio: np.ndarray | None   # (C, T) the sound track to mux
    sample_rate: int | None
    n_model: int
    plan: object               # echomimic_lib.jobs.dub_plan.DubPlan
    reference: np.ndarray      # the reference frame cut to the crop (uint8, the model's size)
    source_color: object = None  # the source's colour description (echomimic_lib.io.video_color), kept by the output
    mel_peak: float | None = None  # the whole track's log-mel maximum when ``audio`` is a long track's start (--length)
    clocked: object = None     # a variable frame rate source's frames placed on its clock (io.retime.ClockedFrames)

    def frames(self, upto: int | None = None):
        """The source video's frames (the first ``upto``), decoded one at a time: a variable frame rate source's, one
        a tick of its rate (the frame shown nearest it)."""
        return source_frames(self.request.video, self.clocked)(upto)


def source_frames(video: str, clocked=None) -> Callable:
    """``read(upto)``: the source's first ``upto`` frames, decoded one at a time; with ``clocked`` (a variable frame
    rate source, :func:`on_its_clock`) its ticks instead."""
    from ..io.video_io import VideoFrames

    return clocked.upto if clocked is not None else (lambda upto: VideoFrames(video, upto))


def on_its_clock(header, times: list):
    """The source's frames placed on its rate's clock by their timestamps (``times``: each decoded frame's, read by the
    count), with a warning, where they stray more than 0.1 s from that rate (a screen recording that paused: its
    frames written one after another would leave the sound, its own or the new one, seconds off); else None."""
    from ..io.retime import ClockedFrames, on_clock

    placed = on_clock(header, "the source video", "the dub's frame k shows the source at k / fps, in step with the "
                      "sound", decoded=times)
    return placed if isinstance(placed, ClockedFrames) else None


def prepare_dub(req: DubRequest, ok: _Checked | None = None) -> DubJob:
    """Checks (``ok``: done already), the source's length, the speech, the face track and the reference frame; the video
    is read frame by frame (never held whole), and a video without a face is refused before any weight loads."""
    import sys

    from .dub_plan import crop_reference, plan_dub_stream
    from ..io.video_color import describe_source, read_color
    from ..io.video_io import VideoFrames, count_frames

    ok = ok or _validate(req)
    settings, w, h = ok.settings, ok.settings.width, ok.settings.height
    header = VideoFrames(req.video)  # its rate, and whether it has a sound track
    src_fps = header.fps
    times: list = []  # the frames' timestamps, read by the count (placing a variable rate's reads the file no more)
    n_src = count_frames(req.video, sys.maxsize, times)
    clocked = on_its_clock(header, times)
    n_src = n_src if clocked is None else clocked.count()  # (the ticks of its rate)
    sound, sr, seconds, n_model, mel_peak = _speech(req, req.video, n_src, src_fps, settings.fps, header.has_audio)
    if req.length is not None:
        n_model = min(n_model, req.length)
    n_out = max(1, min(int(np.floor(seconds * src_fps + 1e-6)), int(np.floor(n_model * src_fps / settings.fps + 1e-6))))
    if req.audio is None and req.length is None:
        n_out = n_src  # landmark-only: exactly the driving video's frames
    read = source_frames(req.video, clocked)
    plan = plan_dub_stream(read, n_src, src_fps, n_model, settings.fps, n_out, (w, h), req.retime, req.reference_frame,
                           parts=ok.parts, model_path=ok.mediapipe_model)
    log.info("dub: crop %s of the %dx%d video, reference frame %d, %d frames at %g fps -> %d frames at %g fps",
             plan.geometry.box, *plan.source_size, plan.reference_frame, n_model, settings.fps, n_out, src_fps)
    image = None
    for image in read(plan.reference_frame + 1):  # one frame held at a time
        pass
    color = read_color(req.video)
    describe_source(color, f"the source video {req.video}")
    return DubJob(req, ok, src_fps, sound, sr, n_model, plan, crop_reference(plan, image), color, mel_peak, clocked)


def dub_frames(job: DubJob, sink: Callable[[np.ndarray], None], progress: Callable[[int, int], None] | None = None,
               models=None, crops_beside=None, resume=None):
    """Generate the crops, then composite each output frame and hand it to ``sink`` (one (H, W, 3) uint8 frame per
    call, in order) while the source is read again. The crops are kept in memory or, with ``crops_beside`` (the output
    path), in a temporary file beside it that is removed in every case. Returns (schedule, passthrough)."""
    from ..audio import encode_audio
    from ..audio.unconditional import UnconditionalAudio
    from ..frames.composite import PasteBack
    from .dub_stream import GeneratedCrops, SourceWindow, composite_frames, window_capacity
    from ..landmarks import draw_landmark_sequence
    from ..pipeline import FrameCondition, Sampler

    req, ok, plan = job.request, job.checked, job.plan
    settings, w, h, n_model = ok.settings, ok.settings.width, ok.settings.height, job.n_model
    if models is None:
        from ..model_set import ensure_weights
        from ..model_set import load_models
        from ..devices import resolve_vae_dtype

        ensure_weights(ok.root, "v1_pose", ok.variant, download=req.download)
        models = load_models(ok.root, "v1_pose", ok.variant, device=ok.device, dtype=ok.dtype,
                             vae_dtype=resolve_vae_dtype(req.dtype, ok.device, ok.dtype))
    if req.compile:  # (models handed in, e.g. a batch worker's, are compiled once: this is then a no-op)
        from ..speed import compile_denoiser

        compile_denoiser(models)
    if req.audio is None:
        feats = UnconditionalAudio(n_model, settings.fps)
    else:
        feats = encode_audio(job.audio, models.audio_encoder, sample_rate=job.sample_rate, device=ok.device,
                             frames=n_model, fps=settings.fps, mel_peak=job.mel_peak)
    px = plan.driving_pixels()
    parts = ok.parts
    condition = FrameCondition(n_model, lambda idx: draw_landmark_sequence(px[list(idx)], (w, h), parts, coord_size=(w, h)))
    settings.num_frames = n_model
    with GeneratedCrops(n_model, (w, h), crops_beside) as crops:
        Sampler(models)(job.reference, feats, condition, settings, progress=progress, frame_sink=crops, resume=resume)
        gen = crops.frames
        schedule = plan.schedule.for_generated(len(gen))
        paster = PasteBack(plan.geometry, req.region, req.feather, req.dilation, req.color)
        source = SourceWindow(job.frames, schedule.frames_needed, window_capacity(plan.source_size))
        try:
            for frame in composite_frames(plan, schedule, gen, source, paster):
                sink(frame)
        finally:
            source.close()
    return schedule, _passthrough(plan, schedule)


def _passthrough(plan, schedule) -> np.ndarray:
    passthrough = plan.passthrough(schedule)
    if len(passthrough):
        log.info("dub: %d of %d output frames show a source frame without a face; they are copied unchanged",
                 len(passthrough), len(schedule.source))
    return passthrough


def render_dub(req: DubRequest, progress: Callable[[int, int], None] | None = None, models=None) -> DubResult:
    """Everything but the encoding, in memory: the composited frames at the source size (uint8) as one array (for a
    long video use :func:`run_dub`, which streams). The face is tracked (and a video without a face refused) before
    any weight is loaded."""
    job = prepare_dub(req)
    out: list[np.ndarray] = []
    schedule, passthrough = dub_frames(job, lambda f: out.append(np.array(f, np.uint8)), progress, models)
    return DubResult(np.stack(out), job.fps, job.audio, job.sample_rate, job.plan, schedule, passthrough)


def composite_dub(plan, schedule, generated, source_frames, paster, check: Callable[[], None] | None = None):
    """Paste each generated frame onto its source frame; frames without a face are copied. Returns
    (uint8 (n_out, H, W, 3), indices of the copied output frames). ``check`` runs every 16 frames (Cancel)."""
    from .dub_stream import composite_frame

    out = np.empty((len(schedule.source),) + source_frames.shape[1:], np.uint8)
    for j, (s, g) in enumerate(zip(schedule.source, schedule.generated)):
        if check is not None and j % 16 == 15:
            check()
        out[j] = composite_frame(plan, paster, int(s), generated[g], source_frames[s])
    return out, _passthrough(plan, schedule)


def dub_checkpoint(job: DubJob):
    """``--resumable``: the sampler's kept state for this dub (its weights found, or fetched, first), else None."""
    req, ok = job.request, job.checked
    if not req.resumable:
        return None
    from ..model_set import ensure_weights
    from .resume_plan import StepCheckpoint, fingerprint, state_path

    files = ensure_weights(ok.root, "v1_pose", ok.variant, download=req.download)
    settings = replace(ok.settings, num_frames=job.n_model)
    return StepCheckpoint(state_path(req.output), fingerprint(req, settings, ok.device, ok.dtype, files))


def run_dub(req: DubRequest, progress: Callable[[int, int], None] | None = None) -> dict:
    """Render ``req.output``; returns a summary dict. Memory holds a few source frames and the generated crops' file
    mapping, not the video: each output frame is encoded as it is composited. The output is claimed
    (:class:`.output_file.OutputClaim`) after the checks, before the face is tracked: a second dub of the same ``-o`` is
    refused."""
    from .output_file import OutputClaim

    t0 = time.time()
    ok = _validate(req)
    with OutputClaim(req.output):
        return _write_dub(prepare_dub(req, ok), t0, progress)


def _write_dub(job: DubJob, t0: float, progress) -> dict:
    from ..io.video_writer import Mp4Writer

    req = job.request
    checkpoint = dub_checkpoint(job)
    with Mp4Writer(req.output, job.fps, job.audio, job.sample_rate, color=job.source_color) as writer:
        schedule, passthrough = dub_frames(job, lambda f: writer.write(f[None]), progress, crops_beside=req.output,
                                           resume=checkpoint)
        path = writer.commit()
    if checkpoint is not None:
        checkpoint.discard()
    w, h = job.plan.source_size
    n = len(schedule.source)
    return {"output": str(path), "frames": n, "fps": job.fps, "size": (w, h),
            "video_seconds": round(n / job.fps, 3), "reference_frame": job.plan.reference_frame,
            "crop": job.plan.geometry.box, "passthrough": len(passthrough), "seconds": round(time.time() - t0, 2)}
