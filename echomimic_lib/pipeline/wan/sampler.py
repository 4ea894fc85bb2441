"""EchoMimicV3 flash-pro sampling: reference + speech + prompt embeddings -> video, as the official pipeline.

Official behaviour reproduced (``infer_flash.py``, ``pipeline_wan_fun_inpaint_audio_2512.py``):

* size rule (:func:`sample_size`): if the image has more pixels than ``target`` (768x768), scale it to that
  area; both sides rounded **down** to multiples of 16; the reference is resized with PIL LANCZOS;
* frame count ``4k + 1`` (:func:`check_frames`); latent frames ``(F - 1) / 4 + 1``;
* condition ``y`` (:func:`condition_latents`): 4 mask channels (the 4 video frames of each latent frame,
  frame 0 counted 4 times; 1 = known) + the VAE posterior mode of the "masked video": the reference as
  frame 0 and mid-grey (0 in [-1, 1]) for every unknown frame;
* audio-only CFG: two transformer calls per step, both with the **positive** prompt, audio windows and
  zero windows; ``guided = uncond + audio_cfg * (cond - uncond)``; the official ``guidance_scale`` only
  switches CFG on (> 1) and the negative prompt is never used, so neither exists here;
* Flow-UniPC with the official sigmas (:mod:`.scheduler`); TeaCache ``official`` or ``off`` (:mod:`.teacache`);
* decode one latent frame at a time (diffusers' Wan VAE), ``(x / 2 + 0.5).clamp(0, 1)``; frames as uint8
  by truncation; the official colour transfer to frame 0 on request (:mod:`.color`).

The noise is an input (the official CLI draws it on CUDA in bfloat16, which no CPU test can reproduce):
give ``noise`` or a ``seed`` for a CPU float32 draw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import EchoMimicError
from ...memory.fp8 import compute_param
from ...models.wan import vae as wan_vae
from ...models.wan.transformer import ROPE_POSITIONS
from .color import color_transfer
from .scheduler import DEFAULT_SHIFT, DEFAULT_STEPS, flow_unipc
from .teacache import DEFAULT_SKIP_START, DEFAULT_THRESHOLD, make_cache

SIZE_MULTIPLE = 16
MAX_SIDE = ROPE_POSITIONS * SIZE_MULTIPLE  # 16384 px: one position-table row per 16-px patch


def sample_size(width: int, height: int, target: tuple[int, int] = (768, 768)) -> tuple[int, int]:
    """Official size rule -> (height, width), both multiples of 16."""
    w, h = float(width), float(height)
    scaled = target[0] * target[1] < w * h
    if scaled:
        ratio = math.sqrt(w * h / target[0] / target[1])
        w, h = w / ratio, h / ratio
    if w < SIZE_MULTIPLE or h < SIZE_MULTIPLE:  # the specific reason: the picture itself, or the scaling to the target
        how = (f"scaled down to the {target[0]}x{target[1]} target area it is {int(w)}x{int(h)} px" if scaled else
               "it is never enlarged")
        fix = ("use a larger target size, or a less elongated picture" if scaled and min(width, height) >= SIZE_MULTIPLE else
               "use a larger picture")
        raise EchoMimicError(f"reference image {width}x{height} is too small: {how}, and both sides must be at least "
                             f"{SIZE_MULTIPLE} px; {fix}.")
    w, h = w // SIZE_MULTIPLE * SIZE_MULTIPLE, h // SIZE_MULTIPLE * SIZE_MULTIPLE
    if max(w, h) > MAX_SIDE:  # an elongated picture under the target area, kept at its size (was a torch shape error)
        raise EchoMimicError(f"reference image {width}x{height} would be rendered at {int(w)}x{int(h)} px, and EchoMimicV3 "
                             f"renders at most {MAX_SIDE} px a side (its position table holds {ROPE_POSITIONS} patches of "
                             f"{SIZE_MULTIPLE} px); crop it to a less elongated picture.")
    return int(h), int(w)


def resize_reference(image, height: int, width: int) -> np.ndarray:
    """PIL LANCZOS resize (as the official) of an RGB uint8 array or PIL image -> (H, W, 3) uint8."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    return np.asarray(img.convert("RGB").resize((width, height), resample=Image.Resampling.LANCZOS))


def check_frames(frames: int, vae_scale: int = 4) -> int:
    if frames < 1 or (frames - 1) % vae_scale:
        raise ValueError(f"{frames} frames: EchoMimicV3 needs {vae_scale}k+1 frames (e.g. 81, 77, ... 5, 1)")
    return (frames - 1) // vae_scale + 1


def mask_latents(known: list[bool], latent_hw: tuple[int, int], vae_scale: int = 4) -> torch.Tensor:
    """(1, 4, T, h, w) known-frame mask: channel c of latent frame j is video frame 1 + 4(j-1) + c known
    (latent frame 0: frame 0 four times). Equal to the official trilinear resize of per-frame masks."""
    t = check_frames(len(known), vae_scale)
    flags = torch.tensor([known[0]] * vae_scale + list(known[1:]), dtype=torch.float32).view(t, vae_scale).T
    return flags.view(1, vae_scale, t, 1, 1).expand(1, vae_scale, t, *latent_hw).contiguous()


