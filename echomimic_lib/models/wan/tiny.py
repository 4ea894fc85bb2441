"""A tiny random-weight EchoMimicV3 flash-pro model set (tests, ``--smoke`` runs), in the CLI's layout.

``<root>/Wan2.1-Fun-V1.1-1.3B-InP/`` (config.json + base weights without the audio keys, fp16),
``<root>/echomimicv3-flash-pro/diffusion_pytorch_model.safetensors`` (audio keys only: a partial V3 file),
``<root>/vae/`` (diffusers ``AutoencoderKLWan`` folder, base width 4; the release's ``Wan2.1_VAE.pth`` goes
in the base folder instead), ``<root>/chinese-wav2vec2-base/``, ``<root>/umt5-xxl/`` (a 1-layer umT5 with a
word-level tokenizer) and ``<root>/clip-vit-h-14/`` (a 2-layer CLIP vision tower, 257 tokens).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import AudioProjConfig, WanV3Config
from .loader import is_audio_key
from .transformer import WanV3Transformer

TEXT_DIM, CLIP_DIM, W2V_HIDDEN, W2V_LAYERS = 16, 32, 16, 3
TINY_V3 = WanV3Config(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=TEXT_DIM, clip_dim=CLIP_DIM,
                      audio=AudioProjConfig(blocks=W2V_LAYERS, channels=W2V_HIDDEN, intermediate_dim=16, output_dim=32,
                                            context_tokens=2))
MARKER = ".echomimic-tiny-v3"


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / fan**0.5)


def write_tiny_v3(root: str | Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file
    from transformers import (CLIPVisionConfig, CLIPVisionModel, PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel,
                              Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model)

    root = Path(root)
    torch.manual_seed(seed)
    model = WanV3Transformer(TINY_V3)
    _randomize(model, seed)
    sd = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    base = root / "Wan2.1-Fun-V1.1-1.3B-InP"
    base.mkdir(parents=True, exist_ok=True)
    c = TINY_V3
    (base / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "model_type": "i2v", "dim": c.dim, "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim,
        "num_heads": c.num_heads, "num_layers": c.num_layers, "in_dim": c.in_dim, "out_dim": c.out_dim,
        "text_dim": c.text_dim, "text_len": c.text_len, "eps": c.eps}, indent=1))
    save_file({k: v for k, v in sd.items() if not is_audio_key(k)}, str(base / "diffusion_pytorch_model.safetensors"))
    flash = root / "echomimicv3-flash-pro"
    flash.mkdir(exist_ok=True)
    save_file({k: v for k, v in sd.items() if is_audio_key(k)}, str(flash / "diffusion_pytorch_model.safetensors"))

    AutoencoderKLWan(base_dim=4, z_dim=16).save_pretrained(str(root / "vae"))
    w2v = Wav2Vec2Model(Wav2Vec2Config(hidden_size=W2V_HIDDEN, num_hidden_layers=W2V_LAYERS, num_attention_heads=2,
                                       intermediate_size=32, conv_dim=(8,) * 7, num_conv_pos_embeddings=8,
                                       num_conv_pos_embedding_groups=2))
    w2v.save_pretrained(str(root / "chinese-wav2vec2-base"))
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(str(root / "chinese-wav2vec2-base"))

    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "</s>", "<unk>", "a", "person", "is", "speaking", "talking", "the", "man", "woman", "."]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(
        str(root / "umt5-xxl"))
    UMT5EncoderModel(UMT5Config(vocab_size=len(words), d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
                     ).save_pretrained(str(root / "umt5-xxl"))
    CLIPVisionModel(CLIPVisionConfig(hidden_size=CLIP_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=224, patch_size=14)).save_pretrained(str(root / "clip-vit-h-14"))
    (root / MARKER).write_text(str(seed))
    return root


def ensure_tiny_v3(root: str | Path, seed: int = 0) -> Path:
    root = Path(root)
    if not (root / MARKER).is_file():
        write_tiny_v3(root, seed)
    return root
