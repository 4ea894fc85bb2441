"""The shipped v3_flash and v3_flash_lora workflows (API format) executed like ComfyUI's queue, on tiny random V3
weights. Core's loaders/encoders are stand-ins that return what core returns: CONDITIONING padded to 512 tokens with
zeros (umT5 via transformers on the tiny encoder), a CLIP_VISION_OUTPUT with penultimate_hidden_states, a VAE with
ComfyUI's interface (pixels in [0, 1], raw latents). The LoRA workflow runs with a tiny Wan LoRA under the template's
placeholder name in models/loras."""
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


@pytest.fixture
def v3_comfy(tmp_path, shared_data, monkeypatch):
    """models/ with the tiny V3 set in echomimic/v3-flash, input/ with the files the V3 workflows name, the bridge
    pointed at both; the model manager emptied before and after."""
    from echomimic_lib.models.wan.tiny import write_tiny_v3

    models, inp = tmp_path / "models", tmp_path / "input"
    inp.mkdir()
    tiny = write_tiny_v3(models / "echomimic" / "v3-flash")
    half = cv2.imread(str(shared_data / "images" / "halfbody_0035.png"))
    cv2.imwrite(str(inp / "echomimic_halfbody.png"), cv2.resize(half, (200, 220), interpolation=cv2.INTER_AREA))
    wav, sr = sub("echomimic_lib.io.audio_file").read_audio(shared_data / "audio" / "echomimic_en.wav")
    write_wav(inp / "echomimic_speech.wav", wav[0, : sr // 2], sr)
    bridge = sub("nodes.comfy_bridge")
    monkeypatch.setattr(bridge, "MODELS_DIR", models)
    monkeypatch.setattr(bridge, "INPUT_DIR", inp)
    bridge.MODEL_MANAGER.reset()
    yield SimpleNamespace(folder=tmp_path, models=models, tiny=tiny, sr=sr, bridge=bridge)
    bridge.MODEL_MANAGER.reset()


def _prompt(name: str) -> dict:
    return json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())


@pytest.mark.slow
def test_v3_flash_workflow_runs(v3_comfy):
    sr = v3_comfy.sr
    core = V3Core(v3_comfy.folder, v3_comfy.tiny)
    out = run_prompt(_prompt("v3_flash"), core, {"EchoMimicV3Sampler": {"size": 64, "steps": 2}})
    frames, fps, audio = out["10"]
    n = out["9"][1]
    assert n == 9 and frames.shape[0] == 9 and fps == 25.0  # half a second of speech: 12 frames -> 4k+1 = 9
    assert frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0 and frames.shape[1] * frames.shape[2] <= 64 * 64
    assert core.saved and core.saved[0].is_file() and audio["waveform"].shape[-1] <= sr // 2


@pytest.mark.slow
def test_v3_flash_lora_workflow_applies_the_lora_it_names(v3_comfy):
    """The LoRA template as shipped (strength 1) renders a different video than v3_flash; at strength 0 the same video
    bit for bit (so the difference is the LoRA's, not the graph's)."""
    from echomimic_lib.models.wan import WanV3Transformer
    from echomimic_lib.models.wan.tiny import TINY_V3
    from tests._wan_lora import expected_deltas, make_parts, write_layout

    with torch.device("meta"):
        shapes = WanV3Transformer(TINY_V3)
    parts = make_parts(shapes, seed=3, gain=0.5)
    prompt = _prompt("v3_flash_lora")
    (lid,) = [k for k, n in prompt.items() if n["class_type"] == "EchoMimicV3Lora"]
    (v3_comfy.models / "loras").mkdir()
    write_layout(parts, "comfyui", v3_comfy.models / "loras" / prompt[lid]["inputs"]["lora"])  # the placeholder's name
    fast = {"EchoMimicV3Sampler": {"size": 64, "steps": 2}}

    def render(name: str, extra: dict) -> tuple[dict, V3Core]:
        core = V3Core(v3_comfy.folder, v3_comfy.tiny)
        v3_comfy.bridge.MODEL_MANAGER.reset()
        return run_prompt(_prompt(name), core, {**fast, **extra}), core

    base, _ = render("v3_flash", {})
    lora, core = render("v3_flash_lora", {})
    off, _ = render("v3_flash_lora", {"EchoMimicV3Lora": {"strength": 0.0}})
    assert prompt[lid]["inputs"]["strength"] == 1.0
    patched = lora[lid][0].patcher
    assert len(patched.patches) == len(expected_deltas(parts)) and patched.is_clone(lora["3"][0].patcher)
    assert not lora["3"][0].patcher.patches  # the loader's model stays without it
    frames, fps, _ = lora["10"]
    assert frames.shape == base["10"][0].shape and fps == base["10"][1] == 25.0 and core.saved[0].is_file()
    assert torch.equal(off["10"][0], base["10"][0])  # strength 0: v3_flash's frames exactly
    change = (frames - base["10"][0]).abs().mean().item()
    assert change > 1e-2, f"the LoRA changed the frames by {change} on average"


@pytest.mark.slow
def test_v3_long_to_file_workflow_writes_the_video(v3_comfy, monkeypatch):
    """workflows/api/v3_flash_long_to_file.json executed as ComfyUI's queue does: the V3 to-file sampler's mp4 in
    output/echomimic/ (no Create / Save Video), its path shown by Preview Any, its preview by Preview Image."""
    bridge, io = v3_comfy.bridge, sub("echomimic_lib.io.video_io")
    monkeypatch.setattr(bridge, "OUTPUT_DIR", v3_comfy.folder / "output")
    core = V3Core(v3_comfy.folder, v3_comfy.tiny)
    prompt = _prompt("v3_flash_long_to_file")
    assert prompt["9"]["inputs"]["max_frames"] == 750  # speech up to 30 s; half a second here: one 9-frame shot
    out = run_prompt(prompt, core, {"EchoMimicV3SamplerToFile": {"size": 64, "steps": 2}})
    path, fps, preview = out["10"]
    assert Path(path) == v3_comfy.folder / "output" / "echomimic" / "v3_flash_long_to_file_00001_.mp4" and fps == 25.0
    assert core.saved == [] and core.shown == [path] and core.previews == [preview]
    info = io.probe(path)
    assert info["frames"] == out["9"][1] == 9 and info["audio_seconds"]
