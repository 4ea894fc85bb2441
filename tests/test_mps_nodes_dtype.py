"""The ComfyUI nodes' dtype ``auto`` on Apple MPS follows ComfyUI (should_use_fp16 there: fp16 UNets / DiT) and the
command line, and the V1/V2 loader keeps the SD VAE out of fp16 (fp32 before macOS 14, bf16 from it), as ComfyUI's
VAE does. No MPS here: the device and the macOS version are faked; the networks' loading is recorded, not run."""
from __future__ import annotations

import types
from types import SimpleNamespace

import pytest
import torch

from tests._pack import load_pack, sub

MPS = torch.device("mps")


def test_stand_in_auto_is_fp16_on_mps_and_fp32_on_the_cpu():
    C = sub("nodes.comfy_bridge")
    assert C.auto_dtype(MPS) == torch.float16
    assert C.auto_dtype(torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("fp16_ok", [True, False])
def test_in_comfyui_mps_asks_comfyui_for_fp16_never_bf16(monkeypatch, fp16_ok):
    C = sub("nodes.comfy_bridge")
    asked = []
    mm = types.ModuleType("comfy.model_management")
    mm.should_use_bf16 = lambda device: asked.append(("bf16", device.type)) or True
    mm.should_use_fp16 = lambda device: asked.append(("fp16", device.type)) or fp16_ok
    monkeypatch.setattr(C, "mm", mm)
    assert C.auto_dtype(MPS) == (torch.float16 if fp16_ok else torch.float32)
    assert ("bf16", "mps") not in asked and ("fp16", "mps") in asked
    assert C.auto_dtype(torch.device("cuda", 0)) == torch.bfloat16  # CUDA unchanged: bf16 where ComfyUI says so
    assert C.auto_dtype(torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("macos, vae", [((13, 6), torch.float32), ((14, 2), torch.bfloat16)])
def test_loader_node_on_mps_fp16_networks_and_an_sd_vae_out_of_fp16(monkeypatch, tmp_path, macos, vae):
    C, L = sub("nodes.comfy_bridge"), sub("nodes.loader")
    devices = sub("echomimic_lib.devices")
    monkeypatch.setattr(devices, "_macos_version", lambda: macos)
    monkeypatch.setattr(C, "torch_device", lambda: MPS)
    monkeypatch.setattr(C, "offload_device", lambda: torch.device("cpu"))
    seen = {}
    monkeypatch.setattr(L, "resolve", lambda *a, **k: (tmp_path, {}, tmp_path / "vae.safetensors"))

    def load_models(root, weights, variant, device, dtype, **kw):
        seen["networks"] = dtype
        return SimpleNamespace(vae=None, modules=lambda: {})
    monkeypatch.setattr(L, "load_models", load_models)
    monkeypatch.setattr(L, "load_vae", lambda path, device, dtype: seen.setdefault("vae", dtype))
    node = load_pack().NODE_CLASS_MAPPINGS["EchoMimicModelLoader"]
    args = dict(attention="sdpa", keep_loaded=False, weights_folder="auto", vae="auto", auto_download=False)
    node().execute("V1 audio", "normal", dtype="auto", **args)
    assert seen == {"networks": torch.float16, "vae": vae}
    seen.clear()
    node().execute("V1 audio", "normal", dtype="fp16", **args)  # an explicit choice is every network's
    assert seen == {"networks": torch.float16, "vae": torch.float16}
