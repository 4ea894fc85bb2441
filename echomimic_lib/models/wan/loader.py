"""Load the official EchoMimicV3 flash-pro release into :class:`WanV3Transformer`, strictly.

Release layout (official ``infer_flash.py``): the base ``Wan2.1-Fun-V1.1-1.3B-InP/`` folder
(``config.json`` + ``diffusion_pytorch_model.safetensors``, original Wan key names, no audio keys) and the
flash-pro file ``echomimicv3-flash-pro/diffusion_pytorch_model.safetensors`` (optionally wrapped in a
``state_dict`` entry; it may hold every key or only some, e.g. just the audio keys), laid over the base.

The official loader uses ``load_state_dict(strict=False)``, so a V3 file without its audio keys silently
gives a model with random/unloaded audio layers. Here the merge is strict: every network key must come
from one of the two files, every audio key from the V3 file, shapes must match, and unknown keys are an
error; each error names the key and the file. :class:`LoadReport` says what came from where.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

# The only imports from the rest of echomimic_lib in models/wan, with sources.py's io.json_file and io.file_names
# and _header_tensors' io.os_errors (modules being moved: update them here).
from ...errors import WeightsError
from ...io.json_file import read_json  # the project's JSON reader (damaged, too deep, a folder or pipe: one clear error)
from ...io.weights import read_state_dict  # the project's safe reader (safetensors / weights_only pickles)
from ...memory.fp8 import to_fp8  # fp8 weight storage (per-layer upcast), shared with the V1/V2 UNets
from .config import AudioProjConfig, WanV3Config
from .transformer import WanV3Transformer

BASE_WEIGHTS = "diffusion_pytorch_model.safetensors"
FP8_LAYERS = ("blocks.",)  # the 30 blocks' Linear weights: 1.75 of the 1.86 B parameters
_AUDIO_KEY = re.compile(r"^(audio_injection\.|blocks\.\d+\.cross_attn\.(q_audio|k_audio|v_audio|norm_k_audio)\.)")


def is_audio_key(key: str) -> bool:
    return bool(_AUDIO_KEY.match(key))


@dataclass
class LoadReport:
    from_base: list = field(default_factory=list)
    from_v3: list = field(default_factory=list)
    v3_overrode_base: list = field(default_factory=list)  # keys in both files (the V3 value is used)
    dtypes: dict = field(default_factory=dict)

    def summary(self) -> str:
        audio = sum(is_audio_key(k) for k in self.from_v3)
        return (f"{len(self.from_base)} tensors from the base file, {len(self.from_v3)} from the V3 file "
                f"({audio} audio, {len(self.v3_overrode_base)} replacing base values); file dtypes {self.dtypes}")


def _read_config(cfg: Path) -> dict | None:
    """The base folder's ``config.json`` (None when absent); a half-downloaded or foreign one is named (was a
    JSONDecodeError traceback)."""
    if not cfg.is_file():
        return None
    got = read_json(cfg, "not a readable config.json", "it may be cut short. Download it again (the "
                    "Wan2.1-Fun-V1.1-1.3B-InP folder's config.json).", WeightsError, max_bytes=1 << 20)
    if not isinstance(got, dict):
        raise WeightsError(f"{cfg}: not a model config (a JSON object); download the Wan2.1-Fun-V1.1-1.3B-InP config.json again.")
    return got


def _base_paths(base: str | Path) -> tuple[Path, dict | None]:
    base = Path(base)
    if base.is_dir():
        weights = base / BASE_WEIGHTS
        if not weights.is_file():
            raise WeightsError(f"{base}: no {BASE_WEIGHTS} (the Wan2.1-Fun-V1.1-1.3B-InP transformer). Download the base model folder.")
        return weights, _read_config(base / "config.json")
    return base, _read_config(base.with_name("config.json"))


def merge_state_dicts(base_sd: dict, v3_sd: dict, expected: dict, base_label: str, v3_label: str) -> tuple[dict, LoadReport]:
    """Overlay ``v3_sd`` on ``base_sd`` and check the result against ``expected`` (name -> shape)."""
    report = LoadReport()
    merged = {}
    for key, shape in expected.items():
        if key in v3_sd:
            merged[key] = v3_sd[key]
            report.from_v3.append(key)
            if key in base_sd:
                report.v3_overrode_base.append(key)
        elif is_audio_key(key):
            where = "" if key not in base_sd else f" (the base file {base_label} has it, but audio weights must come from the V3 file)"
            raise WeightsError(f"{v3_label}: audio key '{key}' is missing{where}. This is not an EchoMimicV3 flash-pro "
                               "transformer file, or it is incomplete; download it again.")
        elif key in base_sd:
            merged[key] = base_sd[key]
            report.from_base.append(key)
        else:
            raise WeightsError(f"key '{key}' is in neither {base_label} nor {v3_label}: the base model is incomplete "
                               "or of another kind (it must be Wan2.1-Fun-V1.1-1.3B-InP).")
        if tuple(merged[key].shape) != tuple(shape):
            src = v3_label if key in v3_sd else base_label
            raise WeightsError(f"{src}: '{key}' has shape {tuple(merged[key].shape)}, the network expects {tuple(shape)} "
                               "(a file for another model size or variant).")
    unknown = sorted((set(base_sd) | set(v3_sd)) - set(expected))
    if unknown:
        raise WeightsError(f"{len(unknown)} unexpected key(s) in {base_label} / {v3_label}, e.g. {', '.join(unknown[:5])}: "
                           "not a Wan 2.1 Fun-InP / EchoMimicV3 flash-pro file.")
    report.dtypes = sorted({str(v.dtype).replace("torch.", "") for v in merged.values()})
    return merged, report


def read_v3_files(base: str | Path, v3_file: str | Path) -> tuple[dict, dict, dict | None]:
    base_weights, base_cfg = _base_paths(base)
    base_sd = read_state_dict(base_weights, mmap=False)
    v3_sd = read_state_dict(v3_file, mmap=False)  # unwraps a {"state_dict": ...} file
    return base_sd, v3_sd, base_cfg


def config_from_files(base_cfg: dict | None, v3_sd: dict, base_sd: dict) -> WanV3Config:
    if "audio_injection.proj1.weight" not in v3_sd:
        raise WeightsError("the V3 file has no 'audio_injection.proj1.weight': not an EchoMimicV3 flash-pro transformer "
                           "(the preview release has 'audio2token.*' instead and is not supported yet; an SD1.5 or EchoMimic V1/V2 file has "
                           "neither). Put the flash-pro file there: echomimic download --weights v3-flash.")
    kind = (base_cfg or {}).get("_class_name", "WanModel")
    if kind != "WanModel":  # e.g. a VAE's or a UNet's config: was "the base model is 1536 wide ... not 14B"
        raise WeightsError(f"the base folder's config.json describes a {kind}, not a Wan transformer (WanModel): the base "
                           "folder must hold Wan2.1-Fun-V1.1-1.3B-InP (config.json and "
                           f"{BASE_WEIGHTS}); download it with echomimic download --weights v3-flash.")
    try:
        audio = AudioProjConfig.from_state_dict(v3_sd)
        cfg = WanV3Config.from_official(base_cfg or {}, audio=audio)
    except (ValueError, TypeError, KeyError) as exc:  # a T2V / other Wan config, a damaged projector (were tracebacks)
        raise WeightsError(f"{exc}: the base folder must be Wan2.1-Fun-V1.1-1.3B-InP (image-to-video, 1.3B) and the V3 "
                           "file EchoMimicV3 flash-pro's; download them again (echomimic download --weights v3-flash).") from None
    if base_cfg is None:  # infer from the weights
        sd = {**base_sd, **v3_sd}
        lacking = [k for k in ("patch_embedding.weight", "blocks.0.ffn.0.weight", "text_embedding.0.weight") if k not in sd]
        if lacking:  # an SD1.5 / V1 / V2 file where the Wan base belongs (was a KeyError)
            raise WeightsError(f"the base file has no '{lacking[0]}': not a Wan 2.1 transformer (an SD1.5 or EchoMimic "
                               "V1/V2 file?). The base folder must hold Wan2.1-Fun-V1.1-1.3B-InP's config.json and "
                               f"{BASE_WEIGHTS} (echomimic download --weights v3-flash).")
        dim = int(sd["patch_embedding.weight"].shape[0])
        layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        cfg = WanV3Config(dim=dim, ffn_dim=int(sd["blocks.0.ffn.0.weight"].shape[0]), num_layers=layers,
                          num_heads=dim // 128, in_dim=int(sd["patch_embedding.weight"].shape[1]),
                          text_dim=int(sd["text_embedding.0.weight"].shape[1]), audio=audio)
    clip = base_sd.get("img_emb.proj.0.weight", v3_sd.get("img_emb.proj.0.weight"))
    if clip is not None:  # 1280 in the release (hard-coded officially); smaller in test models
        cfg = replace(cfg, clip_dim=int(clip.shape[0]))
    if cfg.audio.output_dim != cfg.dim:  # e.g. a Wan 14B base (5120 wide): was a ValueError building the network
        raise WeightsError(f"the base model is {cfg.dim} wide, the V3 file's audio projector gives {cfg.audio.output_dim}: "
                           "the base folder holds another Wan size (EchoMimicV3 flash-pro is built on the 1536-wide "
                           "Wan2.1-Fun-V1.1-1.3B-InP, not 14B); download it with echomimic download --weights v3-flash.")
    return cfg


def _header_tensors(path: Path) -> dict | None:
    """A safetensors file's tensors as meta tensors of their shapes (its header only: nothing is read); None for
    another format, a missing file or one the system will not let be read (the full read names those). An empty or
    damaged safetensors file is refused here with the full read's words (was named only after the text and image
    encoders had loaded)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty (an interrupted download?). Delete it and download it again.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception as exc:
        from ...io.os_errors import is_os_refusal

        if isinstance(exc, OSError) or is_os_refusal(exc):  # the system's refusal: the full read says which
            return None
        raise WeightsError(f"{path}: not a readable safetensors file ({exc}); it may be truncated. Download it again.") from None


