"""Random stand-ins for the three core models the V3 workflows load with ComfyUI's own loaders, written in the key
layout those loaders read (run in a subprocess with a ComfyUI checkout on sys.path:
``python tests/_comfy_core_tiny.py <models>``; tests/test_workflows_comfyui_real.py does).

The key names and shapes come from ComfyUI's own classes, built on the meta device, so they are the ones the checkout
expects. Core's loaders fix each architecture by file type (no small variant exists), hence:

- ``vae/wan_2.1_vae.safetensors``: the whole Wan 2.1 VAE (127 M parameters, fp16), random.
- ``clip_vision/clip_vision_h.safetensors``: the whole ViT-H/14 vision tower (632 M parameters, fp16), random.
- ``text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors``: umT5-xxl is 5.7 B parameters, so only its small tensors
  (norms, relative attention biases: random), the one large matrix core's type detection reads (zeros) and a tiny
  SentencePiece tokenizer (``spiece_model``) are written. ComfyUI builds the full-size encoder and loads the file with
  ``strict=False`` (it logs the missing keys); its large matrices are fresh, never-written allocations, which read
  as zeros, so the encoder runs (slowly: a minute on two CPU cores for the 512 tokens core pads to) and returns
  zeros. Nothing here is a real model; the file names are the ones the shipped workflows select.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

T5_DETECT_KEY = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"  # comfy.sd.detect_te_model reads its shape
SMALL = 1 << 20  # umT5 tensors up to this many elements are written; larger ones (the matrices) are left out


def _random(shape, name: str, gen, dtype):
    import torch

    if name.endswith(("bias", "beta")):
        return (0.02 * torch.randn(shape, generator=gen)).to(dtype)
    if "norm" in name or name.endswith("gamma") or len(shape) == 1:
        return (1.0 + 0.1 * torch.randn(shape, generator=gen)).to(dtype)
    fan_in = max(1, int(torch.Size(shape).numel() // shape[0]))
    return (torch.randn(shape, generator=gen) * min(0.25, fan_in ** -0.5)).to(dtype)


def _tokenizer() -> bytes:
    """A tiny SentencePiece model with umT5's special ids (pad 0, end 1)."""
    import sentencepiece as spm

    text = ["A person is speaking.", "A man is talking to the camera.", "A woman speaks, smiling.", "The person talks."]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text * 20), model_writer=out, vocab_size=40, model_type="unigram",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    return out.getvalue()


def write_core_models(models: Path, seed: int = 0) -> dict[str, Path]:
    import torch
    from safetensors.torch import save_file

    import comfy.clip_model
    import comfy.clip_vision
    import comfy.ldm.wan.vae
    import comfy.ops
    import comfy.text_encoders.t5

    gen = torch.Generator().manual_seed(seed)
    here = Path(comfy.clip_vision.__file__).parent
    out = {}
    with torch.device("meta"):  # shapes only; the values are drawn below
        vae = comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                       temperal_downsample=[False, True, True], dropout=0.0)  # core's Wan 2.1 config
        vision = comfy.clip_model.CLIPVisionModelProjection(json.loads((here / "clip_vision_config_h.json").read_text()),
                                                            torch.float16, "meta", comfy.ops.manual_cast)
        t5 = comfy.text_encoders.t5.T5(json.loads((here / "text_encoders" / "umt5_config_xxl.json").read_text()),
                                       torch.float32, "meta", comfy.ops.manual_cast)
    for folder, name, net in (("vae", "wan_2.1_vae.safetensors", vae), ("clip_vision", "clip_vision_h.safetensors", vision)):
        sd = {k: _random(v.shape, k, gen, torch.float16).contiguous() for k, v in net.state_dict().items()}
        (models / folder).mkdir(parents=True, exist_ok=True)
        save_file(sd, str(models / folder / name))
        out[folder] = models / folder / name
    sd = {k: _random(v.shape, k, gen, torch.float32) for k, v in t5.state_dict().items() if v.numel() <= SMALL}
    sd[T5_DETECT_KEY] = torch.zeros(t5.state_dict()[T5_DETECT_KEY].shape)
    sd["spiece_model"] = torch.frombuffer(bytearray(_tokenizer()), dtype=torch.uint8)
    (models / "text_encoders").mkdir(parents=True, exist_ok=True)
    save_file(sd, str(models / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"))
    out["text_encoders"] = models / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1])
    sys.argv = ["main.py", "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    print(json.dumps({k: str(v) for k, v in write_core_models(target).items()}))
