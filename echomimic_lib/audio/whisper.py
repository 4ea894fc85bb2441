"""whisper-tiny encoder: checkpoint loading, the 5 stacked states EchoMimic uses, random test weights.

The network is ``transformers``' ``WhisperEncoder`` (not a vendored copy of whisper). EchoMimic
conditions on 5 states per 20 ms row: the input embedding (conv stem + positional embedding) and the
output of each of the 4 encoder blocks, **without** the final LayerNorm. ``WhisperEncoder`` applies that
LayerNorm to its last hidden state, so the states are collected with hooks: a pre-hook on the first
block (its input is the embedding) and a hook on every block's output.

Accepted checkpoints (always read with ``torch.load(..., weights_only=True)`` or safetensors):

- OpenAI format: ``{"dims": {...}, "model_state_dict": {...}}`` (``tiny.pt``, EchoMimic's
  ``whisper_tiny.pt``), with or without the decoder (ignored), ``encoder.ln_post`` optional.
- A bare OpenAI-style state dict (``encoder.blocks.*`` keys) in ``.pt``/``.pth``/``.bin``/``.safetensors``.
- Hugging Face ``openai/whisper-tiny``: a folder with ``config.json`` and ``model.safetensors`` or
  ``pytorch_model.bin`` (``WhisperModel`` keys ``encoder.*`` or ``WhisperForConditionalGeneration``
  keys ``model.encoder.*``), or such a weight file on its own.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import torch

from ..errors import MissingWeightsError, WeightsError
from ..io.file_names import plain_file_name
from ..io.json_file import read_json

log = logging.getLogger(__name__)

TINY_DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4}
# Decoder/text dims of whisper-tiny, only used when writing a full OpenAI-format checkpoint.
TINY_TEXT_DIMS = {"n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6, "n_text_layer": 4}
NUM_STATES = 5  # embedding + 4 blocks
_SIZE_NAMES = {384: "tiny", 512: "base", 768: "small", 1024: "medium", 1280: "large"}
_FIX = (
    "EchoMimic needs whisper-tiny (384-d, 4 layers, 80 mel bins): use OpenAI's tiny.pt (whisper_tiny.pt in the "
    "EchoMimic release, audio_processor/) or the Hugging Face openai/whisper-tiny folder."
)

# OpenAI encoder block names -> transformers WhisperEncoderLayer names.
_BLOCK_MAP = {
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "attn_ln": "self_attn_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
    "mlp_ln": "final_layer_norm",
}


# ----------------------------------------------------------------------------------------- reading


def _read_tensor_file(path: Path) -> dict:
    """Raw content of one weight file (safetensors: only encoder tensors are read)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys() if "encoder." in k}
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a checkpoint, or holds objects weights_only refuses
        raise WeightsError(
            f"{path}: cannot read this whisper checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). "
            f"The file is corrupt, truncated or not a PyTorch/safetensors weight file; download it again. {_FIX}"
        ) from exc


def _hf_weight_files(folder: Path) -> list[Path]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            return [folder / s for s in _index_shards(index)]
    raise MissingWeightsError(
        f"{folder}: has config.json but no model.safetensors or pytorch_model.bin. Download the weights of openai/whisper-tiny into this folder.",
        [str(folder / "model.safetensors")],
    )


def _index_shards(index: Path) -> list[str]:
    """The shard names a weight index's ``weight_map`` lists; a damaged or foreign index is named with the fix."""
    fix = f"download the openai/whisper-tiny folder again. {_FIX}"
    doc = read_json(index, "not a readable weight index", fix, WeightsError, max_bytes=64 << 20, expect=dict)
    names = doc.get("weight_map")
    if not isinstance(names, dict) or not names or not all(plain_file_name(n) for n in names.values()):
        raise WeightsError(f"{index}: not a weight index (no 'weight_map' of tensor names to file names in its "
                           f"folder); {fix}")
    return sorted(set(names.values()))


def _hf_config_dims(config_file: Path) -> dict:
    cfg = read_json(config_file, "not a readable JSON config", f"download it again. {_FIX}", WeightsError,
                    max_bytes=1 << 20, expect=dict)
    if cfg.get("model_type", "whisper") != "whisper":
        raise WeightsError(f"{config_file}: model_type is '{cfg.get('model_type')}', not 'whisper'. {_FIX}")
    return {
        "n_mels": cfg.get("num_mel_bins", 80),  # transformers' defaults when a config omits them
        "n_audio_ctx": cfg.get("max_source_positions", 1500),
        "n_audio_state": cfg.get("d_model"),
        "n_audio_head": cfg.get("encoder_attention_heads"),
        "n_audio_layer": cfg.get("encoder_layers"),
    }


