"""LoRAs in ComfyUI go through the ModelPatcher patch mechanism (issue 26), tested on the bridge's stand-in
ModelPatcher, which models ComfyUI's semantics (clones share the model, add_patches, patching on load with a
plain cast into bf16 / fp16, backups restored on unload): the EchoMimic LoRA node returns a patched clone and
leaves its input alone, adapters stack with their strengths, unloading restores the base bit for bit, the
Model Loader's lora widget takes the same path, low-VRAM streaming gets the patches too, and small adapters keep
their effect in bf16 / fp16 through the patch path."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests._pack import load_pack, sub

LAYERS = {"denoiser": ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v"],
          "reference": ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"]}


@pytest.fixture(scope="module")
def tiny_v1(tmp_path_factory):
    from tests._tiny_shared import tiny_v1_copy

    root = tmp_path_factory.mktemp("tiny_v1") / "v1"
    tiny_v1_copy(tmp_path_factory, root)
    return root


def _adapter_file(dest: Path, models, seed: int, weights: str = "v1_audio", rank: int = 4, gain: float = 0.05) -> Path:
    lora = sub("echomimic_lib.lora")
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for net, paths in LAYERS.items():
        for p in paths:
            w = getattr(models, net).get_submodule(p).weight
            tensors[f"{net}.{p}.lora_A.weight"] = torch.randn(rank, w.shape[1], generator=g)
            tensors[f"{net}.{p}.lora_B.weight"] = torch.randn(w.shape[0], rank, generator=g) * gain
    return lora.write_lora(dest, tensors, lora.LoraInfo(weights=weights, rank=rank, alpha=2.0 * rank, networks=["denoiser", "reference"]))


@pytest.fixture
def env(tiny_v1, tmp_path, monkeypatch):
    C = sub("nodes.comfy_bridge")
    models = tmp_path / "models"
    (models / "echomimic" / "loras").mkdir(parents=True)
    (models / "echomimic" / "v1").symlink_to(tiny_v1)
    monkeypatch.setattr(C, "MODELS_DIR", models)
    monkeypatch.setattr(C, "INPUT_DIR", tmp_path / "input")
    C.MODEL_MANAGER.reset()
    nodes = load_pack().NODE_CLASS_MAPPINGS

    def load(**kw):
        args = dict(dtype="fp32", attention="sdpa", keep_loaded=False, weights_folder="auto", vae="auto", auto_download=False)
        return nodes["EchoMimicModelLoader"]().execute("V1 audio", "normal", **{**args, **kw})[0]

    base = load()
    loras = models / "echomimic" / "loras"
    files = {"a": _adapter_file(loras / "a.safetensors", base.models, 1), "b": _adapter_file(loras / "b.safetensors", base.models, 2)}
    yield {"C": C, "load": load, "base": base, "files": files, "node": nodes["EchoMimicLora"]}
    C.MODEL_MANAGER.reset()


def _weights(handle) -> dict:
    return {f"{n}.{k}": v.detach().clone() for n in ("reference", "denoiser") for k, v in getattr(handle.models, n).state_dict().items()}


def _delta(path, strength) -> dict:
    a = sub("echomimic_lib.lora").read_lora(path)
    return {f"{layer.partition('.')[0]}.{layer.partition('.')[2]}.weight": a.delta(layer, strength) for layer in a.layers}


def _load_all(C, handle):
    C.load_models([handle.patchers[n] for n in ("reference", "denoiser")])


def test_the_lora_node_returns_a_patched_clone_and_leaves_its_input_alone(env):
    C, base = env["C"], env["base"]
    assert "a.safetensors" in env["node"].INPUT_TYPES()["required"]["lora"][0]
    before = {n: p for n, p in base.patchers.items()}
    out = env["node"]().execute(base, "a.safetensors", 0.7)[0]
    assert out is not base and out.models is base.models  # the networks are shared, never copied
    assert base.patchers == before and all(not p.patches for p in base.patchers.values())
    for n in ("reference", "denoiser"):
        assert out.patchers[n] is not base.patchers[n] and out.patchers[n].is_clone(base.patchers[n])
        assert len(out.patchers[n].patches) == len(LAYERS[n])
    assert out.patchers["vae"] is base.patchers["vae"] and out.key != base.key
    weights = _weights(base)
    _load_all(C, base)  # the input model still loads as the base
    assert all(torch.equal(v, weights[k]) for k, v in _weights(base).items())
    assert env["node"]().execute(base, "a.safetensors", 0.0)[0] is base


def test_two_adapters_stack_with_their_strengths_and_unloading_restores_the_base_bit_for_bit(env):
    C, base, files = env["C"], env["base"], env["files"]
    ref = _weights(base)
    one = env["node"]().execute(base, "a.safetensors", 0.7)[0]
    two = env["node"]().execute(one, "b.safetensors", -0.4)[0]
    da, db = _delta(files["a"], 0.7), _delta(files["b"], -0.4)
    _load_all(C, two)
    got = _weights(two)
    changed = set(da) | set(db)
    for k, v in got.items():
        if k in changed:
            torch.testing.assert_close(v, ref[k] + da.get(k, 0) + db.get(k, 0), rtol=0, atol=1e-6)
        else:
            assert torch.equal(v, ref[k]), k
    _load_all(C, one)  # another clone of the same networks: ComfyUI swaps the patches
    got = _weights(one)
    for k in changed:
        torch.testing.assert_close(got[k], ref[k] + da.get(k, 0), rtol=0, atol=1e-6)
    C.unload_models(list(one.patchers.values()))
    assert all(torch.equal(v, ref[k]) for k, v in _weights(base).items())  # unpatched: the base exactly
    _load_all(C, two)
    C.unload_all_models()
    assert all(torch.equal(v, ref[k]) for k, v in _weights(base).items())


def test_the_loaders_lora_widget_takes_the_patch_path(env):
    C, base = env["C"], env["base"]
    ref = _weights(base)
    widget = env["load"](lora="a.safetensors", lora_strength=0.7)
    assert all(torch.equal(v, ref[k]) for k, v in _weights(widget).items())  # read as the base: nothing merged
    assert all(len(widget.patchers[n].patches) == len(LAYERS[n]) for n in LAYERS)
    stacked = env["node"]().execute(widget, "b.safetensors", 1.0)[0]  # and chains with the node
    node = env["node"]().execute(env["node"]().execute(base, "a.safetensors", 0.7)[0], "b.safetensors", 1.0)[0]
    _load_all(C, stacked)
    a = _weights(stacked)
    C.unload_all_models()
    _load_all(C, node)
    b = _weights(node)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], ref[k]) for k in a)
    assert env["load"](lora="a.safetensors", lora_strength=0.0).key == base.key


def test_low_vram_streaming_gets_the_patches_and_gives_the_base_back(env):
    C, L = env["C"], sub("nodes.loader")
    handle = env["node"]().execute(env["load"](low_vram=True), "a.safetensors", 1.0)[0]
    ref, da = _weights(handle), _delta(env["files"]["a"], 1.0)
    place = L.placement(handle)  # the streamed denoiser: patched in RAM; the reference UNet: when ComfyUI loads it
    C.load_models([handle.patchers["reference"]])
    got = _weights(handle)
    assert {k.partition(".")[0] for k in da} == {"denoiser", "reference"}
    for k in da:
        torch.testing.assert_close(got[k], ref[k] + da[k], rtol=0, atol=1e-6)
    L.finish(place)  # the denoiser's base weights back (on the CPU the reference UNet stays loaded, as in ComfyUI --cpu)
    assert all(torch.equal(v, ref[k]) for k, v in _weights(handle).items() if k.startswith("denoiser."))
    C.unload_all_models()
    back = _weights(handle)
    assert [k for k, v in back.items() if not torch.equal(v, ref[k])] == []


def test_a_wrong_version_adapter_is_refused_before_any_weight_is_touched(env, monkeypatch):
    errors = sub("echomimic_lib.errors")
    base = env["base"]
    _adapter_file(env["files"]["a"].parent / "v2.safetensors", base.models, 3, weights="v2")
    ref = _weights(base)
    monkeypatch.setattr(sub("nodes.lora"), "resolve_layers", lambda *a, **k: pytest.fail("layers resolved before the version check"))
    with pytest.raises(errors.WeightsError, match=r"trained for EchoMimicV2 half-body \(v2\).*V1 audio-driven"):
        env["node"]().execute(base, "v2.safetensors", 1.0)
    with pytest.raises(errors.EchoMimicError, match="finite"):
        env["node"]().execute(base, "a.safetensors", float("nan"))
    with pytest.raises(errors.EchoMimicError, match="'..' are refused"):
        env["node"]().execute(base, "../v1/x.safetensors", 1.0)
    assert all(not p.patches for p in base.patchers.values())
    assert all(torch.equal(v, ref[k]) for k, v in _weights(base).items())


# ------------------------------------------------------------------------------------------ precision
def _slope(obtained, exact):
    return float((obtained * exact).sum() / (exact * exact).sum())


def _patched_layer(dtype, relative, kind):
    """One 320x320 layer with a rank-16 adapter whose delta is ``relative`` of the weight, patched the way ComfyUI
    does (float32 math, plain cast into the stored dtype): with the pack's patch, or as a plain 'diff' patch."""
    from echomimic_lib.lora import LoraAdapter, LoraInfo

    mm = sub("nodes._model_manager")
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(320, 320, generator=g) * 0.05).to(dtype)
    a, b = torch.randn(16, 320, generator=g), torch.randn(320, 16, generator=g)
    b = b * (relative * w.float().norm() / (b @ a).norm())
    adapter = LoraAdapter(Path("p.safetensors"), LoraInfo(weights="v1_audio", rank=16, alpha=16.0), {"denoiser.l": (a, b)})
    lin = torch.nn.Linear(320, 320, bias=False).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
    patcher = mm.StandInPatcher(mm.EchoMimicDenoiser(torch.nn.Sequential()), "cpu", "cpu")
    patcher.model.net.add_module("l", lin)
    clone = patcher.clone()
    patch = sub("nodes.comfy_bridge").lora_weight_patch(adapter, "denoiser.l", dtype) if kind == "pack" else (adapter.delta("denoiser.l"),)
    assert clone.add_patches({"net.l.weight": patch}, 1.0) == ["net.l.weight"]
    clone.load("cpu")
    merged = patcher.model.net.l.weight.detach().float()
    clone.unpatch_model()
    assert torch.equal(patcher.model.net.l.weight, w)  # the backup put back
    x = torch.randn(512, 320, generator=torch.Generator().manual_seed(1))
    exact = adapter.delta("denoiser.l")
    return _slope(x @ (merged - w.float()).T, x @ exact.T), adapter, w


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("relative", [0.001, 0.005])
def test_a_small_adapter_keeps_its_effect_through_the_patch_path(dtype, relative):
    slope, _, _ = _patched_layer(dtype, relative, "pack")
    assert 0.9 <= slope <= 1.1, (dtype, relative, slope)


