"""Shapes-only traces of the training networks on the meta device: what autograd keeps, and the FLOPs.

The real network classes are built under ``torch.device("meta")`` (no weights, no memory) and run forward
(and for FLOPs backward) at the configured batch / frames / resolution:

- :class:`SavedBytes` adds up the distinct storages autograd saves for the backward pass
  (``torch.autograd.graph.saved_tensors_hooks``), leaving out the parameters (counted as weights), and
  files each under the checkpointing units running when it was saved (a block ``den.up.3`` and its layer
  ``den.up.3.resnets.1``), plus the storages each unit received as inputs -- what gradient checkpointing keeps
  instead of the unit's insides (:mod:`trainer.plan.checkpointing`).
- :func:`flash_attention_saves`: the meta device has no fused attention kernel, so ``scaled_dot_product_attention``
  would save the N x M score matrix of the math path; GPU training uses flash / memory-efficient kernels
  (and the CPU its flash kernel), which keep q, k, v, the output and a float32 log-sum-exp. The patch saves
  exactly those.
- :func:`count_flops`: ``torch.utils.flop_counter.FlopCounterMode`` over forward and backward (with
  checkpointing, the recomputation inside backward is counted too).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F


class _FlashSaved(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - the memory trace never runs backward
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


@contextlib.contextmanager
def flash_attention_saves():
    orig = F.scaled_dot_product_attention

    def sdpa(q, k, v, *args, **kwargs):
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return _FlashSaved.apply(q, k, v)
        return orig(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = orig


def _tensors(obj, depth: int = 0):
    """The tensors a checkpointed call keeps alive through its arguments: tensors, containers, and the attributes of
    context objects (the UNet's BlockContext holds the reference keys / values and the audio tokens)."""
    if torch.is_tensor(obj):
        yield obj
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x, depth + 1)
    elif depth < 2 and hasattr(obj, "__dict__") and not isinstance(obj, nn.Module):
        for x in vars(obj).values():
            yield from _tensors(x, depth + 1)


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class SavedBytes:
    """Distinct storages autograd keeps, filed under the watched modules (nested: a block and its layers) that
    were running when they were saved; see the module docstring."""

    def __init__(self, params: list[torch.Tensor]):
        self.exclude = {_key(p) for p in params}
        self.saved: dict[int, tuple[int, list]] = {}  # storage -> (bytes, [watched modules running] at each save)
        self.inputs: dict[str, dict[int, int]] = {}  # module -> {storage: bytes} of its tensor inputs
        self.keep: list[torch.Tensor] = []  # keeps storages alive so that their keys stay unique
        self.stack: list[str] = []
        self._handles = []

    def pack(self, t: torch.Tensor):
        k = _key(t)
        if k in self.exclude:
            return t
        if k not in self.saved:
            self.saved[k] = (t.untyped_storage().nbytes(), [])
            self.keep.append(t)
        self.saved[k][1].append(tuple(self.stack))
        return t

    def watch(self, units: dict[str, nn.Module]) -> None:
        for name, mod in units.items():
            self._handles.append(mod.register_forward_pre_hook(self._enter(name)))
            self._handles.append(mod.register_forward_hook(self._leave))

    def _enter(self, name):
        def hook(module, args):
            self.stack.append(name)
            seen = self.inputs.setdefault(name, {})
            for t in _tensors(args):
                seen[_key(t)] = t.untyped_storage().nbytes()
                self.keep.append(t)
        return hook

    def _leave(self, module, args, output):
        self.stack.pop()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def total(self, units: set[str] | frozenset = frozenset(), recompute: bool = True) -> int:
        """Bytes kept from the forward to the backward pass when the modules ``units`` are checkpointed: their
        insides are dropped (recomputed in backward), their inputs kept, and (``recompute``) the largest of them is
        alive again while it is recomputed."""
        kept: dict[int, int] = {}
        inside: dict[str, int] = {}
        for k, (nbytes, stacks) in self.saved.items():
            owners = [next((s for s in stack if s in units), None) for stack in stacks]
            if None in owners:  # saved outside every checkpointed unit at least once: kept
                kept[k] = nbytes
            else:
                inside[owners[0]] = inside.get(owners[0], 0) + nbytes
        for unit in inside:  # a unit that saved nothing has no graph: its checkpoint keeps nothing either
            kept.update(self.inputs.get(unit, {}))
        return sum(kept.values()) + (max(inside.values(), default=0) if recompute else 0)


def unet_blocks(prefix: str, unet: nn.Module) -> dict[str, nn.Module]:
    """The block-level gradient-checkpointing units of an EchoUNet or a diffusers VAE decoder (down / mid / up)."""
    out = {}
    for i, b in enumerate(getattr(unet, "down_blocks", [])):
        out[f"{prefix}.down.{i}"] = b
    if getattr(unet, "mid_block", None) is not None:
        out[f"{prefix}.mid"] = unet.mid_block
    for i, b in enumerate(getattr(unet, "up_blocks", [])):
        out[f"{prefix}.up.{i}"] = b
    return out


def count_flops(run) -> int:
    """FLOPs of ``run()`` (forward and backward on meta tensors)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        run()
    return int(fc.get_total_flops())


LAYER_LISTS = ("resnets", "attentions", "motion_modules", "downsamplers", "upsamplers")


def unet_layers(prefix: str, unet: nn.Module) -> dict[str, nn.Module]:
    """The layer-level units: every ResNet, transformer, motion module and resampler of every block."""
    out = {}
    for bname, block in unet_blocks(prefix, unet).items():
        for lname in LAYER_LISTS:
            for i, m in enumerate(getattr(block, lname, None) or []):
                out[f"{bname}.{lname}.{i}"] = m
    return out
