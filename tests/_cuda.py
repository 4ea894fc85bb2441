"""Shared by the CUDA-only tests (``tests/test_cuda.py``, ``tests/test_cuda_speed.py``): the report file, TF32 off,
official-size random-weight networks and a short generation."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

# Half precision against fp32, decoded frames in [0, 1], 2 steps of 12 frames on random official-size weights.
# fp16 keeps 11 significant bits, bf16 8: each bound is about 8 x the format's step, for the mean over pixels.
HALF_BOUNDS = {"fp16": dict(mean=0.01, latent_rel=0.02), "bf16": dict(mean=0.04, latent_rel=0.08)}


def report(name: str, **values) -> None:
    """Append measured figures to the JSON-lines file ``ECHOMIMIC_GPU_REPORT`` names (if set)."""
    path = os.environ.get("ECHOMIMIC_GPU_REPORT")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"test": name, **values}) + "\n")


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    torch.cuda.empty_cache()


def full_size_models(version: str, seed: int = 0):
    """Official-size V1 (face locator) or V2 (pose encoder) networks with random weights, fp32 on the GPU."""
    from diffusers import AutoencoderKL

    from echomimic_lib.config import SD15
    from echomimic_lib.model_set import EchoMimicModels
    from echomimic_lib.models.unet import ConditionEncoder, EchoUNet
    from echomimic_lib.modes import WEIGHT_SETS
    from echomimic_lib.tiny import SD_VAE_CONFIG, randomize_

    ws = WEIGHT_SETS["v1_audio" if version == "v1" else "v2"]
    with torch.device("cuda"):
        nets = (EchoUNet(SD15, "reference"), EchoUNet(SD15, "denoiser"),
                ConditionEncoder(ws.cond_channels, SD15.cond_out_channels, SD15.cond_block_channels), AutoencoderKL(**SD_VAE_CONFIG))
    ref, den, enc, vae = (randomize_(n, seed + i).eval() for i, n in enumerate(nets))
    return EchoMimicModels(SD15, ws, "normal", ref, den, enc, vae)


def generate(models, version: str, size: int, frames: int = 12, steps: int = 2, **settings):
    from echomimic_lib.audio import AudioFeatures
    from echomimic_lib.pipeline import FrameCondition, MaskCondition, Sampler, settings_for

    rng = np.random.default_rng(0)
    rows = int(np.ceil(frames * 50 / 24)) + 4
    audio = AudioFeatures(torch.from_numpy(rng.standard_normal((rows, 5, 384)).astype(np.float32)), rows * 320)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    if version == "v1":
        cond = MaskCondition(np.pad(np.ones((size // 2, size // 2), np.float32), size // 4))
    else:
        poses = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
        cond = FrameCondition(frames, lambda idx: poses[list(idx)])
    mode = "v1-audio" if version == "v1" else "v2-halfbody"
    s = settings_for(mode, "normal", width=size, height=size, steps=steps, num_frames=frames, cfg=2.5, **settings)
    with torch.no_grad():
        return Sampler(models)(image, audio, cond, s)
