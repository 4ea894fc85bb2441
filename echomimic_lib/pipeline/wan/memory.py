"""Activation memory of an EchoMimicV3 flash-pro shot, for ComfyUI's ``load_models_gpu(memory_required=...)``.

Linear in the work, with constants from ``bench/bench_vram_v3.py`` (full-size networks, bf16, flash attention):
the denoiser holds about 18.2 bytes per (token x hidden channel x dtype byte) at its peak (55.9-56.4 KB per token
at dim 1536 for 512 and 768 px, 41 and 81 frames); the diffusers Wan VAE about 41 (encode) and 56 (decode) bytes
per (pixel x base channel x dtype byte), nearly independent of the frame count (per-frame caches).
"""
from __future__ import annotations

import torch

DENOISE = 18.2
# bytes per frame value (frame x height x width x 3) the host holds while one chunk of frames is made: the decoded
# chunk in float32 (ComfyUI's VAE returns it on the CPU; 4), ``to_frames``' x255 float32 copy (4) and the uint8 frames
# (1) = 9, the previous chunk's frames still referenced (1) and the colour transfer's per-frame buffers the allocator
# keeps (about 1.5 at 320 px): 14 with room to spare. Measured in tests/test_v3_mistakes.py (peak resident memory)
HOST_CHUNK = 14
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


def chunk_host_bytes(frames: int, height: int, width: int) -> int:
    """Host memory of one chunk (at most 81 frames) while it is decoded and turned into uint8 frames."""
    return int(HOST_CHUNK * frames * height * width * 3)