def condition_latents(vae, ref_u8: np.ndarray, frames: int, known_frames: np.ndarray | None = None) -> torch.Tensor:
    """y (1, 4 + 16, T, H/8, W/8): mask + VAE mode of the reference (or ``known_frames`` (K, H, W, 3) uint8,
    placed at frames 0..K-1) followed by mid-grey frames."""
    known = known_frames if known_frames is not None else np.asarray(ref_u8)[None]
    k = known.shape[0]
    h, w = known.shape[1:3]
    check_frames(frames)
    video = torch.zeros(1, 3, frames, h, w)
    video[:, :, :k] = torch.from_numpy(np.array(known, dtype=np.uint8)).permute(3, 0, 1, 2).float().div(255).mul(2).sub(1)
    lat = wan_vae.encode_mode(vae, video)
    mask = mask_latents([i < k for i in range(frames)], tuple(lat.shape[-2:])).to(lat)
    return torch.cat([mask, lat], dim=1)


@dataclass
class V3Settings:
    steps: int = DEFAULT_STEPS
    shift: float = DEFAULT_SHIFT
    audio_cfg: float = 3.0  # official --audio_guidance_scale; <= 1 runs the audio pass only
    teacache: str = "official"  # "official" (the official CLI's forced default) or "off"
    teacache_threshold: float = DEFAULT_THRESHOLD
    teacache_skip_start: int = DEFAULT_SKIP_START
    color_transfer: bool = True  # official: every saved video
    seed: int = 43


@dataclass
class V3Result:
    latents: torch.Tensor
    video: torch.Tensor  # (1, 3, F, H, W) float in [0, 1]
    frames: np.ndarray  # (F, H, W, 3) uint8, colour-transferred if asked
    teacache_trace: list = field(default_factory=list)


def _noise(settings: V3Settings, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(settings.seed), dtype=torch.float32)


@torch.no_grad()
def sample_latents(model, y, prompt_embeds, clip_features, audio_windows, settings: V3Settings,
                   noise: torch.Tensor | None = None, trace=None, on_step=None) -> tuple[torch.Tensor, list]:
    """The denoising loop. ``trace(name, tensor)`` sees per-step cond/uncond/guided predictions and latents;
    ``on_step(done, total)`` is called after each step (progress; it may raise to cancel)."""
    p = compute_param(model)  # not an fp8-stored weight
    dev, dtype = p.device, p.dtype
    lat = (noise if noise is not None else _noise(settings, (1, model.cfg.out_dim, *y.shape[2:]))).to(dev, torch.float32)
    y, ctx, clip = y.to(dev, dtype), prompt_embeds.to(dev, dtype), clip_features.to(dev, dtype)
    windows = audio_windows.to(dev, dtype)
    tok_cond = model.audio_tokens(windows)
    do_cfg = settings.audio_cfg > 1.0
    tok_uncond = model.audio_tokens(torch.zeros_like(windows)) if do_cfg else None
    sched = flow_unipc(settings.steps, settings.shift, device=dev)
    cache = make_cache(settings.teacache, settings.steps, settings.teacache_threshold, settings.teacache_skip_start)
    for i, t in enumerate(sched.timesteps):
        x = lat.to(dtype)
        cond = model(x, t, ctx, clip, y, audio_tokens=tok_cond, cache=cache).float()
        guided = cond
        if do_cfg:
            uncond = model(x, t, ctx, clip, y, audio_tokens=tok_uncond, cache=cache).float()
            guided = uncond + settings.audio_cfg * (cond - uncond)
        lat = sched.step(guided, t, lat).prev_sample
        if trace is not None:
            trace(f"step{i}_cond_pred", cond)
            if do_cfg:
                trace(f"step{i}_uncond_pred", uncond)
            trace(f"step{i}_guided_pred", guided)
            trace(f"step{i}_latents", lat)
        if on_step is not None:
            on_step(i + 1, settings.steps)
    return lat, (cache.trace if cache is not None else [])


def to_frames(video: torch.Tensor) -> np.ndarray:
    """(1, 3, F, H, W) in [0, 1] -> (F, H, W, 3) uint8 by truncation (as the official saver)."""
    return (video[0].permute(1, 2, 3, 0).float().cpu().numpy() * 255).astype(np.uint8)


@torch.no_grad()
def generate(model, vae, ref_u8: np.ndarray, prompt_embeds, clip_features, audio_windows, settings: V3Settings,
             noise: torch.Tensor | None = None, trace=None, on_step=None, known_frames: np.ndarray | None = None) -> V3Result:
    """One flash-pro shot. ``ref_u8``: the reference already at the sample size (see :func:`sample_size`);
    ``audio_windows`` (1, F, 5, layers, C) decide the frame count F (4k+1). ``known_frames`` (K, H, W, 3) uint8: the
    shot's first K frames are given instead of the reference (a long clip continued, :mod:`.long`)."""
    frames = int(audio_windows.shape[1])
    check_frames(frames)
    h, w = ref_u8.shape[:2]
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(f"reference {w}x{h}: both sides must be multiples of {SIZE_MULTIPLE}; resize with sample_size()")
    y = condition_latents(vae, ref_u8, frames, known_frames)
    if trace is not None:
        trace("y", y)
    lat, tc = sample_latents(model, y, prompt_embeds, clip_features, audio_windows, settings, noise, trace, on_step)
    video = (wan_vae.decode(vae, lat) / 2 + 0.5).clamp(0, 1).float()
    frames_u8 = to_frames(video)
    if settings.color_transfer:
        frames_u8 = color_transfer(frames_u8)
    return V3Result(lat, video, frames_u8, tc)


def clip_image_tensor(ref_u8: np.ndarray) -> torch.Tensor:
    """(3, 1, H, W) in [-1, 1]: what the official pipeline gives its CLIP image encoder."""
    return torch.from_numpy(np.array(ref_u8, dtype=np.uint8)).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)[:, None]
