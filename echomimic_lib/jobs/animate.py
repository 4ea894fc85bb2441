"""The headless main job: reference image + audio (+ landmarks / poses) -> mp4 with the audio.

Used by ``echomimic animate``; every step is a library call, so scripts can do the same. Order: every
check that needs no weights (:func:`echomimic_lib.jobs.animate_checks.preflight`), the condition (face crop,
landmarks, poses: a missing face stops here), then weights, audio features (only the 30 s segments the
frames need), sampling, and the frames streamed into the mp4 as the VAE decodes them.
"""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .animate_checks import AUTO_POSE, preflight
from .models_folder import dwpose_roots, gesture_library_dirs, models_root
from .lora_args import lora_stack
from .resume_plan import checkpoint_for
from ..devices import DTYPE_NAMES, DTYPES  # noqa: F401 (DTYPES: public, used by other commands)
from ..errors import NoFaceError
from ..modes import DEFAULT_FPS
from ..retime import default_policy
from ..speed import compile_denoiser

log = logging.getLogger(__name__)
MODE_TITLES = {"v1-audio": "V1 audio-driven", "v1-landmarks": "V1 landmark-driven", "v1-audio+landmarks": "V1 audio + selected landmarks",
               "v2-halfbody": "V2 half-body"}

__all__ = ["AnimateRequest", "run", "build_condition"]


@dataclass
class AnimateRequest:
    reference: str
    audio: str | None  # None: landmark-only driving (--mode landmarks without --audio)
    output: str
    mode: str = "v1-audio"
    acc: bool = False
    models: str | None = None
    landmarks: str | None = None  # driving video, a saved sequence (.npz/.json: `echomimic landmarks`) or V1 .pkl folder
    parts: str | None = None  # comma-separated landmark parts
    pose: str | None = None  # V2 pose folder / .npz, or "auto": gestures from the speech (echomimic_lib.pose.gestures)
    retime: str | None = None  # None: "continue" for V2 poses (the folder once, then gestures matched to the speech), ping-pong for landmarks
    gesture_library: str | None = None  # --pose auto / --retime continue: pose folders to take gestures from
    expressiveness: float = 1.0  # gestures from the speech: 0 calm .. 2 lively
    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    fps: float = DEFAULT_FPS
    width: int | None = None
    height: int | None = None
    length: int | None = None
    context_frames: int = 12
    context_overlap: int = 3
    dtype: str = "auto"  # auto: bf16/fp16 on a GPU (fp16 on MPS), fp32 on the CPU (see echomimic_lib.devices)
    device: str = "auto"  # auto: CUDA, then MPS, then the CPU
    download: bool = True
    face_crop: bool = True  # V1: crop the reference to the face (reference preprocessing)
    mediapipe_model: str | None = None
    lora: str | tuple[str, ...] | None = None  # LoRA adapter (.safetensors from `echomimic-train export`), or a list / tuple to stack
    lora_strength: float | tuple[float, ...] = 1.0  # one for every adapter, or one each in order (echomimic_lib.jobs.lora_args)
    smoke: bool = False  # tiny random weights, 64 px, 2 steps, the first second (see animate_checks.SMOKE)
    paste_back: bool = False  # write the full-size original with the result pasted in (echomimic_lib.frames.composite)
    low_vram: bool = False  # networks on the device only for their stage; the denoiser streamed block by block
    fp8: bool = False  # UNet weights stored as float8_e4m3fn, upcast per layer (echomimic_lib.memory.fp8)
    halfbody_crop: bool = False  # V2: DWPose half-body crop of the reference (else a plain resize)
    align_poses: bool = False  # V2: move the pose sequence onto the reference's shoulders (DWPose)
    resumable: bool = False  # keep the denoising loop's state beside the output; a rerun goes on from it (pipeline.resume)
    stabilize: str = "off"  # steady the driving landmarks (V1) / hand poses (V2): off, light, medium, strong (echomimic_lib.temporal)
    compile: bool = False  # regional torch.compile of the denoiser (echomimic_lib.speed); not with low_vram
    cuda_graphs: bool = False  # record the denoiser call once per generation and replay it (CUDA only; not with low_vram)
    deep_cache: int = 0  # DeepCache interval (opt-in, changes the output): a full denoiser pass every N steps; 0 = off
    deep_cache_branch: int = 0  # DeepCache branch (0: the shallowest, fastest); only with deep_cache >= 2


@dataclass
class Conditioned:
    """What a mode's inputs become before sampling: the prepared reference, the sampler condition, and the crop
    (where the reference came from in the original picture, for ``--paste-back``)."""

    reference: np.ndarray
    condition: object
    crop: object  # echomimic_lib.frames.crop.CropGeometry


