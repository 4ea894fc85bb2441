"""whisper-tiny checkpoint loading (OpenAI and Hugging Face formats), bad checkpoints, random test weights."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from echomimic_lib.audio import build_whisper_encoder, load_whisper_encoder, read_whisper_encoder_state, save_random_whisper
from echomimic_lib.audio.whisper import TINY_DIMS, random_whisper_state_dict
from echomimic_lib.errors import MissingWeightsError, WeightsError
from tests.parity_runners._common import parity_dir

FIXTURE_WEIGHTS = parity_dir() / "models" / "whisper_tiny_encoder.pt"
LIB_AUDIO = Path(__file__).resolve().parents[1] / "echomimic_lib" / "audio"
BASE_DIMS = {"n_audio_state": 512, "n_audio_head": 8, "n_audio_layer": 6, "n_text_state": 512, "n_text_head": 8, "n_text_layer": 6}


@pytest.fixture(scope="module")
def mel():
    return torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1)).clamp(-1.5, 1.5)


@pytest.fixture(scope="module")
def fixture_encoder():
    return load_whisper_encoder(FIXTURE_WEIGHTS)


def _openai_reference_states(sd: dict, mel: torch.Tensor) -> torch.Tensor:
    """Independent check of the key mapping: whisper's encoder written out from the OpenAI keys."""
    f = torch.nn.functional
    w = {k[len("encoder.") :]: v.float() for k, v in sd.items() if k.startswith("encoder.")}
    x = f.gelu(f.conv1d(mel, w["conv1.weight"], w["conv1.bias"], padding=1))
    x = f.gelu(f.conv1d(x, w["conv2.weight"], w["conv2.bias"], stride=2, padding=1)).transpose(1, 2)
    x = x + w["positional_embedding"]
    states = [x]
    heads = TINY_DIMS["n_audio_head"]
    for i in range(TINY_DIMS["n_audio_layer"]):
        p = lambda n: w[f"blocks.{i}.{n}"]  # noqa: E731
        h = f.layer_norm(x, (384,), p("attn_ln.weight"), p("attn_ln.bias"))
        q = f.linear(h, p("attn.query.weight"), p("attn.query.bias"))
        k = f.linear(h, p("attn.key.weight"))
        v = f.linear(h, p("attn.value.weight"), p("attn.value.bias"))
        split = lambda t: t.view(1, -1, heads, 64).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 8.0, dim=-1) @ split(v)
        x = x + f.linear(att.transpose(1, 2).reshape(1, -1, 384), p("attn.out.weight"), p("attn.out.bias"))
        h = f.layer_norm(x, (384,), p("mlp_ln.weight"), p("mlp_ln.bias"))
        x = x + f.linear(f.gelu(f.linear(h, p("mlp.0.weight"), p("mlp.0.bias"))), p("mlp.2.weight"), p("mlp.2.bias"))
        states.append(x)
    return torch.stack(states, dim=2)


def test_states_match_an_independent_whisper_forward(fixture_encoder, mel):
    sd = torch.load(FIXTURE_WEIGHTS, map_location="cpu", weights_only=True)["model_state_dict"]
    got = fixture_encoder(mel)
    assert got.shape == (1, 1500, 5, 384)
    assert (got - _openai_reference_states(sd, mel)).abs().max() < 1e-3


def test_fifth_state_is_before_the_final_layer_norm(fixture_encoder, mel):
    """HF's last_hidden_state has the final LayerNorm; EchoMimic's 5th state must not."""
    states = fixture_encoder(mel)
    hf_last = fixture_encoder.encoder(mel).last_hidden_state
    assert not torch.allclose(states[:, :, 4], hf_last, atol=1e-2)
    assert torch.allclose(fixture_encoder.encoder.layer_norm(states[:, :, 4]), hf_last, atol=1e-5)


def test_openai_format_with_decoder_is_accepted(tmp_path):
    enc_only = save_random_whisper(tmp_path / "enc.pt", seed=3)
    full = save_random_whisper(tmp_path / "tiny.pt", seed=3, include_decoder=True)
    ck = torch.load(full, map_location="cpu", weights_only=True)
    assert set(ck) == {"dims", "model_state_dict"} and ck["dims"]["n_audio_state"] == 384
    keys = ck["model_state_dict"]
    assert "decoder.token_embedding.weight" in keys and "encoder.blocks.3.attn.key.weight" in keys
    assert "encoder.blocks.0.attn.key.bias" not in keys and keys["encoder.conv1.weight"].dtype == torch.float16
    a, b = read_whisper_encoder_state(enc_only), read_whisper_encoder_state(full)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a directory holding tiny.pt is accepted too, and gives the same network
    from_dir = load_whisper_encoder(tmp_path).encoder.state_dict()
    assert all(torch.equal(from_dir[k], a[k].float()) for k in a)


def test_random_weights_are_deterministic_and_finite(tmp_path, mel):
    a = save_random_whisper(tmp_path / "a.pt", seed=7)
    b = save_random_whisper(tmp_path / "b.pt", seed=7)
    c = save_random_whisper(tmp_path / "c.pt", seed=8)
    sa, sb, sc = (read_whisper_encoder_state(p) for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])
    out = load_whisper_encoder(a)(mel)
    assert torch.isfinite(out).all() and 0.05 < out.std() < 50


