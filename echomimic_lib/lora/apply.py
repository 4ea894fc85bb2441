"""Applying an adapter to a loaded model set: layer resolution, the base-weights fingerprint, the in-place merge
(:class:`LoraPatch`, for the CLI and the library) and the patched weight of one layer for a patch mechanism
such as ComfyUI's (:func:`patched_weight`).

Merging computes ``W = W_base + strength * alpha / rank * B @ A`` in float32 (the same delta peft's merge
computes) and rounds it into the weight's dtype without bias (stochastic rounding, :mod:`..memory.rounding`),
so small adapters keep their effect in bf16 / fp16 / fp8. Strength 0 applies nothing, so the output is the base
model's bit for bit. A :class:`LoraPatch` keeps the base tensors of the layers it changed (on the CPU), so a
new strength is always computed from the base (never compounds) and :meth:`LoraPatch.remove` restores it exactly.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path

import torch
from torch import nn

from ..errors import EchoMimicError, WeightsError
from ..memory.rounding import FORMATS, stochastic_round
from .files import LoraAdapter, check_merged, check_strength, check_version, read_lora

log = logging.getLogger(__name__)

FINGERPRINT_RTOL = 1e-2  # bf16 rounds to 2**-8 = 0.4 % (fp16 to 0.05 %); other weights differ by O(100 %)


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


def _tensor(target) -> torch.Tensor:
    """The tensor a patch changes: a layer's weight, or the parameter itself (a Wan LoRA's norms, biases, deltas)."""
    return target if isinstance(target, torch.Tensor) else target.weight


class LoraPatch:
    """An adapter merged into a model set's layers at a strength, with the base tensors kept (CPU) to restore.

    ``layers`` maps each adapted name to an ``nn.Linear`` (its weight changes) or to a parameter (changed itself);
    ``adapter.delta(name, strength)`` gives the float32 delta in that tensor's shape."""

    def __init__(self, adapter, layers: dict[str, nn.Linear | torch.Tensor], keep_base: bool = True):
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
        strength = check_strength(strength)
        if strength == self.strength:
            return self
        if self.strength != 0.0 and not self.keep_base:
            raise EchoMimicError("this LoRA patch kept no base weights (keep_base=False): load the model again to change the strength.")
        if strength == 0.0:
            return self.remove()
        before = self.strength
        try:
            self._merge(strength)
        except WeightsError as exc:  # (a merge past the weights' dtype: every layer put back as it was)
            if not self.keep_base:
                raise WeightsError(f"{exc} (this patch kept no base weights: load the model again.)") from None
            if before == 0.0:
                self.remove()
            else:
                self._merge(before)
            raise
        self.strength = strength
        return self

    def _merge(self, strength: float) -> None:
        for layer, target in self.layers.items():
            w = _tensor(target)
            if layer not in self._base:
                if self.keep_base:
                    self._base[layer] = w.detach().to("cpu", copy=True)
                base = w.detach().float()
            else:
                base = self._base[layer].to(w.device).float()
            merged = base + self.adapter.delta(layer, strength).to(w.device)  # in float32
            check_merged(self.adapter.name, layer, merged, w.dtype, strength)
            w.copy_(stochastic_round(merged, w.dtype, self._generator(w.device)))  # unbiased: small adapters survive

    @torch.no_grad()
    def remove(self) -> "LoraPatch":
        """Put the base weights back exactly (strength 0)."""
        if self.strength != 0.0 and not self.keep_base:
            raise EchoMimicError("this LoRA patch kept no base weights (keep_base=False): load the model again.")
        for layer, base in self._base.items():
            w = _tensor(self.layers[layer])
            w.copy_(base.to(device=w.device, dtype=w.dtype))
        self._base, self.strength = {}, 0.0
        return self


def prepare_lora(models, lora: str | Path | LoraAdapter) -> tuple[LoraAdapter, dict[str, nn.Linear]]:
    """An adapter checked against a loaded model set, nothing changed: (adapter, its layers). Refuses another weight
    set or architecture; warns when it was trained on other base weights (fingerprint) or another variant."""
    adapter = lora if isinstance(lora, LoraAdapter) else read_lora(lora)
    check_version(adapter, models.weight_set.name, models.variant)
    layers = resolve_layers(adapter, {"reference": models.reference, "denoiser": models.denoiser})
    expected = adapter.info.base.get("fingerprint")
    if expected and not fingerprints_match(fingerprint(layers), expected):
        log.warning("LoRA '%s' was trained on other base weights (%s) than the loaded ones; the result may not be what it was trained for.",
                    adapter.name, adapter.info.base.get("path", "unknown"))
    return adapter, layers


def apply_lora(models, lora: str | Path | LoraAdapter, strength: float = 1.0, keep_base: bool = True) -> LoraPatch:
    """Apply an adapter to a loaded :class:`~echomimic_lib.model_set.EchoMimicModels` (in place).

    Refuses an adapter for another weight set or architecture; warns when it was trained on other base
    weights (fingerprint) or another variant. Strength 0 leaves every weight untouched. (Several adapters at once:
    :func:`~.stack.apply_stack`.)"""
    adapter, layers = prepare_lora(models, lora)
    patch = LoraPatch(adapter, layers, keep_base=keep_base)
    patch.set_strength(strength)
    log.info("LoRA %s applied at strength %s (%d layers, rank %d)", adapter.name, strength, len(layers), adapter.info.rank)
    return patch


def rounding_seed(*parts) -> int:
    """A fixed seed for the stochastic rounding of one layer (the same adapter, strength and key give the same weights)."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode())


@torch.no_grad()
def patched_weight(adapter: LoraAdapter, layer: str, weight: torch.Tensor, strength: float, target_dtype: torch.dtype,
                   seed: int, function=None) -> torch.Tensor:
    """``weight + strength * delta`` computed in float32 and rounded without bias onto ``target_dtype``'s values.

    For patch mechanisms that compute in float32 and then cast with plain rounding (ComfyUI's
    ``patch_weight_to_device``): the result has ``weight``'s dtype and holds values that ``target_dtype``
    represents exactly, so that cast is exact and the adapter keeps its effect. A ``weight`` already in a narrow
    dtype (ComfyUI's low-VRAM per-call patches) is rounded onto its own dtype. ``function`` (ComfyUI's patch
    function) is applied to the delta."""
    delta = adapter.delta(layer, strength, device=weight.device)
    if function is not None:
        delta = function(delta)
    out = weight.float() + delta
    target = weight.dtype if weight.dtype in FORMATS else target_dtype
    check_merged(adapter.name, layer, out, target, strength)
    if target in FORMATS:
        out = stochastic_round(out, target, torch.Generator(device=weight.device).manual_seed(seed))
    return out.to(weight.dtype)
