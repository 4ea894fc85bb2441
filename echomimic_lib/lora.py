"""LoRA adapters for a loaded EchoMimic model set: read, validate, apply with a strength.

An adapter file is one ``.safetensors`` written by ``echomimic-train export`` of a LoRA run. Tensors:
``<network>.<module path>.lora_A.weight`` (rank x in) and ``...lora_B.weight`` (out x rank), where
``<network>`` is ``reference`` or ``denoiser`` (motion modules live in the denoiser) and the module path is
that UNet's ``nn.Linear`` (e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``). The
safetensors metadata holds the configuration (:class:`LoraInfo`): format, weight set (``v1_audio`` /
``v1_pose`` / ``v2``), variant, rank, alpha, targets, networks and the base weights it was trained on
(path, files and a fingerprint of the adapted layers).

Applying merges ``W = W_base + strength * alpha / rank * B @ A`` into each adapted layer (the same delta
peft's merge computes). Strength 0 applies nothing, so the output is the base model's bit for bit. A
:class:`LoraPatch` keeps the base tensors of the layers it changed (on the CPU), so a new strength is
always computed from the base (never compounds) and :meth:`LoraPatch.remove` restores it exactly.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import EchoMimicError, WeightsError
from .io.file_safety import publish
from .memory.rounding import stochastic_round
from .modes import WEIGHT_SETS

log = logging.getLogger(__name__)

FORMAT = "echomimic-lora"
FORMAT_VERSION = 1
NETWORKS = ("reference", "denoiser")
VERSION_NAMES = {"v1_audio": "EchoMimic V1 audio-driven (v1_audio)", "v1_pose": "EchoMimic V1 landmark (v1_pose)",
                 "v2": "EchoMimicV2 half-body (v2)"}
FINGERPRINT_RTOL = 1e-2  # bf16 rounds to 2**-8 = 0.4 % (fp16 to 0.05 %); other weights differ by O(100 %)


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
        if int(meta.get("format_version", "0")) > FORMAT_VERSION:
            raise WeightsError(f"{where}: LoRA format version {meta['format_version']} is newer than this version "
                               f"understands ({FORMAT_VERSION}); update comfyui-echomimic.")
        try:
            kwargs = {k: (meta[k] if k in ("weights", "variant") else json.loads(meta[k])) for k in cls.__dataclass_fields__ if k in meta}
            info = cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise WeightsError(f"{where}: damaged LoRA metadata ({exc}). Export the adapter again.") from exc
        if info.weights not in WEIGHT_SETS:
            raise WeightsError(f"{where}: unknown weight set '{info.weights}' in the LoRA metadata. Export the adapter again.")
        if info.rank < 1 or not info.alpha > 0:
            raise WeightsError(f"{where}: invalid LoRA rank {info.rank} / alpha {info.alpha} in the metadata.")
        return info


@dataclass
class LoraAdapter:
    path: Path
    info: LoraInfo
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]  # "denoiser.<path>" -> (A, B)

    @property
    def name(self) -> str:
        return self.path.name

    def delta(self, layer: str, strength: float = 1.0) -> torch.Tensor:
        """``strength * scale * B @ A`` in float32 (out x in)."""
        a, b = self.layers[layer]
        return (b.float() @ a.float()) * (self.info.scale * float(strength))


def write_lora(path: str | Path, tensors: dict[str, torch.Tensor], info: LoraInfo) -> Path:
    """Write an adapter file atomically (``path.partial`` then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise EchoMimicError(f"{path}: a LoRA file must end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(tmp), metadata=info.to_metadata())
        publish(tmp, path)  # safetensors creates 0600 files: the final one gets the umask's mode
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_lora(path: str | Path) -> LoraAdapter:
    """Read and check an adapter file (metadata, key pairs, ranks, finite values); no model needed."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"LoRA file not found: {path}. Put it into models/echomimic/loras/ (ComfyUI) or pass an existing file.")
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: LoRA adapters are read from .safetensors files only (export them with `echomimic-train export`).")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            info = LoraInfo.from_metadata(meta, str(path))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc}); it may be truncated. Export or download it again.") from exc
    layers: dict[str, tuple] = {}
    for k in tensors:
        for part in (".lora_A.weight", ".lora_B.weight"):
            if k.endswith(part):
                layers.setdefault(k[: -len(part)], None)
                break
        else:
            raise WeightsError(f"{path}: unexpected tensor '{k}' (an EchoMimic LoRA holds only lora_A / lora_B weights).")
    for layer in layers:
        a, b = tensors.get(f"{layer}.lora_A.weight"), tensors.get(f"{layer}.lora_B.weight")
        if a is None or b is None:
            raise WeightsError(f"{path}: '{layer}' lacks its lora_{'A' if a is None else 'B'} weight; the file is incomplete. "
                               "Export it again.")
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != info.rank or b.shape[1] != info.rank:
            raise WeightsError(f"{path}: '{layer}' has shapes A {tuple(a.shape)}, B {tuple(b.shape)}, not rank {info.rank}.")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise WeightsError(f"{path}: '{layer}' contains NaN/Inf (saved from a diverged run?). Export a good checkpoint.")
        if layer.split(".", 1)[0] not in NETWORKS:
            raise WeightsError(f"{path}: '{layer}' does not belong to the reference or denoising UNet.")
        layers[layer] = (a, b)
    if not layers:
        raise WeightsError(f"{path}: the LoRA file holds no adapter weights.")
    return LoraAdapter(path, info, layers)


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


def _linear(root: nn.Module, path: str, adapter: LoraAdapter, layer: str) -> nn.Linear:
    mod = root.get_submodule(path) if path else root
    if not isinstance(mod, nn.Linear):
        raise WeightsError(f"LoRA '{adapter.name}': '{layer}' is not a linear layer of this model.")
    return mod


def resolve_layers(adapter: LoraAdapter, networks: dict[str, nn.Module]) -> dict[str, nn.Linear]:
    """Map each adapted layer to the model's ``nn.Linear``; refuse a mismatching architecture."""
    out, missing = {}, []
    for layer, (a, b) in adapter.layers.items():
        net, _, path = layer.partition(".")
        try:
            lin = _linear(networks[net], path, adapter, layer)
        except (AttributeError, KeyError):
            missing.append(layer)
            continue
        if tuple(lin.weight.shape) != (b.shape[0], a.shape[1]):
            raise WeightsError(f"LoRA '{adapter.name}': '{layer}' is {b.shape[0]}x{a.shape[1]} but the model's layer is "
                               f"{tuple(lin.weight.shape)}: the LoRA was trained on a different architecture.")
        out[layer] = lin
    if missing:
        raise WeightsError(f"LoRA '{adapter.name}': {len(missing)} adapted layer(s) do not exist in this model, e.g. {missing[0]} "
                           f"(a LoRA for motion modules needs the model with motion modules; otherwise another architecture).")
    return out


@torch.no_grad()
def fingerprint(layers: dict[str, nn.Linear], per_network: int = 4, values: int = 8) -> dict[str, list[float]]:
    """Per network, ``values`` weights at fixed positions of ``per_network`` adapted layers (first ... last):
    other weights give other values, while fp16 / bf16 copies of the same weights agree within their rounding."""
    names: dict[str, list[str]] = {}
    for layer in sorted(layers):
        names.setdefault(layer.split(".", 1)[0], []).append(layer)
    out = {}
    for net, ls in names.items():
        picked = sorted({ls[round(i * (len(ls) - 1) / max(1, per_network - 1))] for i in range(per_network)}, key=ls.index)
        vals: list[float] = []
        for layer in picked:
            w = layers[layer].weight.detach().reshape(-1)
            idx = torch.linspace(0, w.numel() - 1, values, device=w.device).round().long()
            vals += [float(x) for x in w[idx].float().cpu()]
        out[net] = vals
    return out


def fingerprints_match(a: dict, b: dict) -> bool:
    if set(a) != set(b) or any(len(a[k]) != len(b[k]) for k in a):
        return False
    for k in a:
        x, y = torch.tensor(a[k], dtype=torch.float64), torch.tensor(b[k], dtype=torch.float64)
        tol = FINGERPRINT_RTOL * x.abs() + 0.1 * FINGERPRINT_RTOL * float(x.pow(2).mean().sqrt())
        if not bool(((x - y).abs() <= tol).all()):
            return False
    return True


class LoraPatch:
    """An adapter merged into a model set's layers at a strength, with the base tensors kept (CPU) to restore."""

    def __init__(self, adapter: LoraAdapter, layers: dict[str, nn.Linear], keep_base: bool = True):
        self.adapter, self.layers, self.keep_base = adapter, layers, keep_base
        self.strength = 0.0
        self._base: dict[str, torch.Tensor] = {}
        self._generators: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        """One seeded generator per device: the same adapter, strength and model give the same merged weights."""
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(0)
        return self._generators[key]

    @torch.no_grad()
    def set_strength(self, strength: float) -> "LoraPatch":
        strength = float(strength)
        if not math.isfinite(strength):
            raise EchoMimicError(f"LoRA strength must be a finite number, got {strength}.")
        if strength == self.strength:
            return self
        if self.strength != 0.0 and not self.keep_base:
            raise EchoMimicError("this LoRA patch kept no base weights (keep_base=False): load the model again to change the strength.")
        if strength == 0.0:
            return self.remove()
        for layer, lin in self.layers.items():
            w = lin.weight
            if layer not in self._base:
                if self.keep_base:
                    self._base[layer] = w.detach().to("cpu", copy=True)
                base = w.detach().float()
            else:
                base = self._base[layer].to(w.device).float()
            merged = base + self.adapter.delta(layer, strength).to(w.device)  # in float32
            w.copy_(stochastic_round(merged, w.dtype, self._generator(w.device)))  # unbiased: small adapters survive
        self.strength = strength
        return self

    @torch.no_grad()
    def remove(self) -> "LoraPatch":
        """Put the base weights back exactly (strength 0)."""
        if self.strength != 0.0 and not self.keep_base:
            raise EchoMimicError("this LoRA patch kept no base weights (keep_base=False): load the model again.")
        for layer, base in self._base.items():
            w = self.layers[layer].weight
            w.copy_(base.to(device=w.device, dtype=w.dtype))
        self._base, self.strength = {}, 0.0
        return self


def apply_lora(models, lora: str | Path | LoraAdapter, strength: float = 1.0, keep_base: bool = True) -> LoraPatch:
    """Apply an adapter to a loaded :class:`~echomimic_lib.model_set.EchoMimicModels` (in place).

    Refuses an adapter for another weight set or architecture; warns when it was trained on other base
    weights (fingerprint) or another variant. Strength 0 leaves every weight untouched."""
    adapter = lora if isinstance(lora, LoraAdapter) else read_lora(lora)
    check_version(adapter, models.weight_set.name, models.variant)
    layers = resolve_layers(adapter, {"reference": models.reference, "denoiser": models.denoiser})
    expected = adapter.info.base.get("fingerprint")
    if expected and not fingerprints_match(fingerprint(layers), expected):
        log.warning("LoRA '%s' was trained on other base weights (%s) than the loaded ones; the result may not be what it was trained for.",
                    adapter.name, adapter.info.base.get("path", "unknown"))
    patch = LoraPatch(adapter, layers, keep_base=keep_base)
    patch.set_strength(strength)
    log.info("LoRA %s applied at strength %s (%d layers, rank %d)", adapter.name, strength, len(layers), adapter.info.rank)
    return patch


def load_checked(path: str | Path, weights: str, variant: str | None = None, strength: float = 1.0) -> LoraAdapter:
    """Read an adapter and refuse it for another weight set or a bad strength -- before any UNet is loaded."""
    if not math.isfinite(float(strength)):
        raise EchoMimicError(f"LoRA strength must be a finite number, got {strength}.")
    adapter = read_lora(path)
    check_version(adapter, weights, variant)
    return adapter