def _to_hf_encoder_keys(state: dict, source: str) -> dict:
    """Encoder tensors renamed to ``WhisperEncoder`` keys; decoder and other keys are dropped."""
    if any(k.startswith("encoder.blocks.") or k == "encoder.positional_embedding" for k in state):  # OpenAI
        out = {}
        for key, value in state.items():
            if not key.startswith("encoder."):
                continue
            k = key[len("encoder.") :]
            if k == "positional_embedding":
                out["embed_positions.weight"] = value
            elif k.startswith("ln_post."):
                out["layer_norm." + k[len("ln_post.") :]] = value
            elif k.startswith(("conv1.", "conv2.")):
                out[k] = value
            else:
                m = re.fullmatch(r"blocks\.(\d+)\.(attn\.query|attn\.key|attn\.value|attn\.out|attn_ln|mlp\.0|mlp\.2|mlp_ln)\.(weight|bias)", k)
                if m is None:
                    log.warning("%s: ignoring unknown encoder tensor '%s'", source, key)
                    continue
                out[f"layers.{m.group(1)}.{_BLOCK_MAP[m.group(2)]}.{m.group(3)}"] = value
        return out
    for prefix in ("model.encoder.", "encoder."):  # Hugging Face
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if "conv1.weight" in state and "embed_positions.weight" in state:  # a bare WhisperEncoder state dict
        return dict(state)
    raise WeightsError(f"{source}: no whisper encoder tensors in this file (expected 'encoder.*' or 'model.encoder.*' keys). {_FIX}")


def _dims_from_tensors(enc: dict) -> dict:
    dims = {}
    if "conv1.weight" in enc:
        dims["n_audio_state"], dims["n_mels"] = int(enc["conv1.weight"].shape[0]), int(enc["conv1.weight"].shape[1])
        dims["n_audio_head"] = dims["n_audio_state"] // 64  # every whisper size has 64-d heads
    if "embed_positions.weight" in enc:
        dims["n_audio_ctx"] = int(enc["embed_positions.weight"].shape[0])
    layers = {int(m.group(1)) for k in enc if (m := re.match(r"layers\.(\d+)\.", k))}
    dims["n_audio_layer"] = max(layers) + 1 if layers else 0
    return dims


def _check_tiny(dims: dict, source: str) -> None:
    got = {k: dims.get(k) for k in TINY_DIMS}
    if got == TINY_DIMS:
        return
    width = got.get("n_audio_state")
    name = _SIZE_NAMES.get(width, "an unknown size") if isinstance(width, int) else "an unknown size"
    if name == "large" and got.get("n_mels") == 128:
        name = "large-v3"
    what = f"whisper-{name}" if not name.startswith("an ") else f"a whisper model of {name}"
    raise WeightsError(
        f"{source}: this is {what} ({width}-d, {got.get('n_audio_layer')} layers, {got.get('n_mels')} mel bins, "
        f"{got.get('n_audio_head')} heads, {got.get('n_audio_ctx')} positions); {_FIX}"
    )


def _expected_shapes() -> dict:
    d, m, ctx, L = TINY_DIMS["n_audio_state"], TINY_DIMS["n_mels"], TINY_DIMS["n_audio_ctx"], TINY_DIMS["n_audio_layer"]
    shapes = {"conv1.weight": (d, m, 3), "conv1.bias": (d,), "conv2.weight": (d, d, 3), "conv2.bias": (d,), "embed_positions.weight": (ctx, d)}
    for i in range(L):
        p = f"layers.{i}."
        for lin in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{lin}.weight"] = (d, d)
            if lin != "k_proj":
                shapes[p + f"self_attn.{lin}.bias"] = (d,)
        shapes.update({p + "fc1.weight": (4 * d, d), p + "fc1.bias": (4 * d,), p + "fc2.weight": (d, 4 * d), p + "fc2.bias": (d,)})
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            shapes.update({p + f"{ln}.weight": (d,), p + f"{ln}.bias": (d,)})
    return shapes


