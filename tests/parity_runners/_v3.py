"""Helpers shared by the V3 parity runners: the fixture's tiny flash-pro model set."""
from __future__ import annotations

import json

from ._common import ParityCase


def model_paths(case: ParityCase) -> dict:
    """base folder, flash file, wav2vec2 folder of the case's model set (from the models manifest)."""
    md = case.models_dir
    return {"base": md / "Wan2.1-Fun-V1.1-1.3B-InP",
            "flash": md / "echomimicv3-flash-pro" / "diffusion_pytorch_model.safetensors",
            "wav2vec2": md / "chinese-wav2vec2-base",
            "vae": md / "Wan2.1-Fun-V1.1-1.3B-InP" / "Wan2.1_VAE.pth",
            "manifest": json.loads((md / "manifest.json").read_text()) if (md / "manifest.json").is_file() else {}}


def load_transformer(case: ParityCase):
    from echomimic_lib.models.wan import load_v3_transformer

    p = model_paths(case)
    for key in ("base", "flash"):
        assert p[key].exists(), f"fixture model missing: {p[key]}"
    model, report = load_v3_transformer(p["base"], p["flash"])
    return model, report
