"""Everything about an ``echomimic animate`` job that can be checked without weights, checked first.

:func:`preflight` validates the numbers (size, fps, steps, cfg, length, context windows, seed), the
mode and its condition inputs, the device, precision and speed options (:mod:`echomimic_lib.speed`),
the output path (:mod:`.output_file`), the reference image (:mod:`.reference_input`) and the audio
(readable, long enough, not silent: the same rule as the ComfyUI node), works out the frame count, and
finds the MediaPipe face model the mode needs in the models folder (:mod:`.models_folder`). Only then
does :func:`echomimic_lib.jobs.animate.run` load weights. Messages name the command-line flag and the
fix. The ranges are the ComfyUI nodes'.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError, MissingWeightsError
from ..io.os_errors import missing_text
from ..modes import MAX_STEPS, check_frame_rate, get_mode
from ..speed import check_deep_cache, check_speed_options
from ..temporal import STABILIZE_DEFAULT, check_level
from .models_folder import default_models_dir, dwpose_roots, gesture_library_dirs, models_root
from .output_file import check_output
from .pose_sources import AUTO_POSE  # --pose auto: hand poses generated from the speech
from .reference_input import check_reference_size, read_reference
from .speech_input import frame_count, read_speech
from . import speech_length

log = logging.getLogger(__name__)

SIZE_RANGE = (64, 2048)  # px per side (the nodes' widget range)
MAX_CFG = 20.0
MAX_CONTEXT = 32  # the motion modules' position table
MAX_LORA_STRENGTH = 2.0  # the loader node's range
SMOKE = {"width": 64, "height": 64, "steps": 2, "seconds": 1.0}


@dataclass
class Plan:
    request: object  # the AnimateRequest, with resolved paths filled in (mediapipe_model, face_crop)
    mode: object
    variant: str
    settings: object  # SampleSettings with num_frames set
    device: object  # torch.device
    dtype: object  # torch.dtype
    output: Path
    reference: np.ndarray
    audio: np.ndarray  # (C, T) float32
    sample_rate: int
    audio_seconds: float
    models_root: Path
    mel_peak: float | None = None  # audio is the start of a longer track (--length): its whole log-mel maximum


def estimate_memory_gb(width: int, height: int, context_frames: int, cfg: float, dtype) -> float:
    """Rough peak accelerator memory with the official weights: weights + one context window's activations.

    Anchors (docs: performance notes): weights ~2.25 B parameters; one denoiser call at 512 px, 12 frames
    with CFG ~3.9 GB of activations in fp32, growing with pixels and frames."""
    import torch

    nbytes = torch.finfo(dtype).bits / 8
    weights = 2.25e9 * nbytes / 1e9
    act = 3.94 * (width * height) / 512**2 * context_frames / 12 * (1.0 if cfg > 1 else 0.5) * nbytes / 4
    return weights + act + 1.0


def _number(value, flag: str, kind=float, finite: bool = True):  # finite=False: the caller's range check names the range
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise EchoMimicError(f"{flag} must be a number, got {value!r}.") from None
    if finite and isinstance(out, float) and not math.isfinite(out):
        raise EchoMimicError(f"{flag} must be a finite number, got {value!r}.")
    return out


def check_lora_strength(value) -> float:
    """``--lora-strength`` (V1/V2 and V3): a number in the loader nodes' range."""
    strength = _number(value, "--lora-strength")
    if not -MAX_LORA_STRENGTH <= strength <= MAX_LORA_STRENGTH:
        raise EchoMimicError(f"--lora-strength {strength:g}: use -{MAX_LORA_STRENGTH:g}..{MAX_LORA_STRENGTH:g} (1 = as trained, 0 = the "
                             "base model), the range of the loader node.")
    return strength


def check_lora_stack(lora, strength) -> list:
    """Every ``--lora-strength`` in range, one per ``--lora`` or one for all, no file twice (:mod:`.lora_args`; no file read)."""
    from .lora_args import lora_stack, strengths_of

    for value in strengths_of(strength):
        check_lora_strength(value)
    return lora_stack(lora, strength)