def read_whisper_encoder_state(path: str | Path) -> dict:
    """Encoder tensors of a whisper-tiny checkpoint as ``WhisperEncoder`` keys (CPU, stored dtype).

    Raises :class:`MissingWeightsError` / :class:`WeightsError` naming the file and what to do.
    """
    path = Path(path).expanduser()
    source = str(path)
    if not path.exists():
        raise MissingWeightsError(f"{source}: whisper-tiny checkpoint not found. {_FIX}", [source])
    dims = None
    if path.is_dir():
        if (path / "config.json").is_file():
            dims = _hf_config_dims(path / "config.json")
            _check_tiny(dims, source)
            raw = {}
            for f in _hf_weight_files(path):
                raw.update(_read_tensor_file(f))
        else:
            found = [path / n for n in ("whisper_tiny.pt", "tiny.pt", "whisper_tiny_encoder.pt") if (path / n).is_file()]
            if not found:
                raise MissingWeightsError(f"{source}: folder has neither config.json (Hugging Face) nor tiny.pt / whisper_tiny.pt. {_FIX}", [source])
            return read_whisper_encoder_state(found[0])
    else:
        raw = _read_tensor_file(path)
    if not isinstance(raw, dict):
        raise WeightsError(f"{source}: holds a {type(raw).__name__}, not a state dict. {_FIX}")
    if "model_state_dict" in raw:  # OpenAI format
        dims = raw.get("dims")
        if not isinstance(dims, dict):
            raise WeightsError(f"{source}: OpenAI-format checkpoint without a 'dims' dict. {_FIX}")
        _check_tiny(dims, source)
        raw = raw["model_state_dict"]
        if not isinstance(raw, dict):
            raise WeightsError(f"{source}: 'model_state_dict' is not a dict of tensors. {_FIX}")
    enc = _to_hf_encoder_keys(raw, source)
    if "conv1.weight" in enc:  # the tensors must agree with the declared dims (or stand in for them)
        _check_tiny({**(dims or {}), **_dims_from_tensors(enc)}, source)
    expected = _expected_shapes()
    missing = sorted(k for k in expected if k not in enc)
    if missing:
        raise WeightsError(f"{source}: {len(missing)} whisper encoder tensors are missing (e.g. {', '.join(missing[:4])}); the file is incomplete. {_FIX}")
    for key, shape in expected.items():
        if not isinstance(enc[key], torch.Tensor) or tuple(enc[key].shape) != shape:
            got = tuple(enc[key].shape) if isinstance(enc[key], torch.Tensor) else type(enc[key]).__name__
            raise WeightsError(f"{source}: tensor '{key}' has shape {got}, whisper-tiny needs {shape}. {_FIX}")
        if not enc[key].is_floating_point():
            raise WeightsError(f"{source}: tensor '{key}' is {enc[key].dtype}, expected floating point weights. {_FIX}")
    d = TINY_DIMS["n_audio_state"]
    enc.setdefault("layer_norm.weight", torch.ones(d))  # ln_post is never used for EchoMimic features
    enc.setdefault("layer_norm.bias", torch.zeros(d))
    return {k: v for k, v in enc.items() if k in expected or k.startswith("layer_norm.")}


# ----------------------------------------------------------------------------------------- network


def _tiny_config():
    from transformers import WhisperConfig

    return WhisperConfig(
        num_mel_bins=TINY_DIMS["n_mels"],
        max_source_positions=TINY_DIMS["n_audio_ctx"],
        d_model=TINY_DIMS["n_audio_state"],
        encoder_attention_heads=TINY_DIMS["n_audio_head"],
        encoder_layers=TINY_DIMS["n_audio_layer"],
        encoder_ffn_dim=4 * TINY_DIMS["n_audio_state"],
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        attn_implementation="sdpa",
    )


class WhisperFeatureEncoder(torch.nn.Module):
    """``WhisperEncoder`` returning EchoMimic's 5 stacked states: (B, 80, 3000) -> (B, 1500, 5, 384)."""

    segment_frames = 2 * TINY_DIMS["n_audio_ctx"]  # 3000 mel frames = 30 s

    def __init__(self, encoder: torch.nn.Module, source: str = "<memory>"):
        super().__init__()
        self.encoder = encoder.eval()
        self.source = source
        self._states: list[torch.Tensor] | None = None
        layers = encoder.layers
        layers[0].register_forward_pre_hook(self._grab_input)
        for layer in layers:
            layer.register_forward_hook(self._grab_output)

    def _grab_input(self, _module, args):
        if self._states is not None:
            self._states.append(args[0])

    def _grab_output(self, _module, _args, output):
        if self._states is not None:
            self._states.append(output[0] if isinstance(output, tuple) else output)

    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv1.weight.dtype

    @torch.no_grad()
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.ndim != 3 or mel.shape[1] != TINY_DIMS["n_mels"] or mel.shape[2] != self.segment_frames:
            raise ValueError(f"WhisperFeatureEncoder expects (B, 80, 3000) log-mel segments, got {tuple(mel.shape)}")
        self._states = []
        try:
            self.encoder(mel.to(self.device, self.dtype))
            states = self._states
        finally:
            self._states = None
        return torch.stack(states, dim=2)


