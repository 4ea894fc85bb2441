"""Prompt and image encoders for the headless V3 path (inside ComfyUI, core's umT5 / CLIP-vision nodes do this).

* Text: transformers ``UMT5EncoderModel`` + its tokenizer from a Hugging Face folder (umT5-xxl, as diffusers'
  Wan pipelines use it). Official procedure: pad/truncate to 512 tokens with the attention mask, keep only
  the real tokens' states (the transformer zero-pads them back to 512). Embeddings are cached on disk per
  (encoder folder, prompt, dtype), so the 5.7 B-parameter encoder runs once per prompt and precision. A prompt
  longer than the 512 tokens is cut as the official; a log warning names how many tokens are dropped, before the
  encoder's weights load (the tokenizer loads first) and again when its cached states are reused.
* Image: transformers ``CLIPVisionModel`` (ViT-H/14): the reference at the sample size, bicubic resize to
  the model's input size (no antialias, as the official ``CLIPModel.visual``), CLIP mean/std, and the
  states after the penultimate block (``hidden_states[-2]``; Wan's ``use_31_block``) -> (1, 257, 1280).
  Whether the HF checkpoints equal Wan's own ``.pth`` encoders bit for bit is not verified; the official umT5 ``.pth``
  itself is read too (:mod:`echomimic_lib.models.wan.official_t5`: a folder laid out as the official README).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TEXT_LEN = 512
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
log = logging.getLogger(__name__)


def _cache_file(cache_dir: Path, encoder_dir: Path, prompt: str, dtype: torch.dtype) -> Path:
    """Keyed by encoder folder, prompt and the encoder's dtype (states encoded in bf16 differ from fp32 ones: a run
    must not get the other precision's states because that one ran first)."""
    key = hashlib.sha256(f"{Path(encoder_dir).resolve()}\0{prompt}\0{dtype}".encode()).hexdigest()[:32]
    return Path(cache_dir) / f"{key}.safetensors"


def missing_prompts(encoder_dir: str | Path, prompts, cache_dir: str | Path | None, dtype=torch.float32) -> list[str]:
    """The distinct ``prompts`` (first-seen order) without cached states in ``cache_dir`` (all of them without one)."""
    distinct = list(dict.fromkeys(str(p) for p in prompts))
    if not cache_dir:
        return distinct
    return [p for p in distinct if not _cache_file(cache_dir, encoder_dir, p, dtype).is_file()]


def dropped_tokens(tok, prompt: str) -> int:
    """How many of ``prompt``'s tokens (special ones included) fall past the encoder's ``TEXT_LEN``."""
    n = len(tok([prompt], add_special_tokens=True, truncation=False, verbose=False).input_ids[0])
    return max(0, n - TEXT_LEN)


def warn_dropped(prompt: str, dropped: int) -> None:
    if dropped > 0:
        log.warning("V3 prompt %r: %d tokens past the text encoder's %d are dropped (umT5 reads the first %d, as the "
                    "official); shorten the prompt to keep them all.", prompt[:40] + ("..." if len(prompt) > 40 else ""),
                    dropped, TEXT_LEN, TEXT_LEN)


