"""Headless EchoMimicV3 flash-pro: files in, mp4 out (``echomimic animate --version v3-flash``).

Models folder layout (``<models>/v3-flash/``; every name as the releases ship it):

    Wan2.1-Fun-V1.1-1.3B-InP/   config.json, diffusion_pytorch_model.safetensors, Wan2.1_VAE.pth
    echomimicv3-flash-pro/      diffusion_pytorch_model.safetensors (full or audio-only)
    chinese-wav2vec2-base/      Hugging Face wav2vec2 folder
    umt5-xxl/                   Hugging Face UMT5EncoderModel + tokenizer
    clip-vit-h-14/              Hugging Face CLIPVisionModel (ViT-H/14)
    vae/                        optional diffusers AutoencoderKLWan folder, used when Wan2.1_VAE.pth is absent

Where each comes from: :mod:`..models.wan.sources`; ``echomimic download --weights v3-flash`` fetches them.

Frames: as the official CLI, at most one 81-frame shot of the speech (``(F - 1) // 4 * 4 + 1``); asking for
more (``length`` > 81) renders the whole request in chunks re-anchored on the reference (:mod:`.long`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import EchoMimicError


@dataclass
class V3Request:
    reference: str
    audio: str
    output: str
    models: str  # the v3-flash folder
    prompt: str = "A person is speaking."
    steps: int = 8
    audio_cfg: float = 3.0
    seed: int = 43
    size: tuple[int, int] = (768, 768)  # target area (width, height) of the size rule
    length: int = 0  # 0: one shot (<= 81 frames); more than 81: chunked
    teacache: str = "official"
    color_transfer: bool = True
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    download: bool = True  # fetch missing files from Hugging Face first (the command line: unless --offline or --smoke)


def model_files(root: Path, download: bool = False) -> dict:
    """The set's files in ``root``; missing ones are downloaded first when ``download`` (else the error lists each
    missing file, where it was looked for and where to get it)."""
    from ..model_set import ensure_v3

    return ensure_v3(root, download=download)


def run_v3(req: V3Request, progress=None) -> dict:
    from .animate_checks import check_output, read_reference, read_speech
    from ..audio.wav2vec import FPS, frame_count, load_wav2vec, prepare_samples, resample_16k
    from ..models.wan import load_v3_transformer
    from ..models.wan.vae import load_wan_vae
    from ..io.video_writer import Mp4Writer
    from ..pipeline.wan.encoders import clip_features, encode_prompt
    from ..pipeline.wan.long import iter_long
    from ..pipeline.wan.sampler import V3Settings, generate, resize_reference, sample_size

    t0 = time.time()
    out = check_output(req.output)
    ref = read_reference(req.reference)
    wav, sr, raw = read_speech(req.audio)
    if req.steps < 1 or req.steps > 200:
        raise EchoMimicError(f"--steps {req.steps}: give 1..200 (flash-pro default 8)")
    files = model_files(Path(req.models), download=req.download)  # the inputs are checked before any download
    mono = raw.samples.mean(axis=0).astype(np.float32)
    seconds = mono.shape[0] / raw.sample_rate
    cap = max(81, int(req.length or 0))
    frames = frame_count(seconds, cap)
    if req.length and req.length < frames:
        frames = frame_count(req.length / FPS, req.length)
    h, w = sample_size(ref.shape[1], ref.shape[0], req.size)
    ref_u8 = resize_reference(ref, h, w)
    dev = torch.device(req.device)
    prompt = encode_prompt(files["umt5"], req.prompt, cache_dir=Path(req.models) / "prompt_cache", device=dev, dtype=req.dtype)
    clip = clip_features(files["clip"], ref_u8, device=dev, dtype=req.dtype)
    model, report = load_v3_transformer(files["base"], files["flash"], dtype=req.dtype, device=dev)
    vae = load_wan_vae(files["vae"], dtype=req.dtype, device=dev)
    enc = load_wav2vec(files["wav2vec2"])  # fp32 on the CPU, as the official
    samples = prepare_samples(resample_16k(mono, raw.sample_rate), frames)
    settings = V3Settings(steps=req.steps, audio_cfg=req.audio_cfg, seed=req.seed, teacache=req.teacache,
                          teacache_skip_start=min(5, req.steps), color_transfer=req.color_transfer)
    writer = Mp4Writer(out, FPS, audio=wav, sample_rate=sr)
    try:
        if frames <= 81:
            res = generate(model, vae, ref_u8, prompt, clip, enc.windows(samples, frames), settings)
            writer.write(res.frames)
        else:
            for block in iter_long(model, vae, enc, ref_u8, prompt, clip, samples, frames, settings):
                writer.write(block)
                if progress:
                    progress(writer.frames_written, frames)
        path = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return {"output": str(path), "frames": frames, "size": [w, h], "video_seconds": round(frames / FPS, 2),
            "seconds": round(time.time() - t0, 1), "weights": report.summary()}