def build_whisper_encoder(state: dict, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, source: str = "<memory>") -> WhisperFeatureEncoder:
    """A :class:`WhisperFeatureEncoder` from ``WhisperEncoder``-keyed tensors (see :func:`read_whisper_encoder_state`)."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    with torch.device("meta"):
        encoder = WhisperEncoder(_tiny_config())
    encoder.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True, assign=True)
    encoder.requires_grad_(False)
    return WhisperFeatureEncoder(encoder.to(device=device, dtype=dtype), source)


def load_whisper_encoder(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> WhisperFeatureEncoder:
    """Load whisper-tiny (OpenAI or Hugging Face format) as a :class:`WhisperFeatureEncoder`."""
    return build_whisper_encoder(read_whisper_encoder_state(path), device, dtype, str(path))


# ----------------------------------------------------------------------------------------- test weights


def _sinusoids(length: int, channels: int) -> torch.Tensor:
    half = channels // 2
    inv = torch.exp(-math.log(10000) / (half - 1) * torch.arange(half, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1).float()


def random_whisper_state_dict(seed: int = 0, dims: dict | None = None, include_decoder: bool = False) -> dict:
    """OpenAI-format ``model_state_dict`` with random float32 values (shapes from ``dims``, default tiny)."""
    dims = {**TINY_DIMS, **TINY_TEXT_DIMS, **(dims or {})}
    g = torch.Generator().manual_seed(seed)

    def lin(out_f, in_f, scale=1.0):
        return torch.randn(out_f, in_f, generator=g) * (scale / math.sqrt(in_f))

    def vec(n, mean=0.0, std=0.02):
        return mean + std * torch.randn(n, generator=g)

    d, m = dims["n_audio_state"], dims["n_mels"]
    sd = {
        "encoder.conv1.weight": torch.randn(d, m, 3, generator=g) / math.sqrt(3 * m),
        "encoder.conv1.bias": vec(d),
        "encoder.conv2.weight": torch.randn(d, d, 3, generator=g) / math.sqrt(3 * d),
        "encoder.conv2.bias": vec(d),
        "encoder.positional_embedding": _sinusoids(dims["n_audio_ctx"], d),
    }

    def block(prefix, width, cross=False):
        names = ["attn"] + (["cross_attn"] if cross else [])
        for a in names:
            for proj in ("query", "key", "value", "out"):
                sd[f"{prefix}.{a}.{proj}.weight"] = lin(width, width, 0.5 if proj == "out" else 1.0)
                if proj != "key":
                    sd[f"{prefix}.{a}.{proj}.bias"] = vec(width)
            sd[f"{prefix}.{a}_ln.weight"], sd[f"{prefix}.{a}_ln.bias"] = vec(width, 1.0, 0.1), vec(width)
        sd[f"{prefix}.mlp.0.weight"], sd[f"{prefix}.mlp.0.bias"] = lin(4 * width, width), vec(4 * width)
        sd[f"{prefix}.mlp.2.weight"], sd[f"{prefix}.mlp.2.bias"] = lin(width, 4 * width, 0.5), vec(width)
        sd[f"{prefix}.mlp_ln.weight"], sd[f"{prefix}.mlp_ln.bias"] = vec(width, 1.0, 0.1), vec(width)

    for i in range(dims["n_audio_layer"]):
        block(f"encoder.blocks.{i}", d)
    sd["encoder.ln_post.weight"], sd["encoder.ln_post.bias"] = vec(d, 1.0, 0.1), vec(d)
    if include_decoder:
        t = dims["n_text_state"]
        sd["decoder.token_embedding.weight"] = 0.02 * torch.randn(dims["n_vocab"], t, generator=g)
        sd["decoder.positional_embedding"] = 0.02 * torch.randn(dims["n_text_ctx"], t, generator=g)
        for i in range(dims["n_text_layer"]):
            block(f"decoder.blocks.{i}", t, cross=True)
        sd["decoder.ln.weight"], sd["decoder.ln.bias"] = vec(t, 1.0, 0.1), vec(t)
    return sd


def random_whisper_encoder(seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> WhisperFeatureEncoder:
    """A random-weight whisper-tiny :class:`WhisperFeatureEncoder` built in memory (values rounded to float16
    like :func:`save_random_whisper` files, so both give the same network for the same seed)."""
    sd = {k: v.to(torch.float16) for k, v in random_whisper_state_dict(seed).items()}
    state = _to_hf_encoder_keys(sd, "<random>")
    return build_whisper_encoder(state, device, dtype, f"<random whisper-tiny seed={seed}>")


def save_random_whisper(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.float16, dims: dict | None = None, include_decoder: bool = False) -> Path:
    """Write a random-weight whisper checkpoint in OpenAI's format ``{"dims", "model_state_dict"}``.

    Default: whisper-tiny dims (the denoiser needs 5 x 384 features), encoder only, float16 values.
    ``dims`` overrides some dims (e.g. whisper-base, to test the wrong-model error); ``include_decoder``
    adds a random decoder (58 MB) as in OpenAI's real files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    all_dims = {**TINY_DIMS, **TINY_TEXT_DIMS, **(dims or {})}
    sd = {k: v.to(dtype).contiguous() for k, v in random_whisper_state_dict(seed, dims, include_decoder).items()}
    torch.save({"dims": all_dims, "model_state_dict": sd}, str(path))
    return path
