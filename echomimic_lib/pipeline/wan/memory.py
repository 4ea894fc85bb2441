"""Activation memory of an EchoMimicV3 flash-pro shot, for ComfyUI's ``load_models_gpu(memory_required=...)``.

Linear in the work, with constants from ``bench/bench_vram_v3.py`` (full-size networks, bf16, flash attention):
the denoiser holds about 18.2 bytes per (token x hidden channel x dtype byte) at its peak (55.9-56.4 KB per token
at dim 1536 for 512 and 768 px, 41 and 81 frames); the diffusers Wan VAE about 41 (encode) and 56 (decode) bytes
per (pixel x base channel x dtype byte), nearly independent of the frame count (per-frame caches).
"""
from __future__ import annotations

import torch

DENOISE = 18.2
VAE_ENCODE = 41.0
VAE_DECODE = 56.0


def _size(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def denoise_bytes(cfg, frames: int, height: int, width: int, dtype=torch.bfloat16) -> int:
    """Peak activations of one transformer call (the two CFG passes run one after the other)."""
    tokens = ((frames - 1) // cfg.vae_scale + 1) * (height // 16) * (width // 16)
    return int(DENOISE * tokens * cfg.dim * _size(dtype))


def vae_bytes(height: int, width: int, base_dim: int = 96, dtype=torch.bfloat16, decode: bool = True) -> int:
    return int((VAE_DECODE if decode else VAE_ENCODE) * height * width * base_dim * _size(dtype))
