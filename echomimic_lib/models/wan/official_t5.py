"""The official Wan release's umT5-xxl encoder file (``models_t5_umt5-xxl-enc-bf16.pth``) as a transformers
``UMT5EncoderModel``, so a folder laid out as the official EchoMimicV3 README says is not downloaded again.

The official file is the state dict of Wan's own ``T5Encoder`` (``wan/modules/t5.py``: ``token_embedding``,
``blocks.N.{norm1, attn.{q,k,v,o}, norm2, ffn.{gate.0, fc1, fc2}, pos_embedding.embedding}``, ``norm``; one
relative-position table per block, gated tanh-GELU feed-forward, RMS norms), which is umT5's encoder under other
names; :func:`hf_key` renames each key, the sizes come from the tensors' shapes. Its tokenizer is the Hugging Face
``google/umt5-xxl`` folder beside it.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

OFFICIAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_TOKENIZER = "google/umt5-xxl"

_BLOCK = {"norm1.weight": "layer.0.layer_norm.weight", "attn.q.weight": "layer.0.SelfAttention.q.weight",
          "attn.k.weight": "layer.0.SelfAttention.k.weight", "attn.v.weight": "layer.0.SelfAttention.v.weight",
          "attn.o.weight": "layer.0.SelfAttention.o.weight",
          "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
          "norm2.weight": "layer.1.layer_norm.weight", "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
          "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight", "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight"}
_TOP = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_INV_BLOCK = {v: k for k, v in _BLOCK.items()}
_INV_TOP = {v: k for k, v in _TOP.items()}


def hf_key(key: str) -> str:
    """The ``UMT5EncoderModel`` name of an official key (KeyError for a key the official encoder does not have)."""
    if key in _TOP:
        return _TOP[key]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m and m.group(2) in _BLOCK:
        return f"encoder.block.{m.group(1)}.{_BLOCK[m.group(2)]}"
    raise KeyError(key)


def official_key(key: str) -> str | None:
    """The inverse of :func:`hf_key` (None for ``encoder.embed_tokens.weight``, the tied copy of ``shared.weight``)."""
    if key in _INV_TOP:
        return _INV_TOP[key]
    m = re.fullmatch(r"encoder\.block\.(\d+)\.(.+)", key)
    if m and m.group(2) in _INV_BLOCK:
        return f"blocks.{m.group(1)}.{_INV_BLOCK[m.group(2)]}"
    if key == "encoder.embed_tokens.weight":
        return None
    raise KeyError(key)


def official_files(base: Path) -> tuple[Path, Path] | None:
    """(encoder .pth, tokenizer folder) in the official base folder ``base``; None unless both are there."""
    pth, tok = Path(base) / OFFICIAL_T5, Path(base) / OFFICIAL_TOKENIZER
    return (pth, tok) if pth.is_file() and (tok / "tokenizer_config.json").is_file() else None


def _config(sd: dict):
    from transformers import UMT5Config

    try:
        vocab, dim = sd["token_embedding.weight"].shape
        layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        buckets, heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
        dim_attn = sd["blocks.0.attn.q.weight"].shape[0]
        ffn = sd["blocks.0.ffn.fc1.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as e:
        raise ValueError(f"not Wan's umT5 encoder state dict (no {e}); expected the official {OFFICIAL_T5}") from None
    return UMT5Config(vocab_size=int(vocab), d_model=int(dim), d_kv=int(dim_attn) // int(heads), d_ff=int(ffn),
                      num_layers=layers, num_heads=int(heads), relative_attention_num_buckets=int(buckets),
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, tie_word_embeddings=False)


def load_official_umt5(pth: str | Path, dtype=torch.float32):
    """A ``UMT5EncoderModel`` holding the official ``.pth`` encoder's weights (read memory-mapped, weights only)."""
    from transformers import UMT5EncoderModel

    pth = Path(pth)
    try:
        sd = torch.load(str(pth), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - a cut download or another format: said with the file and the fix
        raise ValueError(f"{pth}: not a readable torch weights file ({type(e).__name__}: {e}); download it again") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    try:
        cfg = _config(sd)
    except ValueError as e:
        raise ValueError(f"{pth}: {e}") from None
    try:
        mapped = {hf_key(k): v for k, v in sd.items()}
    except KeyError as e:
        raise ValueError(f"{pth}: key {e} is not one of Wan's umT5 encoder; expected the official {OFFICIAL_T5}") from None
    mapped["encoder.embed_tokens.weight"] = mapped["shared.weight"]
    with torch.device("meta"):
        model = UMT5EncoderModel(cfg)
    model.load_state_dict(mapped, strict=True, assign=True)
    return model.to(dtype)
