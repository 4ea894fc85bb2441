"""Activation memory of each generation stage, for the memory manager (``memory_required`` of ComfyUI's
``load_models_gpu``) and for sizing the VAE decode chunks.

The formulas are linear in the work: rows (batch x frames) x latent pixels x base channels x dtype size,
with constants measured by ``bench/bench_vram.py`` (the allocation tracker on the official-size
networks, SDPA flash / memory-efficient attention): the denoiser at 512 px and 768 px, with and without
CFG, agrees with ``ROW_DENOISE`` to 0.5 %. Weights are not included (the memory manager knows them).
"""
from __future__ import annotations

import torch

# bytes per (row x latent pixel x base channel x dtype byte), official SD1.5 layout (base channels 320)
ROW_DENOISE = 29.3  # one denoiser call: the peak inside the up blocks
REFERENCE = 36.0  # the reference UNet pass, bank included (one row)
KV = 17.6  # the projected reference keys/values, kept through the denoising stage
# bytes per (image pixel x VAE base channel x dtype byte), SD VAE (base channels 128)
VAE_ENCODE = 5.0
VAE_DECODE = 6.0
AUDIO = 64 * 2**20  # whisper-tiny on one 30-s segment (fp32), rounded up
LATENT_STATE = 5 * 4 * 4  # fp32 latents + CFG accumulators + scheduler temporaries: bytes per latent pixel per frame


def _dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _vae_base(vae) -> int:
    cfg = getattr(vae, "config", None)
    return int(cfg.block_out_channels[0]) if cfg is not None else 128


def _vae_dtype(vae) -> torch.dtype:
    return getattr(vae, "dtype", torch.float32)


def decode_frame_bytes(vae, height: int, width: int) -> int:
    return int(VAE_DECODE * height * width * _vae_base(vae) * _dtype_size(_vae_dtype(vae)))


def encode_frame_bytes(vae, height: int, width: int) -> int:
    return int(VAE_ENCODE * height * width * _vae_base(vae) * _dtype_size(_vae_dtype(vae)))


def denoise_rows(settings) -> int:
    cfg = 2 if settings.cfg > 1.0 else 1
    return cfg * max(1, int(settings.windows_per_batch)) * int(settings.context_frames)


def stage_bytes(stage: str, models, settings, frames: int | None = None) -> int:
    """Activation bytes a stage allocates on the compute device (0 when the settings are unknown)."""
    if stage == "audio":
        return AUDIO
    if settings is None:
        return 0
    h, w = int(settings.height), int(settings.width)
    p = (h // 8) * (w // 8)
    c0 = int(models.config.block_out_channels[0])
    s = _dtype_size(models.dtype)
    kv = int(KV * p * c0 * s)
    if stage == "vae_encode":
        return encode_frame_bytes(models.vae, h, w)
    if stage == "reference":
        return int(REFERENCE * p * c0 * s)
    if stage == "reference_kv":
        return 2 * kv
    if stage == "denoise":
        f = frames if frames is not None else (settings.num_frames or 0)
        return (int(ROW_DENOISE * denoise_rows(settings) * p * c0 * s) + kv + LATENT_STATE * p * int(f)
                + deep_cache_bytes(models.config, settings, int(f), s))
    if stage == "decode":
        return decode_frame_bytes(models.vae, h, w) * max(1, int(settings.decode_batch))
    raise ValueError(f"unknown stage '{stage}'")


def deep_cache_bytes(cfg, settings, frames: int, dtype_size: int) -> int:
    """DeepCache's per-frame store (``settings.deep_cache`` >= 2): (2 with CFG, else 1) x frames x the kept input of
    the branch's layer (:meth:`~echomimic_lib.config.EchoConfig.up_layer_input`), in the denoiser's dtype."""
    if int(getattr(settings, "deep_cache", 0)) < 2:
        return 0
    channels, halvings = cfg.up_layer_input(int(settings.deep_cache_branch))
    h, w = int(settings.height) // 8, int(settings.width) // 8
    for _ in range(halvings):
        h, w = (h + 1) // 2, (w + 1) // 2
    return (2 if settings.cfg > 1.0 else 1) * frames * channels * h * w * dtype_size


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
