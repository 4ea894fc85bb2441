"""EchoMimicV3 flash-pro: the mistakes a new user makes, each refused with the problem and its fix before any model
loads or expensive work (files of the wrong family, a V3 LoRA given to V1/V2, hours of speech), and the V3 Sampler's
host-memory check measured against what the node really holds."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from echomimic_lib.errors import EchoMimicError, WeightsError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- model folder mistakes
@pytest.fixture()
def release(tmp_path):
    from tests._v3_tiny import tiny_model, write_release

    base, v3, sd = write_release(tiny_model(), tmp_path / "rel", v3_keys="audio")
    return base, v3, sd


def _base_folder(tmp_path, name, weights: dict, config: dict | str | None) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


def test_a_foreign_or_half_downloaded_base_folder_is_named_with_the_fix(release, tmp_path):
    """An SD1.5 / V1-V2 file where the Wan base belongs (no config.json), a Wan text-to-video config and a cut
    config.json were a KeyError, a ValueError and a JSONDecodeError traceback."""
    from echomimic_lib.models.wan import load_v3_transformer
    from echomimic_lib.models.wan.loader import is_audio_key

    base, v3, sd = release
    sd15 = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}
    with pytest.raises(WeightsError, match=r"the base file has no 'patch_embedding.weight': not a Wan 2.1 transformer \(an "
                                           r"SD1.5 or EchoMimic V1/V2 file\?\).*echomimic download --weights v3-flash"):
        load_v3_transformer(_base_folder(tmp_path, "sd15", sd15, None), v3)
    cfg = json.loads((base / "config.json").read_text())
    t2v = {k: v for k, v in sd.items() if not is_audio_key(k)}
    with pytest.raises(WeightsError, match=r"config says 't2v'.*must be Wan2.1-Fun-V1.1-1.3B-InP \(image-to-video"):
        load_v3_transformer(_base_folder(tmp_path, "t2v", t2v, {**cfg, "model_type": "t2v"}), v3)
    cut = json.dumps(cfg)[:25]
    with pytest.raises(WeightsError, match=r"config.json: not a readable config.json .*Download it again"):
        load_v3_transformer(_base_folder(tmp_path, "cut", t2v, cut), v3)
    with pytest.raises(WeightsError, match=r"not a model config"):
        load_v3_transformer(_base_folder(tmp_path, "list", t2v, "[1, 2]"), v3)
    assert load_v3_transformer(base, v3)[0] is not None  # the release itself still loads


def test_a_v1_v2_file_as_the_v3_file_names_the_download(release, tmp_path):
    from echomimic_lib.models.wan import load_v3_transformer

    base, _, _ = release
    unet = tmp_path / "denoising_unet.pth"
    torch.save({"conv_in.weight": torch.zeros(8, 4, 3, 3)}, unet)
    with pytest.raises(WeightsError, match=r"not an EchoMimicV3 flash-pro transformer.*V1/V2 file has neither.*"
                                           r"echomimic download --weights v3-flash"):
        load_v3_transformer(base, unet)


# --------------------------------------------------------------------------------------------------- LoRA mix-ups
@pytest.mark.parametrize("layout", ["comfyui", "kohya", "diffusers", "v3-export"])
def test_a_wan_or_v3_lora_given_to_v1_v2_says_where_it_belongs(tmp_path, layout):
    """Was "not an EchoMimic LoRA ... (LoRAs for other models, e.g. SD1.5, do not fit)" -- also for the user's own
    ``echomimic-train v3-export`` file."""
    from echomimic_lib.lora.files import read_lora

    key = {"comfyui": "diffusion_model.blocks.0.self_attn.q", "kohya": "lora_unet_blocks_0_cross_attn_k",
           "diffusers": "transformer.blocks.0.attn1.to_q", "v3-export": "diffusion_model.blocks.3.ffn.0"}[layout]
    meta = {"format": "echomimic-v3-lora", "rank": "4"} if layout == "v3-export" else None
    path = tmp_path / f"{layout}.safetensors"
    save_file({f"{key}.lora_A.weight": torch.zeros(4, 32), f"{key}.lora_B.weight": torch.zeros(32, 4)}, str(path), metadata=meta)
    with pytest.raises(WeightsError, match=r"a Wan2.1 / EchoMimicV3 LoRA, not an EchoMimic V1/V2 adapter.*--version v3-flash "
                                           r"--lora \(ComfyUI: the EchoMimic V3 LoRA node\)"):
        read_lora(path)


def test_an_sd15_lora_still_gets_the_v1_v2_message(tmp_path):
    from echomimic_lib.lora.files import read_lora

    path = tmp_path / "sd.safetensors"
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{key}.lora_down.weight": torch.zeros(4, 32), f"{key}.lora_up.weight": torch.zeros(32, 4)}, str(path))
    with pytest.raises(WeightsError, match=r"not an EchoMimic LoRA .*e.g. SD1.5, do not fit"):
        read_lora(path)
