"""Several LoRA adapters merged at once (a stack): an identity LoRA with a style or language one, a Wan distillation
LoRA with a style LoRA -- what chaining LoRA nodes does in ComfyUI. (How a stack is given -- ``--lora`` more than once,
a batch cell of files separated by ``;`` -- and checked: :mod:`echomimic_lib.jobs.lora_args`.)

Merging: the weights become ``W + sum_i s_i * dW_i``, which is the same network in any order. Every adapter is checked
on the unmerged weights first (V1/V2: version, layers, the base-weights fingerprint), then the deltas are summed in
float32 and rounded once into the weights' dtype (:func:`merge_stack`: one :class:`~.apply.LoraPatch` whose delta is the
sum; :meth:`~.apply.LoraPatch.remove` restores the base exactly when it kept it). One active adapter goes the single
adapter's way (:func:`~.apply.apply_lora` / :func:`~.wan_files.apply_wan_lora`): bit for bit the result of before.
Strength-0 adapters are skipped.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class StackDelta:
    """The summed delta of several adapters (``sum_i s_i * dW_i`` in float32), for one :class:`~.apply.LoraPatch`;
    ``entries``: (adapter, strength, the names it changes)."""

    def __init__(self, entries: list[tuple[object, float, set]]):
        self.entries = entries

    @property
    def name(self) -> str:
        return " + ".join(a.name for a, _, _ in self.entries)

    def delta(self, layer: str, strength: float = 1.0, device=None):
        out = None
        for adapter, s, names in self.entries:
            if layer in names:
                d = adapter.delta(layer, s * float(strength), device=device)
                out = d if out is None else out + d
        return out


def merge_stack(entries: list[tuple[object, float, dict]], keep_base: bool = False):
    """Merge adapters into their layers at once: ``entries`` are (adapter, strength, {name: nn.Linear or parameter}),
    each checked already; every changed tensor gets ``W + sum_i s_i * dW_i`` (float32, rounded once). Returns the
    :class:`~.apply.LoraPatch` (strength 1)."""
    from .apply import LoraPatch

    layers: dict = {}
    for _, _, targets in entries:
        layers.update(targets)
    patch = LoraPatch(StackDelta([(a, float(s), set(t)) for a, s, t in entries]), layers, keep_base=keep_base)
    patch.set_strength(1.0)
    return patch


def load_stack(stack: list[tuple[str, float]], weights: str, variant: str | None = None) -> list[tuple[object, float]]:
    """V1/V2: every adapter of ``stack`` read and checked for the weight set (:func:`~.files.load_checked`) -- before
    any UNet is loaded."""
    from . import files

    return [(files.load_checked(path, weights, variant, s), s) for path, s in stack]


def apply_stack(models, loaded: list[tuple[object, float]], keep_base: bool = False):
    """V1/V2: merge the adapters of ``loaded`` (:func:`load_stack`) into ``models`` in order; strength 0 skipped.
    Returns the patch (None when nothing applies)."""
    from . import apply

    active = [(a, s) for a, s in loaded if s != 0]
    if not active:
        return None
    if len(active) == 1:
        return apply.apply_lora(models, active[0][0], active[0][1], keep_base=keep_base)
    entries = [(a, s, apply.prepare_lora(models, a)[1]) for a, s in active]  # each checked on the unmerged weights
    patch = merge_stack(entries, keep_base)
    log.info("LoRAs %s applied at strengths %s (%d layers)", patch.adapter.name, ", ".join(f"{s:g}" for _, s in active),
             len(patch.layers))
    return patch


def apply_wan_stack(model, loras: list[tuple[object, float]], keep_base: bool = False):
    """EchoMimicV3: merge mapped Wan LoRAs (:class:`~.wan_files.WanLora`, with strengths) into the transformer in
    order; strength 0 skipped. Returns the patch (None when nothing applies)."""
    from . import wan_files

    active = [(lo, s) for lo, s in loras if s != 0]
    if not active:
        return None
    if len(active) == 1:
        return wan_files.apply_wan_lora(model, active[0][0], active[0][1], keep_base=keep_base)
    patch = merge_stack([(lo, s, wan_files.wan_parameters(lo, model)) for lo, s in active], keep_base)
    log.info("Wan LoRAs %s applied at strengths %s (%d parameters)", patch.adapter.name,
             ", ".join(f"{s:g}" for _, s in active), len(patch.layers))
    return patch

