"""Gradient checkpointing at layer granularity (``memory.checkpointing: layer``).

``model.gradient_checkpointing`` checkpoints each down / mid / up block of the UNets (the library's
``EchoUNet.gradient_checkpointing``): the backward pass recomputes one block at a time, so the largest block's
insides are alive again at once. With 96 frame-samples at 768 px (V2 phase 4: batch 4 x 24 frames) the last
up block alone keeps about 113 GiB (``echomimic-train plan``). Layer granularity checkpoints every ResNet,
transformer, motion module and resampler separately (the VAE decoder's too when
``loss.spatial.decoder_checkpointing`` is on): more inputs are kept, but the recomputed unit is a ninth of a
block. Gradients are the same (non-reentrant ``torch.utils.checkpoint``; tests).

The wrapper is the module instance's ``forward`` attribute, like :func:`trainer.net.bypass_motion`'s identity:
a bypassed motion module stays bypassed, and :func:`apply_layer_checkpointing` (idempotent) re-wraps the
modules whose bypass was lifted -- the loop calls it after every phase switch.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .trace import unet_layers


def _needs_graph(module: nn.Module, args) -> bool:
    """Whether the layer's output will need gradients (torch's checkpoint keeps its inputs even when not: a frozen
    layer fed by frozen ones -- the reference UNet in a temporal phase -- runs without it)."""
    for a in args:
        for t in (a if isinstance(a, (list, tuple)) else [a]):
            if torch.is_tensor(t) and t.requires_grad:
                return True
    return any(p.requires_grad for p in module.parameters())


def _wrapper(module: nn.Module):
    fwd = type(module).forward

    def forward(*args, **kwargs):
        if torch.is_grad_enabled() and _needs_graph(module, args):
            return checkpoint(fwd, module, *args, use_reentrant=False, **kwargs)
        return fwd(module, *args, **kwargs)

    forward.layer_checkpoint = True
    return forward


def checkpoint_units(net, vae=None) -> dict[str, nn.Module]:
    units = {**unet_layers("ref", net.reference), **unet_layers("den", net.denoiser)}
    if vae is not None:
        units.update(unet_layers("vae", vae.decoder))
    return units


def apply_layer_checkpointing(net, vae=None) -> int:
    """Checkpoint every layer of the reference and denoising UNets (and of ``vae``'s decoder); the block-level
    switch is turned off (nesting would recompute twice). Returns how many layers are wrapped now."""
    for u in (net.reference, net.denoiser):
        u.gradient_checkpointing = False
    if vae is not None and vae.is_gradient_checkpointing:
        vae.disable_gradient_checkpointing()
    n = 0
    for m in checkpoint_units(net, vae).values():
        if "forward" not in m.__dict__:
            m.forward = _wrapper(m)
        n += bool(getattr(m.__dict__.get("forward"), "layer_checkpoint", False))
    return n


def remove_layer_checkpointing(net, vae=None) -> None:
    for m in checkpoint_units(net, vae).values():
        if getattr(m.__dict__.get("forward"), "layer_checkpoint", False):
            del m.forward


def configure_checkpointing(cfg, net, vae) -> int:
    """What the loop calls after building the networks and after each phase switch."""
    if cfg.model.gradient_checkpointing and cfg.memory.checkpointing == "layer":
        return apply_layer_checkpointing(net, vae if cfg.loss.spatial.decoder_checkpointing else None)
    return 0
