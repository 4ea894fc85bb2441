"""The adapter file: its configuration (:class:`LoraInfo`), its tensors, reading, checking and writing.

Tensor names (format version 2), one group per adapted ``nn.Linear``::

    <network>.<module path>.lora_A.weight   rank x in
    <network>.<module path>.lora_B.weight   out x rank
    <network>.<module path>.alpha           0-d float32: the layer's alpha

``<network>`` is ``reference`` or ``denoiser`` (motion modules live in the denoiser) and the module path is
that UNet's own (e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``). Why these names:

- ``lora_A`` / ``lora_B`` are peft's names (the trainer's adapters, ``set_peft_model_state_dict``) and one of
  the layouts ComfyUI's LoRA loader reads (``comfy/weight_adapter/lora.py``: ``<prefix>.lora_B.weight`` as the
  up matrix, ``<prefix>.lora_A.weight`` as the down one); ``<prefix>.alpha`` is the kohya scalar that
  ComfyUI's ``load_lora`` reads, with the delta ``alpha / rank * B @ A``.
- The prefix is the module's state-dict name without ``.weight`` (ComfyUI's "generic" LoRA key), behind the
  network's name; the pack's LoRA node maps ``<network>.<path>`` to the key ``net.<path>.weight`` of that
  network's ModelPatcher. Kohya's ``lora_unet_<path with underscores>`` is not used: it is defined through
  ComfyUI's key map of its own model types (these networks are not one of them) and cannot be inverted
  (module names hold underscores: ``down_blocks``, ``to_q``).
- With rsLoRA (scale ``alpha / sqrt(rank)``) the ``alpha`` tensor holds ``scale * rank``, so every reader's
  ``alpha / rank`` is the trained scale; the metadata keeps the configured alpha and ``use_rslora``.

The safetensors metadata holds the configuration: format, version, weight set (``v1_audio`` / ``v1_pose`` /
``v2``), variant, rank, alpha, targets, networks and the base weights it was trained on. Files of format
version 1 (no ``alpha`` tensors: the metadata's alpha applies) still load.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import EchoMimicError, WeightsError
from ..io.file_safety import publish, temp_beside
from ..io.json_file import loads_json, read_json
from ..io.os_errors import not_file_text, writing
from ..modes import WEIGHT_SETS

log = logging.getLogger(__name__)

FORMAT = "echomimic-lora"
FORMAT_VERSION = 2  # 2: per-layer alpha tensors; 1: alpha only in the metadata
NETWORKS = ("reference", "denoiser")
VERSION_NAMES = {"v1_audio": "EchoMimic V1 audio-driven (v1_audio)", "v1_pose": "EchoMimic V1 landmark (v1_pose)",
                 "v2": "EchoMimicV2 half-body (v2)"}
A_KEY, B_KEY, ALPHA_KEY = ".lora_A.weight", ".lora_B.weight", ".alpha"


MAX_LORA_SCALE = 65504.0  # fp16's largest number: a scale (alpha / rank) past it overflows the merged weights (NaN video)


def check_scale(where: str, alpha: float, rank, scale: float, fix: str = "a damaged or wrongly exported file: export "
                "the adapter again with an ordinary alpha (e.g. alpha = rank)") -> None:
    """A :class:`WeightsError` naming ``where``, the alpha and the fix when ``scale`` (``alpha / rank``) is past
    :data:`MAX_LORA_SCALE` (a finite alpha of 1e38 read as valid rendered NaN noise without a word)."""
    if not scale <= MAX_LORA_SCALE:
        raise WeightsError(f"{where}: LoRA alpha {alpha:g} at rank {rank} gives a scale (alpha / rank) of {scale:g}, past "
                           f"{MAX_LORA_SCALE:g} (fp16's largest number): its merged weights would overflow and the video "
                           f"render as NaN noise; {fix}.")


def check_merged(name: str, layer: str, merged: torch.Tensor, dtype: torch.dtype, strength: float) -> None:
    """A :class:`WeightsError` naming the adapter, the layer, the strength and the fix when ``merged`` (a layer's base
    plus its float32 delta, before rounding into ``dtype``) holds inf / NaN or, in fp16 / bf16 / float32, numbers past
    the dtype's largest: a scale :func:`check_scale` passes times large weights (or a large strength) was clamped to
    65504 in fp16, or inf / NaN, and the video rendered as noise. (fp8 weights saturate, as ComfyUI's do.)"""
    limit = torch.finfo(dtype).max if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.finfo(torch.float32).max
    if merged.numel() and not bool(merged.abs().amax() <= limit):  # (NaN compares false: refused too)
        raise WeightsError(f"{name}: LoRA layer '{layer}' at strength {strength:g} gives merged weights past {limit:g} (the "
                           f"largest number of the model's {str(dtype).replace('torch.', '')} weights): the video would "
                           "render as NaN noise. Lower the strength; if an ordinary strength does it, the adapter's "
                           "weights are far too large (a damaged or wrongly trained file): export or train it again.")


_META_KINDS = {"rank": int, "alpha": (int, float), "use_rslora": bool, "targets": list, "networks": list, "base": dict,
               "training": dict}  # each metadata field's JSON kind (weights and variant are plain text)


@dataclass
class LoraInfo:
    """The configuration stored in an adapter file's metadata."""

    weights: str  # weight set the adapter was trained on: v1_audio | v1_pose | v2
    variant: str = "normal"  # base denoiser variant: normal | acc
    rank: int = 16
    alpha: float = 16.0
    use_rslora: bool = False
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    networks: list[str] = field(default_factory=lambda: ["denoiser"])  # denoiser | reference | motion
    base: dict = field(default_factory=dict)  # path, weights, variant, fingerprint (see :func:`fingerprint`)
    training: dict = field(default_factory=dict)  # run, step, ema, ... (informational)

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @property
    def alpha_tensor_value(self) -> float:
        """What each layer's ``alpha`` tensor holds: ``scale * rank`` (= alpha without rsLoRA)."""
        return self.scale * self.rank

    def to_metadata(self) -> dict[str, str]:
        d = asdict(self)
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
        meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in d.items()})
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: str) -> "LoraInfo":
        if meta.get("format") != FORMAT:
            raise WeightsError(f"{where}: not an EchoMimic LoRA (no '{FORMAT}' metadata). Use a file written by "
                               "`echomimic-train export` of a LoRA run (LoRAs for other models, e.g. SD1.5, do not fit).")
        version = meta.get("format_version", "0")
        if not (isinstance(version, str) and version.isdigit()):
            raise WeightsError(f"{where}: damaged LoRA metadata (format_version {version!r} is not a number); export "
                               "the adapter again.")
        if int(version) > FORMAT_VERSION:
            raise WeightsError(f"{where}: LoRA format version {meta['format_version']} is newer than this version "
                               f"understands ({FORMAT_VERSION}); update comfyui-echomimic.")
        kwargs = {k: meta[k] if k in ("weights", "variant") else
                  loads_json(meta[k], where, f"damaged LoRA metadata field '{k}'", "export the adapter again",
                             WeightsError, expect=_META_KINDS.get(k))
                  for k in cls.__dataclass_fields__ if k in meta}
        bad = [k for k in ("rank", "alpha") if isinstance(kwargs.get(k), bool)]
        if bad:
            raise WeightsError(f"{where}: damaged LoRA metadata field '{bad[0]}' (true or false where a number belongs); "
                               "export the adapter again")
        try:
            info = cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise WeightsError(f"{where}: damaged LoRA metadata ({exc}). Export the adapter again.") from exc
        if info.weights not in WEIGHT_SETS:
            raise WeightsError(f"{where}: unknown weight set '{info.weights}' in the LoRA metadata. Export the adapter again.")
        if info.rank < 1 or not (math.isfinite(info.alpha) and info.alpha > 0):  # (1e999 / Infinity: a NaN render)
            raise WeightsError(f"{where}: invalid LoRA rank {info.rank} / alpha {info.alpha} in the metadata.")
        check_scale(where, info.alpha, info.rank, info.scale)
        return info


