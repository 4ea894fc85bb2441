"""unet_forward: reference bank, condition features and denoiser predictions (CFG and single batch),
with weights read from both the official-format .pth files and the .safetensors copies."""
from __future__ import annotations

import json

import torch

from echomimic_lib.config import EchoConfig
from echomimic_lib.model_set import load_cond_encoder, load_denoiser, load_reference

from ._common import ParityCase, assert_close


def fixture_config(models_dir) -> EchoConfig:
    manifest_path = models_dir / "manifest.json"
    cond_channels = None
    if manifest_path.exists():
        cond_channels = json.loads(manifest_path.read_text()).get("cond_encoder_kwargs", {}).get("block_out_channels")
    unet = json.loads((models_dir / "unet" / "config.json").read_text())
    add = json.loads((models_dir / "inference_config.json").read_text()).get("unet_additional_kwargs")
    return EchoConfig.from_diffusers(unet, add, cond_block_channels=cond_channels)


def _weights(models_dir, stem: str, suffix: str):
    p = models_dir / f"{stem}{suffix}"
    assert p.exists(), f"fixture weight file missing: {p}"
    return p


def run(case: ParityCase, device: str = "cpu", formats=(".pth", ".safetensors")) -> None:
    """``device``: where the networks run (``cuda`` for the GPU check, TF32 off); ``formats``: which weight files."""
    md = case.models_dir
    cfg = fixture_config(md)
    inp = {k: v.to(device) for k, v in case.torch_tensors("inputs.safetensors").items()}
    bank_exp = case.torch_tensors("reference_bank.safetensors")
    exp = case.torch_tensors("expected.safetensors")
    t = inp["timestep"]
    t_ref = case.settings.get("reference_timestep", 0)
    for suffix in formats:
        ref = load_reference(_weights(md, "reference_unet", suffix), cfg, device)
        den = load_denoiser(_weights(md, "denoising_unet", suffix), _weights(md, "motion_module", suffix), cfg, device)
        with torch.no_grad():
            bank, _ = ref.forward_reference(inp["ref_latent"], t_ref)
            for key, value in bank_exp.items():
                if key.startswith("__"):
                    continue
                assert key in bank, f"{suffix}: reference bank lacks block {key}"
                assert_close(f"{suffix} bank {key}", bank[key], value, case.tolerance("reference_bank", 1e-5))
            kv = den.prepare_reference(bank)
            for vname, var in case.manifest["variants"].items():
                stem = var["cond_encoder"]
                cond_in = inp[var["cond_input"]]
                enc = load_cond_encoder(_weights(md, stem, suffix), cfg, channels=int(cond_in.shape[1]), device=device)
                feats = enc(cond_in.float() / 255.0)
                assert_close(f"{suffix} {var['cond_features']}", feats, exp[var["cond_features"]],
                             case.tolerance(var["cond_features"], case.tolerance("cond_features_*", 1e-5)))
                latents, audio = inp["latents"], inp["audio_cond"]
                if var["cfg_batch"]:
                    pred = den(latents.repeat(2, 1, 1, 1, 1), t, audio=audio, cond=feats, reference=kv, uncond_rows=1)
                else:
                    pred = den(latents, t, audio=audio, cond=feats, reference=kv)
                assert_close(f"{suffix} {vname} {var['expected']}", pred, exp[var["expected"]],
                             case.tolerance(var["expected"], case.tolerance("pred_*", 1e-4)))