def check_side(value, flag: str, limit: bool = True) -> int:
    """One side of a frame in pixels: a whole multiple of 8 from 64 to 2048 (the nodes' widget range). Every command
    that takes --width / --height says the same; ``limit=False`` leaves the upper bound to the caller (animate names
    the memory it would need)."""
    v = _number(value, flag, float)
    if v != int(v):
        raise EchoMimicError(f"{flag} {value}: a whole number of pixels, a multiple of 8 (e.g. {flag} 512).")
    v = int(v)
    if v % 8:
        near = [c for c in (v // 8 * 8, v // 8 * 8 + 8) if SIZE_RANGE[0] <= c <= SIZE_RANGE[1]] or [SIZE_RANGE[0]]
        raise EchoMimicError(f"{flag} {v}: width and height must be positive multiples of 8 (the VAE works on 8-px "
                             f"blocks: {v} is not a multiple of 8); try {flag} {' or '.join(map(str, near))}.")
    if v < SIZE_RANGE[0]:
        raise EchoMimicError(f"{flag} {v}: at least {SIZE_RANGE[0]} px (the networks need 8 latent pixels); use {flag} 64 or more.")
    if limit and v > SIZE_RANGE[1]:
        raise EchoMimicError(f"{flag} {v}: at most {SIZE_RANGE[1]} px per side, as `echomimic animate` (V1 renders 512, "
                             f"V2 768); use e.g. {flag} 512.")
    return v


def _check_size(width, height, context_frames, cfg, dtype) -> None:
    for flag, v in (("--width", width), ("--height", height)):
        check_side(v, flag, limit=False)
    if max(width, height) > SIZE_RANGE[1]:
        need = estimate_memory_gb(width, height, context_frames, cfg, dtype)
        raise EchoMimicError(f"{width}x{height} is larger than {SIZE_RANGE[1]} px per side: it would need about {need:.0f} GB of "
                             f"memory with the official weights ({str(dtype).replace('torch.', '')}), and the models were "
                             "trained at 512 (V1) / 768 (V2) px. Use at most 2048, e.g. --width 512 --height 512.")


def check_fps(value) -> float:
    """``--fps``: the sampler's rule and words (:func:`echomimic_lib.modes.check_frame_rate`, as the nodes say it)."""
    return check_frame_rate(value, "--fps")


def check_numbers(req, mode, variant: str, dtype, zero_default: bool = True):
    """-> SampleSettings (num_frames left unset). 0 means 'the default' for steps, cfg and length, as in the node;
    ``zero_default=False`` (dub): None is the default, ``--steps 0`` is refused and ``--cfg 0`` switches guidance off."""
    from ..pipeline import settings_for

    fps = check_fps(req.fps)
    default = "0 = the default" if zero_default else "left out: the default"
    steps = _number(req.steps or 0, "--steps", int)
    if not ((0 if zero_default else 1) <= steps <= MAX_STEPS or req.steps is None):
        raise EchoMimicError(f"--steps {req.steps}: use 1..{MAX_STEPS} denoising steps ({default}: 30, or 6 with --acc).")
    cfg = _number(req.cfg or 0, "--cfg", finite=False)
    if not 0 <= cfg <= MAX_CFG:  # (nan too)
        raise EchoMimicError(f"--cfg {req.cfg}: guidance must be between 0 and {MAX_CFG:g} ({default}: 2.5, or 1 with "
                             "--acc; 1 or less switches guidance off).")
    length = _number(req.length or 0, "--length", int)
    if not 0 <= length <= speech_length.MAX_LENGTH:  # (read now: one bound, wherever it is set)
        raise EchoMimicError(f"--length {req.length}: the number of frames must be 0 (follow the audio) .. "
                             f"{speech_length.MAX_LENGTH}.")
    ctx = _number(req.context_frames, "--context-frames", int)
    if not 1 <= ctx <= MAX_CONTEXT:
        raise EchoMimicError(f"--context-frames {req.context_frames}: use 1..{MAX_CONTEXT} frames per window (default 12; "
                             "the motion modules know 32 positions).")
    overlap = _number(req.context_overlap, "--context-overlap", int)
    if not 0 <= overlap < ctx:
        raise EchoMimicError(f"--context-overlap {req.context_overlap}: must be 0..{ctx - 1} (smaller than --context-frames "
                             f"{ctx}); the default is 3.")
    check_lora_stack(getattr(req, "lora", None), getattr(req, "lora_strength", 1.0))
    seed = None if req.seed is None else _number(req.seed, "--seed", int)
    if seed is not None and not 0 <= seed < 2**64:
        raise EchoMimicError(f"--seed {req.seed}: use a whole number from 0 to 2^64-1.")
    deep_cache, branch = check_deep_cache(getattr(req, "deep_cache", 0), getattr(req, "deep_cache_branch", 0))
    width = mode.size if req.width is None else _number(req.width, "--width", int)
    height = mode.size if req.height is None else _number(req.height, "--height", int)
    cfg = None if req.cfg is None or (zero_default and not cfg) else cfg
    settings = settings_for(mode.name, variant, steps=steps or None, cfg=cfg, seed=seed, fps=fps, width=width,
                            height=height, context_frames=ctx, context_overlap=overlap,
                            cuda_graphs=bool(getattr(req, "cuda_graphs", False)), deep_cache=deep_cache,
                            deep_cache_branch=branch)
    _check_size(settings.width, settings.height, ctx, settings.cfg, dtype)
    settings.validate()
    return settings, (length or None)



def check_condition_inputs(req, mode) -> None:
    if mode.condition == "hand_pose" and not req.pose:
        raise EchoMimicError("V2 half-body mode needs a hand-pose sequence: pass --pose DIR (a released pose folder or .npz), "
                             "--pose VIDEO (poses extracted from a driving video) or --pose auto (gestures from the speech).")
    if mode.condition == "landmarks" and not req.landmarks:
        raise EchoMimicError(f"mode {mode.name} needs driving landmarks: pass --landmarks VIDEO, a saved FILE.npz/.json "
                             "(`echomimic landmarks VIDEO -o FILE.npz`) or a folder of V1 .pkl frames.")
    if req.pose and mode.condition != "hand_pose":
        raise EchoMimicError(f"--pose is for V2 half-body mode, but the mode is {mode.name}; use --version v2 (--mode halfbody).")
    if req.landmarks and mode.condition != "landmarks":
        raise EchoMimicError(f"--landmarks drives the V1 landmark modes, but the mode is {mode.name}; use --mode landmarks or audio+landmarks.")
    for flag, value in (("--pose", None if req.pose == AUTO_POSE else req.pose), ("--landmarks", req.landmarks)):
        if value and not Path(value).exists():
            raise EchoMimicError(f"{flag} {value}: {missing_text(value, 'not found')}; give an existing file or folder.")
    if req.landmarks and mode.condition == "landmarks":  # a saved sequence read, a video probed: before MediaPipe and weights
        from .video_inputs import check_landmark_source

        check_landmark_source(req.landmarks)
    if req.pose and req.pose != AUTO_POSE:
        from .pose_sources import check_dwpose_models, check_pose_frame, check_pose_video, is_pose_video

        if is_pose_video(req.pose):  # --pose VIDEO: DWPose extraction on the fly (echomimic_lib.jobs.pose_sources)
            check_pose_video(req.pose)
            check_dwpose_models(dwpose_roots(req), req.download)
        check_pose_frame(req.pose)
    dwpose_flags = [f for f, on in (("--halfbody-crop", getattr(req, "halfbody_crop", False)),
                                    ("--align-poses", getattr(req, "align_poses", False))) if on]
    if dwpose_flags and mode.condition == "hand_pose":  # the reference's body found by DWPose: its models checked now
        from .pose_sources import check_dwpose_models

        what = " and ".join(dwpose_flags)
        check_dwpose_models(dwpose_roots(req), req.download, "--smoke" if getattr(req, "smoke", False) else "--offline",
                            fetch=True, lead=f"{what} need{'' if len(dwpose_flags) > 1 else 's'} DWPose: ",
                            alternative=f"; or leave out {what}")
    check_stabilize(getattr(req, "stabilize", STABILIZE_DEFAULT), mode)
    check_gesture_inputs(req, mode)


def check_stabilize(level, mode) -> str:
    """``--stabilize``: a known level, and only where driving keypoints are drawn (V1 landmark modes, V2 poses)."""
    check_level(level, "--stabilize")
    if level != STABILIZE_DEFAULT and mode.condition not in ("landmarks", "hand_pose"):
        raise EchoMimicError(f"--stabilize steadies driving landmarks (V1 --mode landmarks / audio+landmarks) or V2 hand "
                             f"poses; mode {mode.name} draws neither: leave it out.")
    return level


def check_expressiveness(expr) -> float:
    """``--expressiveness`` of gestures from the speech: 0 (calm) .. 2 (lively)."""
    if not (isinstance(expr, (int, float)) and 0.0 <= expr <= 2.0):
        raise EchoMimicError(f"--expressiveness {expr}: use a number from 0 (calm) to 2 (lively); the default is 1.")
    return expr


def check_gesture_inputs(req, mode) -> None:
    """``--pose auto`` / ``--retime continue`` / ``--gesture-library``: V2 only, and a library that holds pose sequences."""
    if getattr(req, "retime", None) == "continue" and mode.condition != "hand_pose":
        raise EchoMimicError("--retime continue carries V2 hand poses on with gestures from the speech; for landmarks use "
                             "ping-pong, loop, hold-last, stretch or fail.")
    check_expressiveness(getattr(req, "expressiveness", 1.0))
    if req.pose == AUTO_POSE or getattr(req, "gesture_library", None):
        from ..pose.gestures import find_sources

        if mode.condition != "hand_pose":
            raise EchoMimicError("--pose auto and --gesture-library are for V2 half-body mode; use --version v2.")
        for d in gesture_library_dirs(req):
            try:
                find_sources(d)
            except EchoMimicError as exc:
                raise EchoMimicError(f"{exc} (--pose auto takes gestures from --gesture-library DIR, default the models "
                                     "folder's poses/.)") from None


def find_face_model(req, root: Path):
    """(request with mediapipe_model / face_crop resolved). A smoke run without the model falls back to the whole image."""
    needs = (get_mode(req.mode).condition in ("face_mask", "landmarks") and req.face_crop) or (  # V1 modes crop the face
        get_mode(req.mode).condition == "landmarks" and req.landmarks and not Path(req.landmarks).is_dir())
    if not needs:
        return req
    from ..landmarks.mp_models import resolve_model

    folders = [root] + ([default_models_dir()] if getattr(req, "smoke", False) else [])
    try:
        path = resolve_model("face_landmarker", req.mediapipe_model, folders, download=req.download)
        from ..landmarks.mp_models import import_mediapipe

        import_mediapipe()
    except EchoMimicError as exc:
        from_video = get_mode(req.mode).condition == "landmarks" and not Path(req.landmarks).is_dir()
        if getattr(req, "smoke", False) and not from_video:  # only the face crop needs it: use the whole image
            log.warning("smoke run: no MediaPipe face model (%s); animating the whole image instead of a face crop.",
                        str(exc).split(";")[0])
            return replace(req, face_crop=False)
        alternatives = (" (Without --offline it is downloaded once.)" if not req.download and isinstance(exc, MissingWeightsError)
                        and not req.mediapipe_model else "")
        alternatives += " Or pass --mediapipe-model FILE" + (", or --no-face-crop to animate the whole image."
                                                            if req.face_crop and get_mode(req.mode).condition != "hand_pose" else ".")
        if isinstance(exc, MissingWeightsError):
            raise MissingWeightsError(f"{exc}{alternatives}", exc.missing) from exc
        raise EchoMimicError(f"{exc}{alternatives}") from exc
    return replace(req, mediapipe_model=str(path))


def preflight(req, reads=None) -> Plan:
    """Check the whole request without loading any weight; returns the :class:`Plan` to run (``reads``: the
    (reference, speech) readers, for a batch's plan that reads each shared file once: jobs.batch.plan)."""
    from ..devices import resolve_device, resolve_dtype

    mode = get_mode(req.mode)
    variant = "acc" if req.acc else "normal"
    device = resolve_device(req.device)
    dtype = resolve_dtype(req.dtype, device)
    check_speed_options(device, compile=req.compile, cuda_graphs=req.cuda_graphs, low_vram=req.low_vram)
    smoke_length = req.smoke and not req.length  # (the smoke run's first second: no --length to name)
    if req.smoke:
        req = replace(req, width=req.width or SMOKE["width"], height=req.height or SMOKE["height"],
                      steps=req.steps or SMOKE["steps"], download=False,
                      length=req.length or max(1, round(SMOKE["seconds"] * check_fps(req.fps))))
    settings, length = check_numbers(req, mode, variant, dtype)
    check_condition_inputs(req, mode)
    output = check_output(req.output, {"--reference": req.reference, "--audio": req.audio, "--landmarks": req.landmarks})
    from .resume_plan import check_request

    check_request(req)  # --resumable: no DeepCache, and a state file name that can be written
    ref_reader, speech_reader = reads or (read_reference, read_speech)
    reference = ref_reader(req.reference)
    check_reference_size(reference, req.reference)
    if req.audio is None:  # landmark-only driving (the paper's "L" mode): the length of the driving sequence
        if mode.name != "v1-landmarks":
            raise EchoMimicError(f"--audio is needed for mode {mode.name}; only --mode landmarks runs without audio "
                                 "(landmark-only driving, the mouth from the landmarks).")
        from ..audio.unconditional import UnconditionalAudio

        wav, sr, settings.num_frames = None, None, UnconditionalAudio.for_driving(req.landmarks, settings.fps, length).num_frames
        seconds = settings.num_frames / settings.fps
    else:
        wav, sr, raw = speech_reader(req.audio, settings.fps, length)
        settings.num_frames = frame_count(raw, settings.fps, length, smoke=smoke_length)
        seconds = getattr(raw, "whole_samples", raw.samples.shape[1]) / sr  # (a long track's start: the whole track's)
    root = models_root(req)
    req = find_face_model(req, root)
    return Plan(req, mode, variant, settings, device, dtype, output, reference, wav, sr, seconds, root,
                getattr(raw, "mel_peak", None) if req.audio is not None else None)