@dataclass
class LoraAdapter:
    path: Path
    info: LoraInfo
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]  # "denoiser.<path>" -> (A, B)
    alphas: dict[str, float] = field(default_factory=dict)  # per-layer alpha from the file (else the metadata's scale)

    @property
    def name(self) -> str:
        return self.path.name

    def scale(self, layer: str) -> float:
        return self.alphas[layer] / self.info.rank if layer in self.alphas else self.info.scale

    def delta(self, layer: str, strength: float = 1.0, device=None) -> torch.Tensor:
        """``strength * scale * B @ A`` in float32 (out x in)."""
        a, b = self.layers[layer]
        return (b.to(device, torch.float32) @ a.to(device, torch.float32)) * (self.scale(layer) * float(strength))

    def patch_tensors(self, layer: str) -> list[torch.Tensor]:
        """The file's tensors behind one layer's patch, up then down (ComfyUI's weight adapter ``weights``)."""
        a, b = self.layers[layer]
        return [b, a]


def with_alpha_tensors(tensors: dict[str, torch.Tensor], info: LoraInfo) -> dict[str, torch.Tensor]:
    """``tensors`` plus a ``<layer>.alpha`` scalar for every layer with a ``lora_A`` weight and no alpha yet."""
    out = dict(tensors)
    for k in tensors:
        if k.endswith(A_KEY):
            out.setdefault(k[: -len(A_KEY)] + ALPHA_KEY, torch.tensor(info.alpha_tensor_value, dtype=torch.float32))
    return out