def test_a_plain_diff_patch_loses_it_in_bf16_which_is_why():
    slope, _, _ = _patched_layer(torch.bfloat16, 0.001, "diff")
    assert slope < 0.7, slope  # ComfyUI's own cast rounds to nearest


def test_the_low_vram_per_call_patch_rounds_onto_the_cast_dtype_too():
    """ComfyUI's LowVramPatch hands the weight in its compute dtype (bf16): the patch still rounds without bias."""
    from echomimic_lib.lora import patched_weight

    _, adapter, w = _patched_layer(torch.bfloat16, 0.001, "pack")
    outs = torch.stack([patched_weight(adapter, "denoiser.l", w.clone(), 1.0, torch.bfloat16, seed).float() for seed in range(16)])
    assert outs.dtype == torch.float32 and patched_weight(adapter, "denoiser.l", w, 1.0, torch.bfloat16, 0).dtype == torch.bfloat16
    exact = w.float() + adapter.delta("denoiser.l")
    x = torch.randn(256, 320, generator=torch.Generator().manual_seed(2))
    assert 0.9 <= _slope(x @ (outs.mean(0) - w.float()).T, x @ (exact - w.float()).T) <= 1.1


def test_fp8_weights_through_the_patch_path_are_reported(capsys):
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8")
    slope, _, _ = _patched_layer(torch.float8_e4m3fn, 0.02, "pack")
    print(f"fp8 e4m3fn through the patch path, 2 % adapter: slope {slope:.2f}")  # noisy (3 mantissa bits) but unbiased
    assert 0.5 < slope < 1.5