def _reference_target(mode, req: AnimateRequest) -> str:
    if mode.condition == "hand_pose":
        return "v2_halfbody" if req.halfbody_crop else "resize"
    return "v1_face" if req.face_crop else "resize"  # V1 audio and landmark modes alike (V1 --crop_face 1)


def _dwpose(req: AnimateRequest):
    from .pose_sources import dwpose_detector

    return dwpose_detector(dwpose_roots(req), req.download)  # where preflight found them (a smoke run: the default folder too)


def prepare_condition(mode, req: AnimateRequest, reference: np.ndarray, num_frames: int, settings,
                      landmark_progress=None) -> Conditioned:
    """The prepared reference (V1: face crop, V2: half-body crop with ``halfbody_crop``, else a resize), the
    sampler condition for the mode, and the crop geometry."""
    from ..pipeline import FrameCondition, MaskCondition, frames_condition
    from ..frames.reference import prepare_reference

    w, h = settings.width, settings.height
    target = _reference_target(mode, req)
    detector = _dwpose(req) if mode.condition == "hand_pose" and (req.halfbody_crop or req.align_poses) else None
    prep = prepare_reference(reference, target, w, h, model_path=req.mediapipe_model, models_dir=_models_root(req),
                             pose_detector=detector)
    if mode.condition == "face_mask":
        return Conditioned(prep.image, MaskCondition(prep.mask), prep.crop)
    if mode.condition == "landmarks":
        from ..errors import EchoMimicError
        from ..landmarks import conditions_from_driver, conditions_from_driving_video, conditions_from_pkl_folder, normalize_parts
        from ..landmarks.io import is_sequence_file, load_driver_sequence
        from ..landmarks.stabilize import stabilize_landmarks

        try:  # an empty --parts means no parts, not the mode's default
            parts = normalize_parts(req.parts) if req.parts is not None else frozenset(mode.landmark_parts)
        except ValueError as exc:
            raise EchoMimicError(f"--parts: {exc}") from None
        src, policy = Path(req.landmarks), default_policy(req.retime, hand_pose=False)
        if src.is_dir():
            frames = conditions_from_pkl_folder(src, num_frames, (w, h), parts=parts, retime_policy=policy,
                                                stabilize=req.stabilize)
        elif is_sequence_file(src):  # saved by `echomimic landmarks VIDEO`: the conditions that video gives
            driver = stabilize_landmarks(load_driver_sequence(src), req.stabilize, name=f"--landmarks {src}")
            frames = conditions_from_driver(driver, prep.image, num_frames, (w, h), parts=parts,
                                            retime_policy=policy, out_fps=settings.fps, model_path=req.mediapipe_model)
        else:
            frames, _ = conditions_from_driving_video(src, prep.image, num_frames, (w, h), parts=parts, retime_policy=policy,
                                                      out_fps=settings.fps, model_path=req.mediapipe_model,
                                                      progress=landmark_progress, stabilize=req.stabilize)
        return Conditioned(prep.image, frames_condition(frames), prep.crop)
    # V2 half-body: the pose sequence drawn per context window (memory flat in video length)
    from ..pose import draw_hands_batch, fit_sequence_to_reference, load_pose
    from ..pose.dwpose import detect_image_pose

    from ..pose.gestures.continuation import retime_pose_sequence
    from ..pose.stabilize import stabilize_poses

    if req.pose == AUTO_POSE:
        seq = gesture_poses(req, detector, prep.image, num_frames, settings)
    else:
        from .pose_sources import dwpose_detector, is_pose_video, video_poses

        if is_pose_video(req.pose):  # a driving video: DWPose poses of its frames (`echomimic poses --video` keeps them)
            seq = video_poses(req.pose, detector or dwpose_detector(dwpose_roots(req), req.download))
        else:
            seq = load_pose(req.pose)
        if req.align_poses:  # move the poses onto the prepared reference's shoulders (the node's "fit to reference shoulders")
            seq, _ = fit_sequence_to_reference(seq, detect_image_pose(detector, prep.image))
        # default "continue": a folder shorter than the speech carries on with matched gestures (ping-pong when it has none)
        seq = retime_pose_sequence(seq, num_frames, settings.fps, req.retime, audio=req.audio, library=req.gesture_library,
                                   seed=int(settings.seed), expressiveness=float(req.expressiveness))
    # --stabilize: on the frames that are drawn, after retiming (fps = the video's, the seams of a loop or a
    # continuation smoothed too) and after the alignment (which takes one median transform); "off" keeps seq, and
    # a file saved stabilized by `echomimic poses --stabilize` is not smoothed twice
    seq = stabilize_poses(seq, req.stabilize, name=f"--pose {req.pose}")
    return Conditioned(prep.image, FrameCondition(len(seq), lambda idx: draw_hands_batch(seq, idx, (w, h))), prep.crop)