def load_umt5(encoder_dir: str | Path, device="cpu", dtype=torch.float32, prompts=()):
    """(tokenizer, UMT5EncoderModel) from a Hugging Face folder, for :func:`encode_prompt` (``encoder=``); each of
    ``prompts`` longer than ``TEXT_LEN`` tokens is warned about after the tokenizer loads, before the model does."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    from ...models.wan.official_t5 import OFFICIAL_TOKENIZER, load_official_umt5

    encoder_dir = Path(encoder_dir)
    official = encoder_dir.suffix == ".pth"  # the official release's encoder file: tokenizer in google/umt5-xxl/ beside it
    tok_dir = encoder_dir.parent / OFFICIAL_TOKENIZER if official else encoder_dir
    if official and not (tok_dir / "tokenizer_config.json").is_file() and (encoder_dir.parent.parent / "umt5-xxl").is_dir():
        tok_dir = encoder_dir.parent.parent / "umt5-xxl"
    if not official and not (encoder_dir / "config.json").is_file():
        raise FileNotFoundError(f"{encoder_dir}: no config.json; expected a Hugging Face umT5 encoder folder (with its tokenizer)")
    from ...io.weights import from_hf_folder

    tok = from_hf_folder(lambda: AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True), tok_dir,
                         "umT5 tokenizer")
    for prompt in prompts:
        warn_dropped(prompt, dropped_tokens(tok, prompt))
    if official:
        model = load_official_umt5(encoder_dir, dtype)
    else:
        model = from_hf_folder(lambda: UMT5EncoderModel.from_pretrained(str(encoder_dir), local_files_only=True,
                                                                        torch_dtype=dtype), encoder_dir, "umT5-xxl text encoder")
    return tok, model.to(device).eval()


@torch.no_grad()
def encode_prompt(encoder_dir: str | Path, prompt: str, cache_dir: str | Path | None = None, device="cpu",
                  dtype=torch.float32, encoder=None, warned: bool = False) -> torch.Tensor:
    """(1, n_tokens, 4096) umT5 states of the prompt's real tokens (cached in ``cache_dir`` if given).
    ``encoder``: a loaded (tokenizer, model) to use on a cache miss (else loaded here); ``warned``: its
    :func:`load_umt5` named a cut prompt already (not said twice)."""
    from safetensors.torch import load_file

    encoder_dir = Path(encoder_dir)
    cached = _cache_file(cache_dir, encoder_dir, prompt, dtype) if cache_dir else None
    if cached is not None and cached.is_file():
        from safetensors import safe_open

        with safe_open(str(cached), "pt") as f:  # the cut, said again on every run that reuses it
            warn_dropped(prompt, int((f.metadata() or {}).get("dropped_tokens", 0)))
        return load_file(str(cached))["prompt_embeds"]
    tok, model = encoder if encoder is not None else load_umt5(encoder_dir, device, dtype, prompts=[prompt])
    dropped = dropped_tokens(tok, prompt)  # load_umt5 said it before the model loaded; a given encoder: said here
    if encoder is not None and not warned:
        warn_dropped(prompt, dropped)
    dev = next(model.parameters()).device
    ids = tok([prompt], padding="max_length", max_length=TEXT_LEN, truncation=True, add_special_tokens=True, return_tensors="pt")
    mask = ids.attention_mask.to(dev)
    states = model(ids.input_ids.to(dev), attention_mask=mask).last_hidden_state
    out = states[:, : int(mask.sum())].float().cpu().contiguous()
    if cached is not None:
        _keep(cached, out, dropped)
    return out


def _keep(cached: Path, out: torch.Tensor, dropped: int) -> None:
    """Cache the states; a cache the disk refuses (a read-only or full models folder) is said and the render goes on
    with the states in memory (it was a SafetensorError traceback, or a stopped render for a spare file)."""
    from safetensors.torch import save_file

    from ...io.os_errors import write_refused

    tmp = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{cached.stem}.", suffix=".partial", dir=cached.parent)  # the writer's own:
        os.close(fd)  # batch workers may encode the same prompt at once; each renames a whole file into place
        save_file({"prompt_embeds": out}, tmp, metadata={"dropped_tokens": str(dropped)})
        os.replace(tmp, cached)
    except Exception as exc:
        refused = write_refused(exc, cached, " The prompt is encoded again next time; the render goes on.")
        if refused is None:
            raise
        log.warning("%s", refused)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def load_clip_vision(vision_dir: str | Path, device="cpu", dtype=torch.float32):
    """transformers ``CLIPVisionModel`` from a Hugging Face folder, for :func:`clip_features` (``model=``)."""
    from transformers import CLIPVisionModel

    vision_dir = Path(vision_dir)
    if not (vision_dir / "config.json").is_file():
        raise FileNotFoundError(f"{vision_dir}: no config.json; expected a Hugging Face CLIPVisionModel folder (ViT-H/14)")
    from ...io.weights import from_hf_folder

    model = from_hf_folder(lambda: CLIPVisionModel.from_pretrained(str(vision_dir), local_files_only=True, torch_dtype=dtype),
                           vision_dir, "CLIP ViT-H/14 image encoder")
    return model.to(device).eval()


@torch.no_grad()
def clip_features(vision_dir: str | Path, ref_u8: np.ndarray, device="cpu", dtype=torch.float32, model=None) -> torch.Tensor:
    """(1, 257, width) CLIP-vision states after the penultimate block for an (H, W, 3) uint8 reference
    (``model``: a loaded CLIPVisionModel, else loaded from ``vision_dir``)."""
    if model is None:
        model = load_clip_vision(vision_dir, device, dtype)
    p = next(model.parameters())
    size = int(model.config.image_size)
    x = torch.from_numpy(np.array(ref_u8, dtype=np.uint8)).permute(2, 0, 1)[None].float().div(255)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    out = model(pixel_values=x.to(p.device, p.dtype), output_hidden_states=True).hidden_states[-2]
    return out.float().cpu()
