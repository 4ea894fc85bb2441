"""Community Wan2.1 LoRAs on the tiny EchoMimicV3 network (echomimic_lib.lora.wan_files): every layout in the wild maps
to the same deltas, strength 0 is the base bit for bit, strength 1 is exactly the hand-merged network, remove()
restores exactly, and bad files are refused with messages that say what is wrong."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from echomimic_lib.errors import WeightsError
from echomimic_lib.lora import LoraInfo, apply_wan_lora, load_wan_lora, read_wan_lora, shapes_of, write_lora
from tests._v3_tiny import inputs, tiny_model
from tests._wan_lora import LAYOUTS, RANK, expected_deltas, layout_tensors, make_parts, write_layout


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture(scope="module")
def parts(model):
    return make_parts(model, seed=5)


@pytest.fixture
def comfy_file(parts, tmp_path):
    return write_layout(parts, "comfyui", tmp_path / "style.safetensors")


def _forward(model):
    with torch.no_grad():
        return model(**inputs(model.cfg))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_the_same_deltas(model, parts, tmp_path, layout):
    lora = load_wan_lora(write_layout(parts, layout, tmp_path / f"{layout}.safetensors"), shapes_of(model))
    want = expected_deltas(parts)
    assert lora.keys == sorted(want)  # low-rank weights, norm / bias / modulation deltas, the audio layer
    for key, delta in want.items():
        assert torch.equal(lora.delta(key), delta), key
        assert torch.equal(lora.delta(key, -0.5), delta * -0.5), key
    assert lora.layout == {"kohya": "kohya", "videox_fun": "kohya", "diffusers": "diffusers", "peft": "diffusers"}.get(layout, "wan")


def test_all_layouts_merge_to_the_same_weights(model, parts, tmp_path):
    merged = []
    for layout in LAYOUTS:
        net = copy.deepcopy(model)
        apply_wan_lora(net, write_layout(parts, layout, tmp_path / f"{layout}.safetensors"), 0.8)
        merged.append(_state(net))
    assert all(torch.equal(m[k], merged[0][k]) for m in merged[1:] for k in m)
    assert any(not torch.equal(merged[0][k], v) for k, v in model.state_dict().items())


def test_strength_zero_is_the_base_bit_for_bit(model, comfy_file):
    net = copy.deepcopy(model)
    base, out = _state(net), _forward(net)
    patch = apply_wan_lora(net, comfy_file, 0.0)
    assert patch.strength == 0.0 and all(torch.equal(v, base[k]) for k, v in net.state_dict().items())
    assert torch.equal(_forward(net), out)


def test_strength_one_changes_the_output_by_exactly_the_delta_and_remove_restores(model, parts, comfy_file):
    net, by_hand = copy.deepcopy(model), copy.deepcopy(model)
    base, out = _state(net), _forward(net)
    with torch.no_grad():
        params = dict(by_hand.named_parameters())
        for key, delta in expected_deltas(parts).items():
            params[key].add_(delta)
    patch = apply_wan_lora(net, comfy_file, 1.0)
    changed = set(expected_deltas(parts))
    for k, v in net.state_dict().items():
        assert torch.equal(v, by_hand.state_dict()[k]), k
        assert torch.equal(v, base[k]) == (k not in changed), k
    lora_out = _forward(net)
    assert torch.equal(lora_out, _forward(by_hand)) and not torch.allclose(lora_out, out)
    patch.set_strength(-0.5)  # a new strength starts from the base
    params = dict(net.named_parameters())
    for key, delta in expected_deltas(parts).items():
        assert torch.equal(params[key].detach(), base[key] + delta * -0.5), key
    patch.remove()
    assert all(torch.equal(v, base[k]) for k, v in net.state_dict().items())
    assert torch.equal(_forward(net), out)


def test_bf16_merge_is_unbiased_and_restores_exactly(model, parts, comfy_file):
    net = copy.deepcopy(model).to(torch.bfloat16)
    base = _state(net)
    patch = apply_wan_lora(net, comfy_file, 1.0)
    w, d = net.blocks[0].self_attn.q.weight.detach().float(), expected_deltas(parts)["blocks.0.self_attn.q.weight"]
    got = w - base["blocks.0.self_attn.q.weight"].float()
    assert abs(float((got * d).sum() / (d * d).sum()) - 1.0) < 0.05  # the delta survives bf16 on average
    patch.remove()
    assert all(torch.equal(v, base[k]) for k, v in net.state_dict().items())


# ------------------------------------------------------------------------------------------ refused files
def _save(tmp_path, tensors, name="bad.safetensors", metadata=None):
    path = tmp_path / name
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def test_an_unmatched_key_is_refused_with_count_example_and_cause(model, parts, tmp_path):
    tensors = layout_tensors(parts, "comfyui")
    tensors["diffusion_model.blocks.0.self_attn.qq.lora_A.weight"] = torch.zeros(RANK, 32)
    tensors["diffusion_model.blocks.0.self_attn.qq.lora_B.weight"] = torch.zeros(32, RANK)
    with pytest.raises(WeightsError, match=r"1 of \d+ layer\(s\) match no parameter.*'diffusion_model\.blocks\.0\.self_attn\.qq\."
                                           r"lora_[AB]\.weight'.*layout this reader knows"):
        load_wan_lora(_save(tmp_path, tensors), shapes_of(model))
    text = {"lora_te_text_model_encoder_layers_0_q.lora_down.weight": torch.zeros(RANK, 8),
            "lora_te_text_model_encoder_layers_0_q.lora_up.weight": torch.zeros(8, RANK)}
    with pytest.raises(WeightsError, match="text or image encoder"):
        load_wan_lora(_save(tmp_path, {**layout_tensors(parts, "kohya"), **text}, "te.safetensors"), shapes_of(model))
    deep = {"diffusion_model.blocks.35.self_attn.q.lora_A.weight": torch.zeros(RANK, 32),
            "diffusion_model.blocks.35.self_attn.q.lora_B.weight": torch.zeros(32, RANK)}
    with pytest.raises(WeightsError, match="block 35: it was made for a Wan model with more blocks"):
        load_wan_lora(_save(tmp_path, deep, "deep.safetensors"), shapes_of(model))
    with pytest.raises(WeightsError, match="LyCORIS"):
        load_wan_lora(_save(tmp_path, {"diffusion_model.blocks.0.self_attn.q.hada_w1_a": torch.zeros(2, 2)}, "l.safetensors"),
                      shapes_of(model))


def test_a_lora_for_another_wan_size_is_refused(model, tmp_path):
    big = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(RANK, 5120),
           "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(5120, RANK)}
    with pytest.raises(WeightsError, match=r"needs \(5120, 5120\) but the network's 'blocks\.0\.self_attn\.q\.weight' is \(32, 32\): "
                                           r"it was made for Wan 14B"):
        load_wan_lora(_save(tmp_path, big), shapes_of(model))
    t2v = {"diffusion_model.patch_embedding.diff": torch.zeros(32, 16, 1, 2, 2)}  # text-to-video: 16 input channels
    with pytest.raises(WeightsError, match="only a text-to-video input layer"):
        load_wan_lora(_save(tmp_path, t2v, "t2v.safetensors"), shapes_of(model))
    net = copy.deepcopy(model)
    with pytest.raises(WeightsError, match="Wan 14B"):
        apply_wan_lora(net, tmp_path / "bad.safetensors", 1.0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in net.state_dict().items())


def test_damaged_or_foreign_files_are_refused(model, parts, tmp_path):
    pt = tmp_path / "lora.pt"
    torch.save(layout_tensors(parts, "comfyui"), pt)
    with pytest.raises(WeightsError, match="safetensors files only"):
        read_wan_lora(pt)
    with pytest.raises(WeightsError, match="not found"):
        read_wan_lora(tmp_path / "absent.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        read_wan_lora(tmp_path / "cut.safetensors")
    half = {k: v for k, v in layout_tensors(parts, "lightx2v").items() if not k.endswith("head.head.lora_up.weight")}
    with pytest.raises(WeightsError, match=r"'diffusion_model\.head\.head\.lora_down\.weight' lacks its up"):
        read_wan_lora(_save(tmp_path, half, "half.safetensors"))
    nan = dict(layout_tensors(parts, "comfyui"))
    nan["diffusion_model.blocks.0.norm3.diff"] = torch.full((32,), float("nan"))
    with pytest.raises(WeightsError, match="NaN/Inf"):
        read_wan_lora(_save(tmp_path, nan, "nan.safetensors"))
    ours = write_lora(tmp_path / "v1.safetensors", {"denoiser.x.lora_A.weight": torch.zeros(4, 8), "denoiser.x.lora_B.weight":
                                                    torch.zeros(8, 4)}, LoraInfo(weights="v1_audio", rank=4, alpha=4.0))
    with pytest.raises(WeightsError, match="EchoMimic V1/V2 adapter"):
        read_wan_lora(ours)
    with pytest.raises(Exception, match="finite"):
        apply_wan_lora(copy.deepcopy(model), ours, float("inf"))


def test_a_text_to_video_loras_input_layer_is_left_out_and_the_rest_applies(model, parts, tmp_path, caplog):
    """As ComfyUI: the 16-channel patch_embedding delta of a text-to-video LoRA does not fit the 36-channel
    image-to-video input; it is left out with a warning, every other layer applies exactly as without it."""
    plain = layout_tensors(parts, "lightx2v")
    cin = shapes_of(model)["patch_embedding.weight"][1]
    assert cin > 16
    t2v = {**plain, "diffusion_model.patch_embedding.diff": torch.ones(32, 16, 1, 2, 2),
           "diffusion_model.patch_embedding.diff_b": torch.full((32,), 0.5)}
    with caplog.at_level("WARNING"):
        got = load_wan_lora(_save(tmp_path, t2v, "t2v_full.safetensors"), shapes_of(model))
    want = load_wan_lora(_save(tmp_path, plain, "plain.safetensors"), shapes_of(model))
    assert got.skipped == ["diffusion_model.patch_embedding.diff"] and "text-to-video input layer" in caplog.text
    assert set(got.keys) == set(want.keys) | {"patch_embedding.bias"}  # the bias fits: it applies
    for key in want.keys:
        assert torch.equal(got.delta(key), want.delta(key))
    torch.testing.assert_close(got.delta("patch_embedding.bias"), torch.full((32,), 0.5))
