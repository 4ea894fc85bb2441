"""Tiny random EchoMimicV3 flash-pro transformers for the V3 unit tests (official key layout)."""
from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from echomimic_lib.models.wan import AudioProjConfig, WanV3Config, WanV3Transformer
from echomimic_lib.models.wan.loader import is_audio_key

TINY = WanV3Config(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16, text_len=24, clip_dim=24, clip_tokens=257,
                   audio=AudioProjConfig(blocks=2, channels=8, intermediate_dim=16, output_dim=32, context_tokens=2))


def tiny_model(seed: int = 0, cfg: WanV3Config = TINY) -> WanV3Transformer:
    torch.manual_seed(seed)
    model = WanV3Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # no zero-initialised layers: every path matters
            p.copy_(torch.randn_like(p) / max(1, p.shape[-1]) ** 0.5)
    return model


def official_config(cfg: WanV3Config = TINY) -> dict:
    return {"_class_name": "WanModel", "model_type": "i2v", "dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim,
            "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "in_dim": cfg.in_dim, "out_dim": cfg.out_dim,
            "text_dim": cfg.text_dim, "text_len": cfg.text_len, "eps": cfg.eps}


def write_release(model: WanV3Transformer, root, v3_keys: str = "full"):
    """Base folder (no audio keys, fp16) + V3 file (``full``: every key; ``audio``: audio keys only)."""
    sd = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    base = root / "Wan2.1-Fun-V1.1-1.3B-InP"
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.json").write_text(json.dumps(official_config(model.cfg)))
    save_file({k: v for k, v in sd.items() if not is_audio_key(k)}, str(base / "diffusion_pytorch_model.safetensors"))
    v3 = root / "echomimicv3-flash-pro" / "diffusion_pytorch_model.safetensors"
    v3.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd if v3_keys == "full" else {k: v for k, v in sd.items() if is_audio_key(k)}, str(v3))
    return base, v3, sd


def inputs(cfg: WanV3Config = TINY, t_lat: int = 3, h: int = 4, w: int = 6, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    f = 4 * (t_lat - 1) + 1
    y = torch.randn(1, 20, t_lat, h, w, generator=g)
    return {"x": torch.randn(1, 16, t_lat, h, w, generator=g), "t": torch.tensor([999]),
            "context": torch.randn(1, 5, cfg.text_dim, generator=g), "clip_fea": torch.randn(1, 257, cfg.clip_dim, generator=g),
            "y": y, "audio_windows": torch.randn(1, f, 5, cfg.audio.blocks, cfg.audio.channels, generator=g)}