def _expected(cfg: WanV3Config) -> dict:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in WanV3Transformer(cfg).state_dict().items()}


def check_v3_headers(base: str | Path, v3_file: str | Path, config: WanV3Config | None = None) -> None:
    """Every check of :func:`load_v3_transformer` that the files' headers answer (the config, which keys, their shapes),
    before a weight is read: a Wan 14B or text-to-video base file was read whole (gigabytes) before it was refused."""
    base_weights, base_cfg = _base_paths(base)
    base_sd, v3_sd = _header_tensors(base_weights), _header_tensors(Path(v3_file))
    if base_sd is None or v3_sd is None:
        return
    cfg = config or config_from_files(base_cfg, v3_sd, base_sd)
    merge_state_dicts(base_sd, v3_sd, _expected(cfg), str(base), str(v3_file))


def load_v3_transformer(base: str | Path, v3_file: str | Path, config: WanV3Config | None = None,
                        dtype: torch.dtype | None = None, device="cpu") -> tuple[WanV3Transformer, LoadReport]:
    """Build the flash-pro transformer from the base folder (or its weight file) and the V3 file.

    ``dtype``: the weights' dtype on ``device`` (default: float32). Returns the model (eval mode) and the
    report of which tensors came from which file."""
    check_v3_headers(base, v3_file, config)  # a file of another model or size: refused before it is read
    base_sd, v3_sd, base_cfg = read_v3_files(base, v3_file)
    cfg = config or config_from_files(base_cfg, v3_sd, base_sd)
    with torch.device("meta"):
        model = WanV3Transformer(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    merged, report = merge_state_dicts(base_sd, v3_sd, expected, str(base), str(v3_file))
    dtype = dtype or torch.float32
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in merged.items()}, strict=True, assign=True)
    return model.eval(), report


def transformer_to_fp8(model: WanV3Transformer) -> int:
    """Opt-in fp8 storage (``float8_e4m3fn``, upcast layer by layer to the compute dtype) of the blocks' Linear weights,
    in place; the embeddings, the audio projector and the head keep the compute dtype. Returns the bytes saved (about
    1.75 GB from bf16 for flash-pro). Apply after any LoRA merge: a merge needs the full-precision weights."""
    return to_fp8(model, keep=(), include=FP8_LAYERS)
