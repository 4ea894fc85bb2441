"""Issue 28, the ComfyUI side: a missing-weights message without command-line steps, size checks when the prompt is
queued, 'resize only' saying it stretches, a pose preview of a few frames, no accelerate warning per VAE read."""
from __future__ import annotations

import pytest
import torch

@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch):
    from tests._pack import sub

    c = sub("nodes.comfy_bridge")
    monkeypatch.setattr(c, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(c, "INPUT_DIR", tmp_path / "input")
    (tmp_path / "models" / "echomimic").mkdir(parents=True)
    return tmp_path / "models"


def test_comfyui_missing_weights_message_names_files_and_the_loader_switch_not_command_lines(comfy_dirs):
    from tests._pack import sub

    err = sub("echomimic_lib.errors").MissingWeightsError
    with pytest.raises(err) as info:
        sub("nodes.loader").resolve("v1_audio", "normal")
    msg = str(info.value)
    assert "denoising_unet.pth" in msg and "auto_download" in msg and "huggingface.co/BadToBest/EchoMimic" in msg
    assert "echomimic download" not in msg and "--models" not in msg and "--weights" not in msg


def test_size_and_window_problems_are_reported_when_the_prompt_is_queued():
    from tests._pack import sub

    sampler, prep = sub("nodes.sampler").EchoMimicSampler, sub("nodes.reference").EchoMimicReferencePrep
    assert sampler.VALIDATE_INPUTS(width=0, height=0, context_frames=12, context_overlap=3) is True
    assert sampler.VALIDATE_INPUTS(width=512, height=768, context_frames=12, context_overlap=3) is True
    assert "width 100" in sampler.VALIDATE_INPUTS(width=100, height=512, context_frames=12, context_overlap=3)
    assert "height 4096" in sampler.VALIDATE_INPUTS(width=512, height=4096, context_frames=12, context_overlap=3)
    assert "context_overlap 12" in sampler.VALIDATE_INPUTS(width=0, height=0, context_frames=12, context_overlap=12)
    assert sampler.VALIDATE_INPUTS(width=None, height=None) is True  # linked values: checked when the node runs
    assert prep.VALIDATE_INPUTS(width=512, height=512) is True
    assert "multiples of 8" in prep.VALIDATE_INPUTS(width=500, height=512)
    assert "height 32" in prep.VALIDATE_INPUTS(width=512, height=32)


def test_resize_only_says_when_it_stretches_the_picture(comfy_dirs, caplog):
    from tests._pack import sub

    prepare = sub("nodes.reference").prepare
    wide = torch.rand(1, 100, 200, 3)
    with caplog.at_level("WARNING"):
        image, _, _ = prepare(wide, "resize only", 64, 64, "error", False)
    assert image.shape == (1, 64, 64, 3)
    assert any("stretches the 200x100 picture to 64x64" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING"):
        prepare(wide, "resize only", 128, 64, "error", False)
    assert not [r for r in caplog.records if "stretches" in r.getMessage()]


def test_the_pose_preview_is_a_few_frames_not_the_whole_sequence(shared_data):
    from tests._pack import sub

    seq = sub("echomimic_lib.pose").load_pose(shared_data / "pose" / "01")
    preview = sub("nodes.pose")._preview(seq)
    assert len(seq) > 100 and len(preview) == 8 and preview.shape[1:] == (256, 256, 3)


def test_reading_the_vae_without_accelerate_prints_no_warning(tmp_path, monkeypatch, caplog):
    import importlib.util

    import diffusers.models.modeling_utils as mu
    from diffusers import AutoencoderKL
    from diffusers.utils import logging as dlog

    from echomimic_lib.model_set import load_vae
    from echomimic_lib.tiny import TINY_VAE_CONFIG

    AutoencoderKL(**TINY_VAE_CONFIG).save_pretrained(str(tmp_path / "vae"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    monkeypatch.setattr(mu, "is_accelerate_available", lambda: False)
    dlog.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            vae = load_vae(tmp_path / "vae")
    finally:
        dlog.disable_propagation()
    assert vae.config.latent_channels == 4
    assert not [r for r in caplog.records if "accelerate" in r.getMessage()], [r.getMessage() for r in caplog.records]
