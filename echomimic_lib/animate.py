"""The headless main job: reference image + audio (+ landmarks / poses) -> mp4 with the audio.

Used by ``echomimic animate``; every step is a library call, so scripts can do the same.
"""
from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import EchoMimicError
from .modes import DEFAULT_FPS, get_mode

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_models_dir() -> Path:
    return Path(os.environ.get("ECHOMIMIC_MODELS", Path.home() / ".cache" / "echomimic"))


@dataclass
class AnimateRequest:
    reference: str
    audio: str
    output: str
    mode: str = "v1-audio"
    acc: bool = False
    models: str | None = None
    landmarks: str | None = None  # driving video or folder of V1 .pkl frames
    parts: str | None = None  # comma-separated landmark parts
    pose: str | None = None  # V2 pose folder / .npz
    retime: str = "ping-pong"
    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    fps: float = DEFAULT_FPS
    width: int | None = None
    height: int | None = None
    length: int | None = None
    context_frames: int = 12
    context_overlap: int = 3
    dtype: str = "fp32"
    device: str = "cpu"
    download: bool = True
    face_crop: bool = True  # V1: crop the reference to the face (reference preprocessing)
    mediapipe_model: str | None = None


def read_image(path: str) -> np.ndarray:
    import cv2

    p = Path(path)
    if not p.is_file():
        raise EchoMimicError(f"reference image not found: {p}")
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise EchoMimicError(f"{p}: cannot be read as an image (unsupported or corrupt file).")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def plan(req: AnimateRequest):
    """Validate everything that can be checked before loading weights; returns (mode, settings)."""
    from .pipeline import settings_for

    mode = get_mode(req.mode)
    variant = "acc" if req.acc else "normal"
    settings = settings_for(mode.name, variant, steps=req.steps, cfg=req.cfg, seed=req.seed, fps=req.fps, width=req.width,
                            height=req.height, num_frames=req.length, context_frames=req.context_frames,
                            context_overlap=req.context_overlap)
    settings.validate()
    if req.dtype not in DTYPES:
        raise EchoMimicError(f"unknown dtype '{req.dtype}'; use fp32, fp16 or bf16.")
    if mode.condition == "hand_pose" and not req.pose:
        raise EchoMimicError("V2 half-body mode needs a hand-pose sequence: pass --pose DIR (a released pose folder or .npz).")
    if mode.condition == "landmarks" and not req.landmarks:
        raise EchoMimicError(f"mode {mode.name} needs driving landmarks: pass --landmarks VIDEO_OR_PKL_DIR.")
    if req.pose and mode.condition != "hand_pose":
        raise EchoMimicError(f"--pose is for V2 half-body mode, but the mode is {mode.name}; use --version v2 (--mode halfbody).")
    if req.landmarks and mode.condition != "landmarks":
        raise EchoMimicError(f"--landmarks drives the V1 landmark modes, but the mode is {mode.name}; use --mode landmarks or audio+landmarks.")
    if not Path(req.audio).is_file():
        raise EchoMimicError(f"audio file not found: {req.audio}")
    return mode, variant, settings


def build_condition(mode, req: AnimateRequest, reference: np.ndarray, num_frames: int, settings):
    """(prepared reference image at W x H, sampler condition) for the mode."""
    from .pipeline import MaskCondition, frames_condition

    w, h = settings.width, settings.height
    if mode.condition == "face_mask":
        from .landmarks import prepare_v1_reference

        if not req.face_crop:
            return _fit(reference, w, h), MaskCondition(np.full((h, w), 255, np.uint8))
        crop = prepare_v1_reference(reference, w, h, model_path=req.mediapipe_model, models_dir=_models_root(req))
        return crop.image, MaskCondition(crop.mask)
    if mode.condition == "landmarks":
        from .landmarks import conditions_from_driving_video, conditions_from_pkl_folder

        parts = req.parts.split(",") if req.parts else list(mode.landmark_parts)
        src = Path(req.landmarks)
        if src.is_dir():
            frames = conditions_from_pkl_folder(src, num_frames, (w, h), parts=parts, retime_policy=req.retime)
        else:
            frames, _ = conditions_from_driving_video(src, reference, num_frames, (w, h), parts=parts, retime_policy=req.retime,
                                                      out_fps=settings.fps, model_path=req.mediapipe_model)
        return _fit(reference, w, h), frames_condition(frames)
    # V2 half-body: the pose sequence drawn per context window (memory flat in video length)
    from .pipeline import FrameCondition
    from .pose import draw_hands_batch, load_pose

    seq = load_pose(req.pose).retime(num_frames, req.retime, out_fps=settings.fps)
    return _fit(reference, w, h), FrameCondition(len(seq), lambda idx: draw_hands_batch(seq, idx, (w, h)))


def _fit(image: np.ndarray, w: int, h: int) -> np.ndarray:
    from ._lazy import cv2

    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def _models_root(req: AnimateRequest) -> Path:
    return Path(req.models) if req.models else default_models_dir()


def run(req: AnimateRequest, progress: Callable[[int, int], None] | None = None) -> dict:
    """Render ``req.output``; returns a summary dict (frames, seconds, peak memory)."""
    from .audio import encode_audio
    from .download import ensure_weights
    from .model_set import load_models
    from .pipeline import Sampler
    from .video_io import read_audio, write_video

    t0 = time.time()
    mode, variant, settings = plan(req)
    reference = read_image(req.reference)
    wav, sr = read_audio(req.audio)
    root = _models_root(req)
    ensure_weights(root, mode.weights, variant, download=req.download)
    device = torch.device(req.device)
    models = load_models(root, mode.weights, variant, device=device, dtype=DTYPES[req.dtype])
    feats = encode_audio(wav, models.audio_encoder, sample_rate=sr, device=device)
    n = feats.frame_count(settings.fps) if settings.num_frames is None else min(settings.num_frames, feats.frame_count(settings.fps))
    ref_img, condition = build_condition(mode, req, reference, n, settings)
    settings.num_frames = n
    result = Sampler(models)(ref_img, feats, condition, settings, progress=progress)
    out = write_video(req.output, result.frames.numpy(), settings.fps, wav, sr)
    summary = {"output": str(out), "frames": result.num_frames, "seconds": round(time.time() - t0, 2),
               "video_seconds": round(result.num_frames / settings.fps, 3), "peak_rss_gb": round(_peak_rss_gb(), 2)}
    if device.type == "cuda":
        summary["peak_vram_gb"] = round(torch.cuda.max_memory_allocated(device) / 1024**3, 2)
    return summary
