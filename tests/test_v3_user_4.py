"""EchoMimicV3 flash-pro as a user who already holds the official release folder (tiny random stand-ins): the
official umT5 encoder file is used as it is, not downloaded again as a Hugging Face folder."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

BASE = "Wan2.1-Fun-V1.1-1.3B-InP"
T5 = "models_t5_umt5-xxl-enc-bf16.pth"


def _tiny_hf_umt5(folder: Path):
    """A tiny HF umT5 folder (2 layers, as umT5: one relative-position table per layer) with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = ["<pad>", "</s>", "<unk>", "a", "person", "is", "speaking", "the", "man", "."]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(
        str(folder))
    torch.manual_seed(3)
    model = UMT5EncoderModel(UMT5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=2))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    model.save_pretrained(str(folder))
    return model.eval()


def _official_release(root: Path, hf: Path, model) -> Path:
    """``root/v3-flash`` as the official README lays it out: the encoder .pth (official key names, written through the
    mapping's inverse) and the google/umt5-xxl tokenizer inside the base folder; no ``umt5-xxl/`` folder."""
    from echomimic_lib.models.wan.official_t5 import official_key

    base = root / BASE
    (base / "google" / "umt5-xxl").mkdir(parents=True)
    sd = {}
    for k, v in model.state_dict().items():
        name = official_key(k)
        if name is not None:
            sd[name] = v.clone().to(torch.bfloat16)
    torch.save(sd, base / T5)
    for f in hf.iterdir():
        if "token" in f.name:
            shutil.copy(f, base / "google" / "umt5-xxl" / f.name)
    return root


def test_official_key_names_are_wans_t5_encoder_names():
    """The mapping's official side is Wan's T5Encoder state dict (wan/modules/t5.py): anchored by name, both ways."""
    from echomimic_lib.models.wan.official_t5 import hf_key, official_key

    pairs = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight",
             "blocks.3.norm1.weight": "encoder.block.3.layer.0.layer_norm.weight",
             "blocks.3.attn.q.weight": "encoder.block.3.layer.0.SelfAttention.q.weight",
             "blocks.3.attn.o.weight": "encoder.block.3.layer.0.SelfAttention.o.weight",
             "blocks.3.pos_embedding.embedding.weight": "encoder.block.3.layer.0.SelfAttention.relative_attention_bias.weight",
             "blocks.3.norm2.weight": "encoder.block.3.layer.1.layer_norm.weight",
             "blocks.3.ffn.gate.0.weight": "encoder.block.3.layer.1.DenseReluDense.wi_0.weight",
             "blocks.3.ffn.fc1.weight": "encoder.block.3.layer.1.DenseReluDense.wi_1.weight",
             "blocks.3.ffn.fc2.weight": "encoder.block.3.layer.1.DenseReluDense.wo.weight"}
    for off, hf in pairs.items():
        assert hf_key(off) == hf and official_key(hf) == off
    with pytest.raises(KeyError):
        hf_key("blocks.0.ffn.gate.1.weight")


def test_the_official_umt5_pth_encodes_as_the_hugging_face_model(tmp_path):
    """Same weights, official .pth vs HF folder: the same prompt states (through encode_prompt, as a run uses it)."""
    from echomimic_lib.models.wan.sources import resolved_files
    from echomimic_lib.pipeline.wan.encoders import encode_prompt, load_umt5

    hf = tmp_path / "hf"
    model = _tiny_hf_umt5(hf)
    root = _official_release(tmp_path / "v3-flash", hf, model)
    pth = resolved_files(root)["umt5"]
    assert pth == root / BASE / T5
    tok, official = load_umt5(pth, dtype=torch.float32)
    assert tok("a person is speaking").input_ids == [3, 4, 5, 6]  # the google/umt5-xxl tokenizer beside it
    ids = torch.tensor([[3, 4, 5, 6, 1, 0, 0]])
    mask = (ids > 0).long()
    ref = model.to(torch.bfloat16).float()  # the .pth holds bf16, as the release
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = official(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    a = encode_prompt(pth, "a person is speaking", dtype=torch.float32)
    ref.save_pretrained(str(tmp_path / "hf_bf16"))
    for f in hf.iterdir():
        if "token" in f.name:
            shutil.copy(f, tmp_path / "hf_bf16" / f.name)
    b = encode_prompt(tmp_path / "hf_bf16", "a person is speaking", dtype=torch.float32)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_folder_with_the_official_encoder_is_not_asked_for_umt5_again(tmp_path):
    """missing_parts (the download plan, doctor --weights) listed umt5 (11.4 GB) and its tokenizer although the
    official release's encoder .pth and google/umt5-xxl tokenizer were there."""
    from echomimic_lib.models.wan.sources import missing_parts

    hf = tmp_path / "hf"
    root = _official_release(tmp_path / "v3-flash", hf, _tiny_hf_umt5(hf))
    names = {m.source.name for m in missing_parts(root)}
    assert "umt5" not in names and "tokenizer" not in names, names
    assert "flash" in names  # what is really absent is still asked for


def test_a_damaged_official_encoder_file_is_named_with_the_fix(tmp_path):
    from echomimic_lib.models.wan.official_t5 import load_official_umt5

    bad = tmp_path / T5
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="download it again"):
        load_official_umt5(bad)
    torch.save({"something.else": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="official models_t5"):
        load_official_umt5(bad)


def test_doctor_weights_takes_the_official_encoder_and_names_a_damaged_one(tmp_path):
    """`echomimic doctor --weights` on a set whose text encoder is the official .pth: not "missing" (it listed
    umt5-xxl/ files); a .pth that is no torch file is named as broken."""
    from echomimic_lib.jobs.doctor.models import check_v3
    from echomimic_lib.models.wan.tiny import write_tiny_v3

    folder = write_tiny_v3(tmp_path / "v3-flash")
    hf = folder / "umt5-xxl"
    from transformers import UMT5EncoderModel

    model = UMT5EncoderModel.from_pretrained(str(hf))
    moved = tmp_path / "hf"
    shutil.move(str(hf), str(moved))
    _official_release(folder, moved, model)
    row = check_v3(tmp_path)
    assert row["status"] in ("tiny", "ready") and not row["missing"], row
    (folder / BASE / T5).write_bytes(b"<html>rate limited</html>")  # a failed download saved as the file
    row = check_v3(tmp_path)
    assert row["status"] == "broken" and T5 in row["broken"][0]["path"], row