def write_lora(path: str | Path, tensors: dict[str, torch.Tensor], info: LoraInfo) -> Path:
    """Write an adapter file atomically (a unique temporary name beside it, then rename); each layer gets its ``alpha`` tensor."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise EchoMimicError(f"{path}: a LoRA file must end in .safetensors")
    check_scale(str(path), info.alpha, info.rank, info.scale, "give the run an ordinary lora.alpha (e.g. lora.alpha = "
                "lora.rank)")  # (a file no reader takes: never written)
    tmp = temp_beside(path)  # unique, beside the target of a link (written through); a folder there is refused
    tensors = with_alpha_tensors(tensors, info)
    try:
        with writing(path):  # a full disk names the destination, not the temporary file removed below
            save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(tmp),
                      metadata=info.to_metadata())
            publish(tmp, path)  # safetensors creates 0600 files: the final one gets the umask's mode
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _split(path: Path, tensors: dict) -> tuple[dict, dict]:
    layers: dict[str, None] = {}
    alphas: dict[str, torch.Tensor] = {}
    for k, t in tensors.items():
        if k.endswith(ALPHA_KEY):
            alphas[k[: -len(ALPHA_KEY)]] = t
            continue
        for part in (A_KEY, B_KEY):
            if k.endswith(part):
                layers.setdefault(k[: -len(part)], None)
                break
        else:
            raise WeightsError(f"{path}: unexpected tensor '{k}' (an EchoMimic LoRA holds only lora_A / lora_B weights and alpha scalars).")
    stray = sorted(set(alphas) - set(layers))
    if stray:
        raise WeightsError(f"{path}: alpha '{stray[0]}.alpha' belongs to no adapted layer; the file is damaged. Export it again.")
    return layers, alphas


# a Wan DiT block in any LoRA layout (ComfyUI / kohya / diffusers' attn1/attn2); an SD UNet's "transformer_blocks.0.attn1" is not
_WAN_KEY = re.compile(r"(^|[._])blocks[._]\d+[._](self_attn|cross_attn|ffn)[._]|(^|\.)blocks\.\d+\.(attn1|attn2)\.")


def _wan_like(meta: dict, keys) -> bool:
    """A LoRA for the Wan DiT (EchoMimicV3's ``v3-export`` or a community Wan2.1 LoRA), told by its metadata or keys."""
    return meta.get("format") == "echomimic-v3-lora" or any(_WAN_KEY.search(k) for k in keys)


_META_BYTES = 16 << 20  # a checkpoint's meta.json is a few KB


def _checkpoint_meta(folder: Path, name: str = "meta.json") -> dict:
    """The run settings a checkpoint's ``meta.json`` (an export's ``export.json``) records (``{}`` when it is unreadable
    or not an object: these hints never fail the reader; a pipe is not waited on, a file past 16 MB not read, JSON nested
    too deeply for the parser is no RecursionError traceback)."""
    try:
        return read_json(folder / name, max_bytes=_META_BYTES, expect=dict)
    except EchoMimicError:
        return {}


def _newest_checkpoint(run: Path) -> Path | None:
    steps = sorted(p for p in (run / "checkpoints").glob("step-" + "[0-9]" * 8) if (p / "meta.json").is_file())
    return steps[-1] if steps else None


def training_output(path: Path, export: str) -> str:
    """What to do with a training run's folder, a checkpoint or a checkpoint's weights given as a LoRA file ("" when
    ``path`` is none of them): export the adapter first with ``export`` (``echomimic-train export`` / ``v3-export``).
    A folder was "LoRA file not found" though it is there; a checkpoint's ``model.safetensors`` (peft's names, no
    metadata) "not an EchoMimic LoRA". The checkpoint's ``meta.json`` says what it holds: a full fine-tune (no adapter:
    exported as a model set, loaded as the models folder) or the other family's LoRA (its own export and reader)."""
    if path.is_dir():
        kind = ("a training run" if (path / "checkpoints").is_dir() else "a training checkpoint"
                if (path / "meta.json").is_file() else "")
        if not kind and (path / "export.json").is_file():  # `echomimic-train export` of a full fine-tune
            weights = _checkpoint_meta(path, "export.json").get("weights") or "a V1/V2 model"
            return (f"{path} is an exported model set ({weights}: the whole model, from `echomimic-train export` of a full "
                    f"fine-tune), not a LoRA file: load it as the models, `echomimic animate --models {path} ...` "
                    "(ComfyUI: put it into models/echomimic/ and choose it as the Model Loader's weights_folder).")
        if not kind:
            return f"{path} is a folder, not a LoRA file: give the .safetensors file (e.g. one inside it)."
        ckpt, what, source = (_newest_checkpoint(path) if kind == "a training run" else path), f"{path} is a folder ({kind})", path
    elif path.name == "model.safetensors" and (path.parent / "meta.json").is_file():
        ckpt, what, source = path.parent, f"{path} holds a training checkpoint's weights", path.parent
    else:
        return ""
    meta = _checkpoint_meta(ckpt) if ckpt is not None else {}
    v3 = meta.get("family") == "v3"
    if not v3 and "lora" in meta and not meta["lora"]:  # (fit writes "lora": null for a full fine-tune)
        return (f"{what}: a full fine-tune of {meta.get('weights') or 'a V1/V2 model'} (the whole model was "
                f"trained, no LoRA), not a LoRA file. Export it as a model set, `echomimic-train export {source} EXPORT/`, and "
                "load EXPORT/ as the models: `echomimic animate --models EXPORT/ ...` (ComfyUI: put it into "
                "models/echomimic/ and choose it as the Model Loader's weights_folder).")
    known = v3 or "weights" in meta or "lora" in meta  # (a checkpoint of neither record: the reader's own export)
    own = export if not known else "echomimic-train v3-export" if v3 else "echomimic-train export"
    other = ""
    if own != export:
        other = (" It is an EchoMimicV3 LoRA run: use the file with --version v3-flash --lora (ComfyUI: the EchoMimic V3 "
                 "LoRA node)." if v3 else " It is an EchoMimic V1/V2 LoRA run: use the file with --version v1/v2 --lora "
                 "(ComfyUI: the EchoMimic LoRA node).")
    if path.is_dir():
        return f"{what}, not a LoRA file: export its adapter first, `{own} {source} LORA.safetensors`, then give LORA.safetensors.{other}"
    return (f"{what} (peft's names, no LoRA metadata): export the adapter first, `{own} {source} LORA.safetensors`, "
            f"then give LORA.safetensors.{other}")


def read_lora(path: str | Path) -> LoraAdapter:
    """Read and check an adapter file (metadata, key pairs, ranks, alphas, finite values); no model needed."""
    from safetensors import safe_open

    path = Path(path)
    if training_output(path, "echomimic-train export"):
        raise WeightsError(training_output(path, "echomimic-train export"))
    if problem := not_file_text(path, "LoRA file not found"):  # (a pipe or /dev/zero was "not found" too)
        raise WeightsError(f"{path}: {problem}; put the LoRA into models/echomimic/loras/ (ComfyUI) or pass an existing "
                           ".safetensors file.")
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: LoRA adapters are read from .safetensors files only (export them with `echomimic-train export`).")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT and _wan_like(meta, f.keys()):  # (was: "not an EchoMimic LoRA")
                raise WeightsError(f"{path}: a Wan2.1 / EchoMimicV3 LoRA, not an EchoMimic V1/V2 adapter; EchoMimic V1/V2 "
                                   "(SD1.5 UNets) cannot use it. Use it with --version v3-flash --lora (ComfyUI: the "
                                   "EchoMimic V3 LoRA node), or give a V1/V2 LoRA from `echomimic-train export`.")
            info = LoraInfo.from_metadata(meta, str(path))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc}); it may be truncated. Export or download it again.") from exc
    names, alpha_tensors = _split(path, tensors)
    layers: dict[str, tuple] = {}
    alphas: dict[str, float] = {}
    for layer in names:
        a, b = tensors.get(f"{layer}{A_KEY}"), tensors.get(f"{layer}{B_KEY}")
        if a is None or b is None:
            raise WeightsError(f"{path}: '{layer}' lacks its lora_{'A' if a is None else 'B'} weight; the file is incomplete. "
                               "Export it again.")
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != info.rank or b.shape[1] != info.rank:
            raise WeightsError(f"{path}: '{layer}' has shapes A {tuple(a.shape)}, B {tuple(b.shape)}, not rank {info.rank}.")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise WeightsError(f"{path}: '{layer}' contains NaN/Inf (saved from a diverged run?). Export a good checkpoint.")
        if layer.split(".", 1)[0] not in NETWORKS:
            raise WeightsError(f"{path}: '{layer}' does not belong to the reference or denoising UNet.")
        if layer in alpha_tensors:
            t = alpha_tensors[layer]
            if t.numel() != 1 or not (math.isfinite(float(t.reshape(-1)[0])) and float(t.reshape(-1)[0]) > 0):
                raise WeightsError(f"{path}: '{layer}.alpha' must be one positive number, got shape {tuple(t.shape)}. Export it again.")
            alphas[layer] = float(t.reshape(-1)[0])
            check_scale(f"{path}: '{layer}.alpha'", alphas[layer], info.rank, alphas[layer] / info.rank)
        layers[layer] = (a, b)
    if not layers:
        raise WeightsError(f"{path}: the LoRA file holds no adapter weights.")
    return LoraAdapter(path, info, layers, alphas)