def gesture_poses(req: AnimateRequest, detector, reference: np.ndarray, num_frames: int, settings):
    """V2 poses from the speech alone (``--pose auto``: gestures from the library); with ``--align-poses`` on the
    reference's shoulders. (A pose folder shorter than the speech is carried on in :func:`prepare_condition`.)"""
    from ..pose.dwpose import detect_image_pose
    from .pose_sources import speech_gestures

    ref_pose = detect_image_pose(detector, reference) if req.align_poses else None
    return speech_gestures(req.audio, settings.fps, num_frames, int(settings.seed), gesture_library_dirs(req),
                           float(req.expressiveness), reference=ref_pose)


def build_condition(mode, req: AnimateRequest, reference: np.ndarray, num_frames: int, settings):
    """(prepared reference image at W x H, sampler condition) for the mode (see :func:`prepare_condition`)."""
    c = prepare_condition(mode, req, reference, num_frames, settings)
    return c.reference, c.condition


def paste_back_sink(crop, original: np.ndarray, sink):
    """A sampler ``frame_sink`` that pastes each decoded batch into ``original`` before handing it to ``sink``
    (V1: the feathered face region, V2 / resize: the crop with a soft border)."""
    from ..frames.composite import PasteBack

    region = "face" if crop.kind == "v1_face" else "crop"
    paster = PasteBack(crop, region, feather=16.0, dilation=0.1 if region == "face" else 0.0)

    def composite(start, frames):
        gen = (frames.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy() if isinstance(frames, torch.Tensor) else frames
        sink(start, np.stack([paster.frame(g, original) for g in gen]))

    return composite


def _models_root(req: AnimateRequest) -> Path:
    return models_root(req)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _condition(plan, landmark_progress=None):
    """Prepared reference + sampler condition, before any weight is loaded; the no-face message names the flag."""
    from ..landmarks.mp_models import quiet_native_logs

    req, mode, s = plan.request, plan.mode, plan.settings
    try:
        with quiet_native_logs():
            return prepare_condition(mode, req, plan.reference, s.num_frames, s, landmark_progress)
    except NoFaceError:
        if req.smoke:
            log.warning("smoke run: no face found in %s; animating the whole image.", req.reference)
            return prepare_condition(mode, replace(req, face_crop=False), plan.reference, s.num_frames, s)
        raise NoFaceError(f"no face found in the reference image {req.reference}; use a portrait with one clearly visible "
                          "face, or pass --no-face-crop to animate the whole image.") from None


def describe(plan) -> str:
    s = plan.settings
    title = MODE_TITLES.get(plan.mode.name, plan.mode.name)
    sound = f"audio {plan.audio_seconds:.2f} s" if plan.request.audio else "no audio: landmark-only, silent"
    return (f"{title} ({plan.variant} weights{', smoke run' if plan.request.smoke else ''}): {s.width}x{s.height}, "
            f"{s.num_frames} frames = {s.num_frames / s.fps:.2f} s at {s.fps:g} fps ({sound}), "
            f"{s.steps} steps, cfg {s.cfg:g}, seed {s.seed}, {plan.device} {DTYPE_NAMES[plan.dtype]}")


def _warn_if_slow(plan) -> None:
    """A CPU render at full size takes hours with real weights: say so before it starts."""
    from ..pipeline import base_windows

    s = plan.settings
    if plan.device.type != "cpu" or plan.request.smoke or s.width * s.height < 256 * 256:
        return
    calls = s.steps * len(base_windows(s.num_frames, s.context_frames, s.context_overlap))
    log.warning("running on the CPU: %d denoiser calls (%d steps x %d windows) at %dx%d; with the official weights that takes "
                "hours. Check an install with --smoke (seconds); --acc needs 6 steps; a GPU is picked by --device auto.",
                calls, s.steps, calls // s.steps, s.width, s.height)


def _memory_options(req: AnimateRequest, models, device: torch.device, settings):
    """--fp8 (UNet weights in fp8, after any LoRA is merged) and --low-vram (a stage-by-stage placement that
    streams the denoiser); returns the placement, or None for the default (everything on ``device``)."""
    if req.fp8:
        from ..memory import to_fp8

        saved = to_fp8(models.reference) + to_fp8(models.denoiser)
        log.info("fp8 weight storage: %.2f GB saved", saved / 1024**3)
    if not req.low_vram and not _staged(req, device):
        return None
    from ..memory import Placement

    return Placement(models, device, stream_denoiser=req.low_vram, settings=settings)


def _staged(req: AnimateRequest, device: torch.device) -> bool:
    """On a GPU each network is on the device only for its stage, as in ComfyUI (the reference UNet and whisper
    leave before denoising, VAE decode chunks follow the free memory): measured on an H200, V1 512 px fp16 with
    everything resident peaked at 8.8 GB against the 6 GB goal. The CPU keeps everything where it is."""
    return device.type == "cuda" and not req.low_vram


class _Stages:
    """Wall seconds per stage of a run (the device synchronised at each mark, so GPU work lands in its stage)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self._t = device, {}, time.perf_counter()

    def mark(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._t, 3)
        self._t = now


def run(req: AnimateRequest, progress: Callable[[int, int], None] | None = None,
        landmark_progress: Callable[[int, int], None] | None = None) -> dict:
    """Render ``req.output``; returns a summary dict (frames, seconds, peak memory, ``stages_s``: seconds per stage).
    ``progress(done, total)``: per denoiser window; ``landmark_progress``: per driving-video frame whose landmarks
    are extracted (V1 landmark modes from a video). The output is claimed (:class:`.output_file.OutputClaim`) after
    the checks and before any weight loads: a second render of the same ``-o`` is refused."""
    from .output_file import OutputClaim

    t0 = time.time()
    plan = preflight(req)
    with OutputClaim(plan.output):
        return _render(plan, t0, progress, landmark_progress)


def _render(plan, t0: float, progress, landmark_progress) -> dict:
    from ..audio import encode_audio
    from ..model_set import ensure_weights
    from ..model_set import load_models
    from ..devices import resolve_vae_dtype
    from ..pipeline import Sampler
    from ..io.video_writer import Mp4Writer

    req, mode, variant, settings, device = plan.request, plan.mode, plan.variant, plan.settings, plan.device
    stages = _Stages(device)
    adapters = []
    stack = lora_stack(req.lora, req.lora_strength)
    if stack:  # every adapter read and checked before any weights are loaded
        from ..lora import load_stack

        adapters = load_stack(stack, mode.weights, variant)
    if req.fp8:
        from ..memory import check_fp8

        check_fp8(device)
    log.info("%s", describe(plan))
    _warn_if_slow(plan)
    prepared = _condition(plan, landmark_progress)
    stages.mark("checks_and_condition")
    root = plan.models_root
    if req.smoke:
        from ..tiny import ensure_tiny

        if ensure_tiny(root, mode.weights):
            log.info("smoke run: tiny random weights written to %s", root)
    weight_files = ensure_weights(root, mode.weights, variant, download=req.download)
    checkpoint = checkpoint_for(plan, weight_files)
    log.info("loading the %s weights from %s", mode.weights, root)
    host = req.low_vram or _staged(req, device)  # the placement moves each network in for its stage
    models = load_models(root, mode.weights, variant, device="cpu" if host else device, dtype=plan.dtype,
                         vae_dtype=resolve_vae_dtype(req.dtype, device, plan.dtype))
    if adapters:  # merged in order (W + sum of strength x delta); strength 0 skipped
        from ..lora import apply_stack

        apply_stack(models, adapters, keep_base=False)
    place = _memory_options(req, models, device, settings)
    if req.compile:  # after the LoRA merge and fp8 storage: the blocks are traced as they will run
        compile_denoiser(models)
    stages.mark("load_weights")
    if plan.audio is None:  # landmark-only driving: the model's unconditional audio
        from ..audio.unconditional import UnconditionalAudio

        feats = UnconditionalAudio(settings.num_frames, settings.fps)
    else:
        if place is not None:
            place.enter("audio")
        feats = encode_audio(plan.audio, models.audio_encoder, sample_rate=plan.sample_rate, device=device,
                             frames=settings.num_frames, fps=settings.fps, mel_peak=plan.mel_peak)
    stages.mark("audio_features")
    with Mp4Writer(plan.output, settings.fps, plan.audio, plan.sample_rate) as writer:
        sink = paste_back_sink(prepared.crop, plan.reference, writer.sink) if req.paste_back else writer.sink
        result = Sampler(models, place)(prepared.reference, feats, prepared.condition, settings, progress=progress,
                                        frame_sink=sink, resume=checkpoint)
        out = writer.commit()
    if checkpoint is not None:
        checkpoint.discard()
    stages.mark("sample_decode_write")
    log.info("stage seconds: %s", ", ".join(f"{k} {v:g}" for k, v in stages.seconds.items()))
    summary = {"output": str(out), "frames": result.num_frames, "seconds": round(time.time() - t0, 2), "stages_s": stages.seconds,
               "video_seconds": round(result.num_frames / settings.fps, 3), "peak_rss_gb": round(_peak_rss_gb(), 2)}
    if checkpoint is not None and checkpoint.resumed_from is not None:
        summary["resumed_after_step"] = checkpoint.resumed_from + 1
    if device.type == "cuda":
        summary["peak_vram_gb"] = round(torch.cuda.max_memory_allocated(device) / 1024**3, 2)
    return summary
