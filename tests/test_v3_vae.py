"""Wan 2.1 VAE for V3: diffusers AutoencoderKLWan from the official .pth layout, official latent normalisation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from echomimic_lib.errors import WeightsError
from echomimic_lib.models.wan import vae as wan_vae
from tests.parity_runners._common import PROJECT_ROOT

MODELS = PROJECT_ROOT.parent / "shared" / "fixtures" / "parity_v3" / "v3" / "models"


def test_latent_stats_are_the_official_ones():
    cfg = json.loads((MODELS / "manifest.json").read_text())["vae_config"]
    np.testing.assert_array_equal(np.float32(wan_vae.LATENT_MEAN), np.float32(cfg["latent_mean"]))
    np.testing.assert_array_equal(np.float32(wan_vae.LATENT_STD), np.float32(cfg["latent_std"]))


def test_official_file_loads_and_normalisation_round_trips():
    vae = wan_vae.load_wan_vae(MODELS / "Wan2.1-Fun-V1.1-1.3B-InP" / "Wan2.1_VAE.pth")
    assert vae.config.base_dim == 4 and vae.config.z_dim == 16
    mu = torch.randn(1, 16, 2, 3, 4)
    z = wan_vae.normalise(vae, mu)
    mean = torch.tensor(wan_vae.LATENT_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(wan_vae.LATENT_STD).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(z, (mu - mean) / std)
    torch.testing.assert_close(wan_vae.denormalise(vae, z), mu)
    video = wan_vae.decode(vae, z)
    assert video.shape == (1, 3, 5, 24, 32) and video.abs().max() <= 1


def test_wrong_file_is_refused(tmp_path):
    bad = tmp_path / "vae.pth"
    torch.save({"decoder.conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="encoder.conv1.weight"):
        wan_vae.load_wan_vae(bad)


def test_comfy_interface_vae_gives_the_same_latents_and_video():
    """A VAE with ComfyUI's interface (pixels in [0, 1], raw latents) through PixelVAE = the official path."""
    vae = wan_vae.load_wan_vae(MODELS / "Wan2.1-Fun-V1.1-1.3B-InP" / "Wan2.1_VAE.pth")
    comfy_like = wan_vae.PixelVAE(wan_vae.DiffusersPixelVAE(vae))
    video = torch.rand(1, 3, 5, 16, 24) * 2 - 1
    a, b = wan_vae.encode_mode(vae, video), wan_vae.encode_mode(comfy_like, video)
    torch.testing.assert_close(b, a, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(wan_vae.decode(comfy_like, a), wan_vae.decode(vae, a), atol=5e-5, rtol=0)
