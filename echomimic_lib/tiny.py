"""``echomimic make-tiny``: a complete random-weight model folder in the official file layout, small
enough for CI. Every weight is random, including the outputs that are zero-initialised in a fresh
model, so every path of the networks is exercised.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from .config import TINY, EchoConfig, inference_config_dict, unet_config_dict
from .models import ConditionEncoder, EchoUNet
from .modes import WEIGHT_SETS
from .weights import save_state_dict

log = logging.getLogger(__name__)

TINY_VAE_CONFIG = dict(
    block_out_channels=[32, 32, 32, 32], down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    latent_channels=4, layers_per_block=1, norm_num_groups=32, sample_size=64, in_channels=3, out_channels=3,
)
# Per weight set: which weight sets of a version go where, and the dtype the official files use.
VERSION_SETS = {"v1": ("v1_audio", "v1_pose"), "v2": ("v2",)}
VERSION_DTYPE = {"v1": torch.float32, "v2": torch.float16}


@torch.no_grad()
def randomize_(module: nn.Module, seed: int, gain: float = 1.0) -> nn.Module:
    """Fill every parameter with a well-scaled random value (norm weights near 1, small biases)."""
    gen = torch.Generator().manual_seed(seed)
    norm_params = set()
    for m in module.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            norm_params.update(id(p) for p in m.parameters(recurse=False))
    for name, p in module.named_parameters():
        if id(p) in norm_params:
            base = 1.0 if name.endswith("weight") else 0.0
            scale = 0.1 if name.endswith("weight") else 0.05
            p.copy_(base + scale * torch.randn(p.shape, generator=gen))
        elif name.endswith("bias"):
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        else:
            fan_in = max(1, p[0].numel()) if p.dim() > 1 else p.numel()
            std = min(max(gain / fan_in**0.5, 0.02), 0.25)
            p.copy_(std * torch.randn(p.shape, generator=gen))
        p.copy_(p.half().float())  # exactly representable in fp16, like the fixtures
    return module


def _state(module: nn.Module, dtype: torch.dtype, only=None, exclude=None) -> dict:
    out = {}
    for k, v in module.state_dict().items():
        if only and only not in k or exclude and exclude in k:
            continue
        out[k] = v if k.endswith("pos_encoder.pe") else v.to(dtype)
    return out


def write_weight_set(folder: Path, weights: str, cfg: EchoConfig, seed: int, dtype: torch.dtype, fmt: str = ".pth") -> list[Path]:
    ws = WEIGHT_SETS[weights]
    written = []
    ref = randomize_(EchoUNet(cfg, "reference"), seed)
    written.append(save_state_dict(_state(ref, dtype), folder / f"{ws.reference}{fmt}"))
    for i, variant in enumerate(("normal", "acc")):
        files = ws.files(variant)
        den = randomize_(EchoUNet(cfg, "denoiser"), seed + 10 + i)
        written.append(save_state_dict(_state(den, dtype, exclude="motion_modules."), folder / f"{files['denoiser']}{fmt}"))
        written.append(save_state_dict(_state(den, dtype, only="motion_modules."), folder / f"{files['motion']}{fmt}"))
    enc = randomize_(ConditionEncoder(ws.cond_channels, cfg.cond_out_channels, cfg.cond_block_channels), seed + 20, gain=2.0)
    written.append(save_state_dict(_state(enc, dtype), folder / f"{ws.cond}{fmt}"))
    return written


def write_shared(root: Path, cfg: EchoConfig, seed: int) -> list[Path]:
    """VAE, whisper and the two config files that describe the tiny architecture."""
    from diffusers import AutoencoderKL

    from .audio.whisper import save_random_whisper

    root.mkdir(parents=True, exist_ok=True)
    vae = randomize_(AutoencoderKL(**TINY_VAE_CONFIG), seed + 30)
    vae.save_pretrained(str(root / "sd-vae-ft-mse"), safe_serialization=True)
    whisper = root / "audio_processor" / "whisper_tiny.pt"
    whisper.parent.mkdir(parents=True, exist_ok=True)
    save_random_whisper(whisper, seed=seed + 40)
    cfg_path = root / "sd-image-variations-diffusers" / "unet" / "config.json"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(json.dumps(unet_config_dict(cfg), indent=1))
    (root / "inference_config.json").write_text(json.dumps(inference_config_dict(cfg), indent=1))
    return [root / "sd-vae-ft-mse", whisper, cfg_path, root / "inference_config.json"]


def make_tiny(directory: str | Path, version: str | None = None, layout: str = "official", seed: int = 0,
              cfg: EchoConfig = TINY, fmt: str = ".pth") -> Path:
    """Write a tiny model folder.

    - ``version='v1'`` or ``'v2'`` with the official layout: that release's files flat in ``directory``
      (like its ``pretrained_weights/``), plus VAE, whisper and configs.
    - ``version=None``: both, in ``directory/v1`` and ``directory/v2`` with the shared parts beside them.
    - ``layout='comfyui'``: ``directory`` is ComfyUI's ``models/``; everything goes under
      ``models/echomimic/`` (both versions), and the VAE is also placed in ``models/vae/``.
    """
    directory = Path(directory)
    if layout not in ("official", "comfyui"):
        raise ValueError("layout must be 'official' or 'comfyui'")
    if version not in (None, "v1", "v2", "all"):
        raise ValueError("version must be v1, v2 or all")
    versions = ("v1", "v2") if version in (None, "all") or layout == "comfyui" else (version,)
    root = directory / "echomimic" if layout == "comfyui" else directory
    flat = layout == "official" and len(versions) == 1
    for i, v in enumerate(versions):
        folder = root if flat else root / v
        for j, weights in enumerate(VERSION_SETS[v]):
            write_weight_set(folder, weights, cfg, seed + 100 * (i * 2 + j), VERSION_DTYPE[v], fmt)
    write_shared(root, cfg, seed)
    if layout == "comfyui":
        from safetensors.torch import load_file

        vae_state = load_file(str(root / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"))
        save_state_dict(vae_state, directory / "vae" / "echomimic_tiny_vae.safetensors")
    log.info("tiny EchoMimic models written to %s", directory)
    return directory
