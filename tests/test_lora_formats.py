"""The adapter file carries its alpha in the tensors (issue 26): ``<network>.<path>.alpha`` next to peft's
``lora_A`` / ``lora_B``; files of format version 1 (alpha only in the metadata) still load with the same delta;
peft's ``save_pretrained`` layout of an adapter loads with ``PeftModel.from_pretrained`` onto the matching tiny UNet
and gives the same weights as the pack's own merge."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from echomimic_lib.lora import LoraAdapter, LoraInfo, apply_lora, read_lora, write_lora, write_peft

PATHS = {"denoiser": ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0"],
         "reference": ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests._tiny_shared import tiny_v1_copy

    root = tmp_path_factory.mktemp("tiny_formats") / "v1"
    tiny_v1_copy(tmp_path_factory, root)
    return root


def _models(root):
    from echomimic_lib.model_set import load_models

    return load_models(root, "v1_audio", "normal", with_audio=False, with_vae=False)


def _tensors(models, rank=4, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for net, paths in PATHS.items():
        for p in paths:
            w = getattr(models, net).get_submodule(p).weight
            out[f"{net}.{p}.lora_A.weight"] = torch.randn(rank, w.shape[1], generator=g)
            out[f"{net}.{p}.lora_B.weight"] = torch.randn(w.shape[0], rank, generator=g) * 0.1
    return out


def _write_format_1(path: Path, tensors: dict, info: LoraInfo) -> Path:
    """The writer of format version 1, as it was: lora_A / lora_B only, the alpha in the metadata."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    meta = {"format": "echomimic-lora", "format_version": "1"}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in asdict(info).items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def test_new_files_carry_the_alpha_per_layer_in_comfyui_and_kohya_names(tiny, tmp_path):
    from safetensors import safe_open

    tensors = _tensors(_models(tiny))
    info = LoraInfo(weights="v1_audio", rank=4, alpha=6.0, networks=["denoiser", "reference"])
    path = write_lora(tmp_path / "new.safetensors", tensors, info)
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        alphas = {k: f.get_tensor(k) for k in keys if k.endswith(".alpha")}
    layers = {k[: -len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight")}
    assert keys == set(tensors) | {f"{layer}.alpha" for layer in layers} and meta["format_version"] == "2"
    assert all(t.dim() == 0 and t.dtype == torch.float32 and float(t) == 6.0 for t in alphas.values())
    a = read_lora(path)
    assert a.alphas == {layer: 6.0 for layer in layers}
    layer = next(iter(layers))
    A, B = tensors[f"{layer}.lora_A.weight"], tensors[f"{layer}.lora_B.weight"]
    torch.testing.assert_close(a.delta(layer), 6.0 / 4 * B @ A)
    rs = read_lora(write_lora(tmp_path / "rs.safetensors", tensors, LoraInfo(weights="v1_audio", rank=4, alpha=6.0, use_rslora=True)))
    assert rs.alphas[layer] == pytest.approx(6.0 / math.sqrt(4) * 4)  # alpha / rank = the rsLoRA scale for every reader
    torch.testing.assert_close(rs.delta(layer), 6.0 / math.sqrt(4) * B @ A)


def test_a_file_of_format_1_still_loads_with_the_same_delta(tiny, tmp_path):
    models = _models(tiny)
    tensors = _tensors(models)
    info = LoraInfo(weights="v1_audio", rank=4, alpha=6.0, networks=["denoiser", "reference"])
    old = read_lora(_write_format_1(tmp_path / "old.safetensors", tensors, info))
    new = read_lora(write_lora(tmp_path / "new.safetensors", tensors, info))
    assert old.alphas == {} and old.layers.keys() == new.layers.keys()
    for layer in new.layers:
        assert torch.equal(old.delta(layer, 0.8), new.delta(layer, 0.8))
    a, b = _models(tiny), _models(tiny)
    apply_lora(a, old.path, 1.0), apply_lora(b, new.path, 1.0)
    assert all(torch.equal(v, b.denoiser.state_dict()[k]) for k, v in a.denoiser.state_dict().items())


def test_a_damaged_alpha_is_refused(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    from echomimic_lib.errors import WeightsError

    path = write_lora(tmp_path / "a.safetensors", _tensors(_models(tiny)), LoraInfo(weights="v1_audio", rank=4, alpha=4.0))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    key = next(k for k in state if k.endswith(".alpha"))
    save_file({**state, key: torch.tensor(-1.0)}, str(tmp_path / "neg.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="must be one positive number"):
        read_lora(tmp_path / "neg.safetensors")
    save_file({**state, "denoiser.nothing.alpha": torch.tensor(1.0)}, str(tmp_path / "stray.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="belongs to no adapted layer"):
        read_lora(tmp_path / "stray.safetensors")
    with pytest.raises(WeightsError, match="newer than this version"):
        save_file(state, str(tmp_path / "v3.safetensors"), metadata={**meta, "format_version": "3"})
        read_lora(tmp_path / "v3.safetensors")


def test_the_peft_layout_loads_with_peft_onto_the_tiny_unets(tiny, tmp_path):
    from peft import PeftModel

    models = _models(tiny)
    info = LoraInfo(weights="v1_audio", rank=4, alpha=6.0, networks=["denoiser", "reference"])
    adapter = read_lora(write_lora(tmp_path / "me.safetensors", _tensors(models), info))
    folders = write_peft(adapter, tmp_path / "me-peft")
    assert [f.name for f in folders] == ["reference", "denoiser"]
    cfg = json.loads((tmp_path / "me-peft" / "denoiser" / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], sorted(cfg["target_modules"])) == ("LORA", 4, 6.0, sorted(PATHS["denoiser"]))
    assert (tmp_path / "me-peft" / "denoiser" / "adapter_model.safetensors").is_file()
    merged = _models(tiny)
    apply_lora(merged, adapter, 1.0)
    for net in ("reference", "denoiser"):
        base = getattr(_models(tiny), net)
        peft_net = PeftModel.from_pretrained(base, str(tmp_path / "me-peft" / net)).merge_and_unload()
        got, want = peft_net.state_dict(), getattr(merged, net).state_dict()
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(Exception, match="exists"):
        write_peft(adapter, tmp_path / "me-peft")
    assert not list((tmp_path / "me-peft").glob(".*.partial"))


def test_an_adapter_object_without_a_file_alpha_uses_the_metadata_scale():
    a, b = torch.ones(2, 3), torch.ones(5, 2)
    ad = LoraAdapter(Path("x.safetensors"), LoraInfo(weights="v1_audio", rank=2, alpha=1.0), {"denoiser.l": (a, b)})
    torch.testing.assert_close(ad.delta("denoiser.l"), 0.5 * b @ a)