def adapter_tensors(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """The file's tensors of an adapter (current format), e.g. to write it again."""
    out = {}
    for layer, (a, b) in adapter.layers.items():
        out[layer + A_KEY], out[layer + B_KEY] = a, b
        out[layer + ALPHA_KEY] = torch.tensor(adapter.scale(layer) * adapter.info.rank, dtype=torch.float32)
    return out


def check_version(adapter: LoraAdapter, weights: str, variant: str | None = None) -> None:
    """Refuse an adapter trained for another EchoMimic version / weight set (before any UNet is loaded)."""
    info = adapter.info
    if info.weights != weights:
        raise WeightsError(
            f"LoRA '{adapter.name}' was trained for {VERSION_NAMES[info.weights]}, but the model is {VERSION_NAMES.get(weights, weights)}. "
            f"Load the {VERSION_NAMES[info.weights]} weights to use it, or choose a LoRA trained for {weights}.")
    if variant is not None and info.variant != variant:
        log.warning("LoRA '%s' was trained on the '%s' weights and is applied to the '%s' ones; results may differ.",
                    adapter.name, info.variant, variant)


def check_strength(strength) -> float:
    """A LoRA strength as a float; anything that is not a finite number (a linked value of another output through a
    switch node: a list, a text, a true/false; a whole number past any float) is an :class:`EchoMimicError`."""
    try:
        if isinstance(strength, bool):
            raise TypeError("a true/false")
        strength = float(strength)
    except (TypeError, ValueError, OverflowError):  # (float()'s own errors named nothing)
        shown = (repr(strength[:40]) if isinstance(strength, str) else
                 {type(None): "nothing (null)", bool: f"{strength} (a true/false)", int: "a whole number past any float"}
                 .get(type(strength), f"a {type(strength).__name__}"))
        raise EchoMimicError(f"LoRA strength must be a finite number, got {shown}.") from None
    if not math.isfinite(strength):
        raise EchoMimicError(f"LoRA strength must be a finite number, got {strength}.")
    return strength


def load_checked(path: str | Path, weights: str, variant: str | None = None, strength: float = 1.0) -> LoraAdapter:
    """Read an adapter and refuse it for another weight set or a bad strength -- before any UNet is loaded."""
    check_strength(strength)
    adapter = read_lora(path)
    check_version(adapter, weights, variant)
    return adapter
