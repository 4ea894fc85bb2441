"""The shipped v3_flash workflow (API format) executed like ComfyUI's queue, on tiny random V3 weights. Core's
loaders/encoders are stand-ins that return what core returns: CONDITIONING padded to 512 tokens with zeros (umT5 via
transformers on the tiny encoder), a CLIP_VISION_OUTPUT with penultimate_hidden_states, a VAE with ComfyUI's
interface (pixels in [0, 1], raw latents)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from tests._media import write_wav
from tests._pack import sub
from tests.test_workflows_run import Core, run_prompt

ROOT = Path(__file__).resolve().parents[1]


class V3Core(Core):
    def __init__(self, folder: Path, tiny: Path):
        super().__init__(folder)
        self.tiny = tiny

    def CLIPLoader(self, clip_name, type, device="default"):
        assert type == "wan"
        return (self.tiny / "umt5-xxl",)

    def CLIPTextEncode(self, text, clip):
        from echomimic_lib.pipeline.wan.encoders import encode_prompt

        states = encode_prompt(clip, text)
        return ([[torch.nn.functional.pad(states, (0, 0, 0, 512 - states.shape[1])), {}]],)

    def CLIPVisionLoader(self, clip_name):
        return (self.tiny / "clip-vit-h-14",)

    def CLIPVisionEncode(self, clip_vision, image, crop):
        from echomimic_lib.pipeline.wan.encoders import clip_features

        u8 = (image[0].numpy() * 255).astype(np.uint8)
        return (SimpleNamespace(penultimate_hidden_states=clip_features(clip_vision, u8)),)

    def VAELoader(self, vae_name):
        from echomimic_lib.models.wan.vae import DiffusersPixelVAE, load_wan_vae

        return (DiffusersPixelVAE(load_wan_vae(self.tiny / "vae")),)


@pytest.mark.slow
def test_v3_flash_workflow_runs(tmp_path, shared_data, monkeypatch):
    from echomimic_lib.models.wan.tiny import write_tiny_v3

    models, inp = tmp_path / "models", tmp_path / "input"
    inp.mkdir()
    tiny = write_tiny_v3(models / "echomimic" / "v3-flash")
    half = cv2.imread(str(shared_data / "images" / "halfbody_0035.png"))
    cv2.imwrite(str(inp / "echomimic_halfbody.png"), cv2.resize(half, (200, 220), interpolation=cv2.INTER_AREA))
    wav, sr = sub("echomimic_lib.io.video_io").read_audio(shared_data / "audio" / "echomimic_en.wav")
    write_wav(inp / "echomimic_speech.wav", wav[0, : sr // 2], sr)
    bridge = sub("nodes.comfy_bridge")
    monkeypatch.setattr(bridge, "MODELS_DIR", models)
    monkeypatch.setattr(bridge, "INPUT_DIR", inp)
    prompt = json.loads((ROOT / "workflows" / "api" / "v3_flash.json").read_text())
    core = V3Core(tmp_path, tiny)
    out = run_prompt(prompt, core, {"EchoMimicV3Sampler": {"size": 64, "steps": 2}})
    frames, fps, audio = out["10"]
    n = out["9"][1]
    assert n == 9 and frames.shape[0] == 9 and fps == 25.0  # half a second of speech: 12 frames -> 4k+1 = 9
    assert frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0 and frames.shape[1] * frames.shape[2] <= 64 * 64
    assert core.saved and core.saved[0].is_file() and audio["waveform"].shape[-1] <= sr // 2
