"""EchoMimicV3 nodes outside ComfyUI (the bridge's stand-ins): loader -> audio encoder -> sampler on tiny weights,
with core's CONDITIONING / CLIP_VISION_OUTPUT / VAE given as what core's nodes output."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from tests._pack import load_pack, sub


def test_v3_nodes_end_to_end(tmp_path, monkeypatch):
    from echomimic_lib.models.wan.tiny import CLIP_DIM, TEXT_DIM, write_tiny_v3
    from echomimic_lib.models.wan.vae import DiffusersPixelVAE, load_wan_vae

    pack = load_pack()
    bridge = sub("nodes.comfy_bridge")
    monkeypatch.setattr(bridge, "MODELS_DIR", tmp_path / "models")
    folder = write_tiny_v3(tmp_path / "models" / "echomimic" / "v3-flash")
    v3 = sub("nodes.v3")
    assert "EchoMimicV3Sampler" in pack.NODE_CLASS_MAPPINGS
    assert v3.v3_folders() == ["v3-flash"]
    (handle,) = v3.EchoMimicV3Loader().execute("v3-flash", "fp32")
    assert type(handle.patcher.model).__name__ == "EchoMimicV3Transformer" and "from the V3 file" in handle.report
    g = torch.Generator().manual_seed(0)
    audio = {"waveform": torch.randn(1, 1, 22050, generator=g) * 0.1, "sample_rate": 22050}
    v3_audio, n = v3.EchoMimicV3AudioEncoder().execute(handle, audio, 9)
    assert n == 9
    positive = [[torch.cat([torch.randn(1, 6, TEXT_DIM, generator=g), torch.zeros(1, 506, TEXT_DIM)], 1), {}]]
    clip = SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, CLIP_DIM, generator=g))
    vae = DiffusersPixelVAE(load_wan_vae(folder / "vae"))
    image = torch.rand(1, 40, 56, 3, generator=g)
    frames, fps, cut = v3.EchoMimicV3Sampler().execute(handle, v3_audio, positive, clip, vae, image, 64, 2, 3.0, 1,
                                                       "official", True)
    assert frames.shape[0] == 9 and frames.shape[-1] == 3 and frames.shape[1] % 16 == 0 and fps == 25.0
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1
    assert cut["waveform"].shape[-1] == 7938  # the audio cut to 9 frames at 25 fps
    assert bridge.is_loaded(handle.patcher)  # handed to (the stand-in of) ComfyUI's model manager
    names, required = bridge.MODEL_MANAGER.requests[-1]
    assert names == ["EchoMimicV3Transformer"] and required > 0  # with the activations of one call
    bridge.unload_all_models()
    assert not bridge.is_loaded(handle.patcher)


def test_v3_sampler_shows_a_latent_preview_with_each_step_and_the_frames_do_not_change(tmp_path, monkeypatch):
    """ComfyUI's previewer (Wan21 latent format) gets each step's latents; the bar shows its image with the step."""
    from echomimic_lib.models.wan.tiny import CLIP_DIM, TEXT_DIM, write_tiny_v3
    from echomimic_lib.models.wan.vae import DiffusersPixelVAE, load_wan_vae

    load_pack()
    bridge = sub("nodes.comfy_bridge")
    monkeypatch.setattr(bridge, "MODELS_DIR", tmp_path / "models")
    folder = write_tiny_v3(tmp_path / "models" / "echomimic" / "v3-flash")
    v3 = sub("nodes.v3")
    (handle,) = v3.EchoMimicV3Loader().execute("v3-flash", "fp32")
    g = torch.Generator().manual_seed(0)
    audio = {"waveform": torch.randn(1, 1, 16000, generator=g) * 0.1, "sample_rate": 16000}
    v3_audio, _ = v3.EchoMimicV3AudioEncoder().execute(handle, audio, 9)
    positive = [[torch.randn(1, 512, TEXT_DIM, generator=g), {}]]
    clip = SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, CLIP_DIM, generator=g))
    vae = DiffusersPixelVAE(load_wan_vae(folder / "vae"))
    image = torch.rand(1, 64, 64, 3, generator=g)

    def run():
        return v3.EchoMimicV3Sampler().execute(handle, v3_audio, positive, clip, vae, image, 64, 3, 3.0, 1, "off", True)[0]

    plain = run()  # outside ComfyUI: previews off
    formats, shown = [], []

    def previewer(device, latent_format="SD15"):
        formats.append(latent_format)
        return lambda latents: ("JPEG", tuple(latents.shape), 512)

    monkeypatch.setattr(bridge, "latent_previewer", previewer)
    monkeypatch.setattr(bridge, "PROGRESS_HOOK", lambda value, total, preview: shown.append((value, total, preview)))
    frames = run()
    assert formats == ["Wan21"]
    assert [(v, t) for v, t, _ in shown] == [(1, 3), (2, 3), (3, 3)]
    assert all(p is not None and p[1] == (1, 16, 3, 8, 8) for _, _, p in shown)  # 9 frames -> 3 latent frames, 64 px / 8
    assert torch.equal(frames, plain)  # previews only look


def test_v3_sampler_long_mode_is_optional_and_reaches_the_chunking(tmp_path, monkeypatch):
    """`long_mode` is an optional input after the saved widgets (old workflows keep their order and get "reanchor");
    with audio over 81 frames it reaches the chunk loop."""
    import numpy as np

    from echomimic_lib.models.wan.tiny import CLIP_DIM, TEXT_DIM, write_tiny_v3
    from echomimic_lib.models.wan.vae import DiffusersPixelVAE, load_wan_vae

    load_pack()
    bridge = sub("nodes.comfy_bridge")
    monkeypatch.setattr(bridge, "MODELS_DIR", tmp_path / "models")
    folder = write_tiny_v3(tmp_path / "models" / "echomimic" / "v3-flash")
    v3, long = sub("nodes.v3"), sub("echomimic_lib.pipeline.wan.long")
    spec = v3.EchoMimicV3Sampler.INPUT_TYPES()
    assert "long_mode" not in spec["required"] and spec["optional"]["long_mode"][1]["default"] == "reanchor"
    modes = []

    def fake_iter_long(model, vae, enc, ref_u8, prompt, clip, samples, total, settings, mode="reanchor", **kw):
        modes.append(mode)
        yield np.zeros((total,) + ref_u8.shape, np.uint8)

    monkeypatch.setattr(long, "iter_long", fake_iter_long)
    (handle,) = v3.EchoMimicV3Loader().execute("v3-flash", "fp32")
    g = torch.Generator().manual_seed(0)
    audio = {"waveform": torch.randn(1, 1, 16000 * 4, generator=g) * 0.1, "sample_rate": 16000}
    v3_audio, n = v3.EchoMimicV3AudioEncoder().execute(handle, audio, 89)
    assert n == 89
    args = (handle, v3_audio, [[torch.randn(1, 512, TEXT_DIM, generator=g), {}]],
            SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, CLIP_DIM, generator=g)),
            DiffusersPixelVAE(load_wan_vae(folder / "vae")), torch.rand(1, 64, 64, 3, generator=g), 64, 2, 3.0, 1, "off", True)
    assert v3.EchoMimicV3Sampler().execute(*args)[0].shape[0] == 89
    v3.EchoMimicV3Sampler().execute(*args, long_mode="continue")
    assert modes == ["reanchor", "continue"]