@pytest.mark.parametrize("prefix, filename", [("model.encoder.", "model.safetensors"), ("encoder.", "pytorch_model.bin")])
def test_hugging_face_format(tmp_path, fixture_encoder, mel, prefix, filename):
    from safetensors.torch import save_file
    from transformers import WhisperConfig

    folder = tmp_path / "whisper-tiny"
    folder.mkdir()
    cfg = WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6, decoder_layers=4, decoder_attention_heads=6,
                        encoder_ffn_dim=1536, decoder_ffn_dim=1536, num_mel_bins=80, max_source_positions=1500)
    cfg.save_pretrained(folder)
    sd = {prefix + k: v.clone().contiguous() for k, v in fixture_encoder.encoder.state_dict().items()}
    sd[prefix.replace("encoder", "decoder") + "layer_norm.weight"] = torch.ones(384)  # decoder keys are ignored
    if filename.endswith(".safetensors"):
        save_file(sd, str(folder / filename))
    else:
        torch.save(sd, folder / filename)
    assert torch.equal(load_whisper_encoder(folder)(mel), fixture_encoder(mel))
    alone = load_whisper_encoder(folder / filename).encoder.state_dict()  # the weight file on its own
    assert all(torch.equal(v, alone[k]) for k, v in fixture_encoder.encoder.state_dict().items())


def test_missing_checkpoint(tmp_path):
    with pytest.raises(MissingWeightsError, match="not found") as err:
        load_whisper_encoder(tmp_path / "whisper_tiny.pt")
    assert str(tmp_path / "whisper_tiny.pt") in str(err.value) and "whisper-tiny" in str(err.value)
    with pytest.raises(MissingWeightsError, match="neither config.json"):
        load_whisper_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper", "d_model": 384, "encoder_layers": 4,
                                                      "encoder_attention_heads": 6, "num_mel_bins": 80, "max_source_positions": 1500}))
    with pytest.raises(MissingWeightsError, match="no model.safetensors"):
        load_whisper_encoder(tmp_path)


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, "truncated"])
def test_corrupt_checkpoint(tmp_path, content):
    path = tmp_path / "whisper_tiny.pt"
    if content == "truncated":
        path.write_bytes(FIXTURE_WEIGHTS.read_bytes()[:100_000])
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=re.escape(str(path)) + ".*corrupt"):
        load_whisper_encoder(path)


def test_wrong_model_whisper_base(tmp_path):
    path = save_random_whisper(tmp_path / "base.pt", dims=BASE_DIMS)
    with pytest.raises(WeightsError, match=r"this is whisper-base \(512-d.*EchoMimic needs whisper-tiny \(384-d") as err:
        load_whisper_encoder(path)
    assert str(path) in str(err.value)
    # a bare state dict (no dims) is recognised from its tensor shapes
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(path, weights_only=True)["model_state_dict"], bare)
    with pytest.raises(WeightsError, match="whisper-base"):
        load_whisper_encoder(bare)
    # a Hugging Face config for whisper-small is refused before reading weights
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "whisper", "d_model": 768, "encoder_layers": 12,
                                                    "encoder_attention_heads": 12, "num_mel_bins": 80, "max_source_positions": 1500}))
    with pytest.raises(WeightsError, match="whisper-small"):
        load_whisper_encoder(folder)


def test_dims_that_lie_about_the_tensors(tmp_path):
    sd = random_whisper_state_dict(0, dims=BASE_DIMS)
    path = tmp_path / "liar.pt"
    torch.save({"dims": {**TINY_DIMS}, "model_state_dict": sd}, path)
    with pytest.raises(WeightsError, match="whisper-base"):
        load_whisper_encoder(path)


def test_incomplete_and_foreign_files(tmp_path):
    sd = random_whisper_state_dict(0)
    del sd["encoder.blocks.2.mlp.0.weight"]
    path = tmp_path / "incomplete.pt"
    torch.save({"dims": TINY_DIMS, "model_state_dict": sd}, path)
    with pytest.raises(WeightsError, match=r"missing \(e.g. layers.2.fc1.weight\)"):
        load_whisper_encoder(path)
    other = tmp_path / "unet.pt"
    torch.save({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, other)
    with pytest.raises(WeightsError, match="no whisper encoder tensors"):
        load_whisper_encoder(other)
    listy = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listy)
    with pytest.raises(WeightsError, match="not a state dict"):
        load_whisper_encoder(listy)


class _Payload:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"dims": TINY_DIMS, "model_state_dict": {}, "extra": _Payload()}, path)
    with pytest.raises(WeightsError, match="cannot read"):
        load_whisper_encoder(path)


def test_torch_load_is_always_weights_only():
    for src in LIB_AUDIO.glob("*.py"):
        for line in src.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{src.name}: {line.strip()}"


def test_device_and_dtype_come_from_the_caller(mel):
    enc = build_whisper_encoder(read_whisper_encoder_state(FIXTURE_WEIGHTS), device="cpu", dtype=torch.float64)
    assert enc.dtype == torch.float64 and enc.device.type == "cpu"
    out = enc(mel)
    assert out.dtype == torch.float64
    assert (out.float() - load_whisper_encoder(FIXTURE_WEIGHTS)(mel)).abs().max() < 1e-3
    for src in LIB_AUDIO.glob("*.py"):
        text = src.read_text()
        assert '"cuda"' not in text and "print(" not in text, src.name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp32_matches_cpu(fixture_encoder, mel):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu = load_whisper_encoder(FIXTURE_WEIGHTS, device="cuda", dtype=torch.float32)
    assert (gpu(mel).cpu() - fixture_encoder(mel)).abs().max() < 1e-3
    half = load_whisper_encoder(FIXTURE_WEIGHTS, device="cuda", dtype=torch.float16)
    assert (half(mel).float().cpu() - fixture_encoder(mel)).abs().max() < 0.1
