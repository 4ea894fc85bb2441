"""The run's networks built on the meta device, and one training step of a phase traced on them.

The architecture comes from the run's own files when they are at hand (``model.sd_path``'s
``unet/config.json``, ``model.echomimic_path``'s configs), from ``model.arch`` for random init, and
otherwise is SD1.5's (every shipped preset), the size of the released EchoMimic weights. The VAE is
sd-vae-ft-mse's layout. Nothing is read but configs; no weight is loaded.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from echomimic_lib.config import PRESETS as ARCH_PRESETS
from echomimic_lib.config import EchoConfig
from echomimic_lib.models.unet import ConditionEncoder, EchoUNet
from echomimic_lib.modes import WEIGHT_SETS

from ..config import PhaseConfig, TrainConfig
from ..net import TrainingNet, bypass_motion, set_trainable
from ..phases import needs_motion
from .checkpointing import apply_layer_checkpointing, remove_layer_checkpointing
from .trace import SavedBytes, count_flops, flash_attention_saves, unet_blocks, unet_layers

log = logging.getLogger(__name__)
META = torch.device("meta")
AUDIO_TOKENS = 50  # whisper rows per video frame
SD_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4, norm_num_groups=32,
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
TINY_VAE = dict(block_out_channels=[32, 64], layers_per_block=1, latent_channels=4, norm_num_groups=32,
                down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)


def arch_for(cfg: TrainConfig, arch: str | None = None) -> tuple[EchoConfig, str]:
    """(network config, where it came from)."""
    if arch:
        return ARCH_PRESETS[arch], f"--arch {arch}"
    m = cfg.model
    if m.init == "random" and m.arch in ARCH_PRESETS:
        return ARCH_PRESETS[m.arch], f"model.arch {m.arch}"
    try:
        if m.init == "sd" and m.sd_path:
            from ..init import sd_unet_config, sd_unet_files

            return sd_unet_config(m.sd_path)[0], str(sd_unet_files(m.sd_path)[0])
        if m.init == "echomimic" and m.echomimic_path:
            from echomimic_lib.model_set import read_config, resolve_files

            files = resolve_files(m.echomimic_path, m.weights, m.variant, need=("reference",))
            return read_config(files), str(m.echomimic_path)
    except (OSError, ValueError) as exc:  # a path of another machine: plan with the paper's size
        log.info("plan: %s; using the SD1.5 layout", exc)
    return ARCH_PRESETS["sd15"], "SD1.5 layout (the released EchoMimic size)"


@dataclass
class MetaNets:
    net: TrainingNet
    vae: torch.nn.Module
    echo: EchoConfig
    cond_channels: int


def build_meta(cfg: TrainConfig, echo: EchoConfig, vae_layout: dict | None = None) -> MetaNets:
    from diffusers import AutoencoderKL

    ws = WEIGHT_SETS[cfg.model.weights]
    with META:
        ref = EchoUNet(echo, "reference")
        den = EchoUNet(echo, "denoiser", motion=needs_motion(cfg.phases) or cfg.lora.enabled)
        enc = ConditionEncoder(ws.cond_channels, echo.cond_out_channels, echo.cond_block_channels)
        vae = AutoencoderKL(**(vae_layout or SD_VAE)).requires_grad_(False)
    net = TrainingNet(ref, den, enc)
    if cfg.lora.enabled:  # trainer.lora.inject's adapters (its base fingerprint reads weights: not here)
        from peft import LoraConfig, inject_adapter_in_model

        from ..lora import ADAPTER, check_rank, target_modules

        lc = cfg.lora
        names = target_modules(net, lc.targets, lc.networks)
        check_rank(net, names, lc.rank)
        with META:
            inject_adapter_in_model(LoraConfig(r=lc.rank, lora_alpha=lc.alpha, target_modules=names, bias="none"), net,
                                    adapter_name=ADAPTER)
        net.lora = {"rank": lc.rank, "layers": len(names)}
    return MetaNets(net, vae, echo, ws.cond_channels)


def _decoded_frames(cfg: TrainConfig, phase: PhaseConfig) -> int:
    if not (cfg.loss.spatial.weight > 0 or cfg.loss.phd.enabled):
        return 0
    return phase.frames if cfg.loss.decode_frames <= 0 else min(phase.frames, cfg.loss.decode_frames)


def _step(nets: MetaNets, cfg: TrainConfig, phase: PhaseConfig, batch: int, dtype, backward: bool, encode: bool = True):
    """The network part of :func:`trainer.step.compute_losses` at the phase's shapes (every sample keeps its
    reference and condition; the worst case for memory). ``encode``: run the VAE encode first (it keeps nothing for the
    backward, so the memory trace leaves it out; its FLOPs count)."""
    net, vae = nets.net, nets.vae
    b, f, H, W = batch, phase.frames, cfg.data.height, cfg.data.width
    h, w = H // 8, W // 8
    if encode:
        with torch.no_grad():  # VAE encode of the target frames and the reference (FLOPs only: nothing is kept)
            vae.encode(torch.empty(b * f + b, 3, H, W, device=META, dtype=dtype))
    bank, _ = net.reference.forward_reference(torch.empty(b, 4, h, w, device=META, dtype=dtype), 0)
    kv = net.denoiser.prepare_reference(bank)
    cond_frames = 1 if cfg.data.condition == "face_mask" else f
    feats = net.cond_encoder(torch.empty(b, nets.cond_channels, cond_frames, H, W, device=META, dtype=dtype))
    pred = net.denoiser(torch.empty(b, 4, f, h, w, device=META, dtype=dtype), torch.zeros(b, dtype=torch.long, device=META),
                        audio=torch.empty(b, f, AUDIO_TOKENS, nets.echo.audio_dim, device=META, dtype=dtype), cond=feats, reference=kv)
    loss = pred.float().square().mean()
    n = _decoded_frames(cfg, phase)
    if n:
        crop = cfg.loss.spatial.crop_size // 8 if cfg.loss.spatial.face_crop else None
        x0 = pred[:, :, :n].transpose(1, 2).flatten(0, 1)
        if crop:
            x0 = x0[..., : min(crop, h), : min(crop, w)]
        loss = loss + vae.decode(x0.to(dtype)).sample.float().square().mean()
    if backward:
        loss.backward()
    return loss


def _prepare(nets: MetaNets, phase: PhaseConfig, dtype) -> None:
    nets.net.to(dtype)
    nn.Module.to(nets.vae, dtype)  # not diffusers' own .to (it warns about float32 modules)
    set_trainable(nets.net, phase.train, phase.audio)
    bypass_motion(nets.net.denoiser, phase.kind == "spatial" and nets.net.denoiser.has_motion)


@dataclass
class PhaseTrace:
    """Bytes autograd keeps for one micro-batch under each checkpointing choice, and the step's FLOPs."""

    saved: dict  # (unet granularity, decoder granularity) -> bytes; granularity "none" | "block" | "layer"
    flops: int  # forward + backward (+ recomputation as configured), VAE encode included

    def at(self, unet: str, decoder: str) -> int:
        return self.saved[(unet, decoder)]


GRANULARITIES = ("none", "block", "layer")
PASSES: Counter = Counter()  # traced passes over the networks so far ("memory", "flops"): two per phase traced
_TRACES: OrderedDict = OrderedDict()  # (run key, phase key, batch, dtype) -> PhaseTrace
TRACES_KEPT = 64


def run_key(cfg: TrainConfig, echo: EchoConfig, vae_layout: dict | None) -> str:
    """Everything a phase's trace can depend on: the whole config but ``memory.gpu_gib`` (only the verdict reads it),
    the network sizes and the device the networks are built on."""
    data = dataclasses.asdict(cfg)
    data["memory"].pop("gpu_gib", None)
    return json.dumps([data, repr(echo), vae_layout or SD_VAE, str(META)], sort_keys=True, default=repr)


def cached_trace(key: tuple, trace) -> PhaseTrace:
    """``trace()``'s PhaseTrace, computed once per key in a process: a run planned again (the CLI's table, then its
    verdict with another ``--gpu-gib``; ``plan --all-presets`` and the docs) traces nothing again."""
    if key in _TRACES:
        _TRACES.move_to_end(key)
        return _TRACES[key]
    _TRACES[key] = tr = trace()
    while len(_TRACES) > TRACES_KEPT:
        _TRACES.popitem(last=False)
    return tr


def checkpointing_of(cfg: TrainConfig) -> tuple[str, str]:
    """(UNets, VAE decoder) checkpointing granularity the config asks for."""
    level = cfg.memory.checkpointing if cfg.model.gradient_checkpointing else "none"
    dec = cfg.loss.spatial.decoder_checkpointing
    return level, ("none" if not dec else "layer" if level == "layer" else "block")


def trace_phase(nets: MetaNets, cfg: TrainConfig, phase: PhaseConfig, batch: int, dtype=torch.bfloat16) -> PhaseTrace:
    _prepare(nets, phase, dtype)
    net, vae = nets.net, nets.vae
    for u in (net.reference, net.denoiser):
        u.gradient_checkpointing = False
    blocks = {**unet_blocks("ref", net.reference), **unet_blocks("den", net.denoiser)}
    layers = {**unet_layers("ref", net.reference), **unet_layers("den", net.denoiser)}
    dblocks, dlayers = unet_blocks("vae", vae.decoder), unet_layers("vae", vae.decoder)
    tracer = SavedBytes(list(net.parameters()) + list(vae.parameters()))
    tracer.watch({**blocks, **layers, **dblocks, **dlayers})
    PASSES["memory"] += 1
    try:
        with flash_attention_saves(), torch.autograd.graph.saved_tensors_hooks(tracer.pack, lambda t: t):
            _step(nets, cfg, phase, batch, dtype, backward=False, encode=False)
    finally:
        tracer.close()
    units = {"none": (set(), set()), "block": (set(blocks), set(dblocks)), "layer": (set(layers), set(dlayers))}
    saved = {(a, b): tracer.total(units[a][0] | units[b][1]) for a in GRANULARITIES for b in GRANULARITIES}
    del tracer
    level, dec = checkpointing_of(cfg)
    if level == "layer":
        apply_layer_checkpointing(net, vae if dec != "none" else None)
    else:
        for u in (net.reference, net.denoiser):
            u.gradient_checkpointing = level == "block"
        if dec == "block":
            vae.enable_gradient_checkpointing()
    PASSES["flops"] += 1
    try:
        flops = count_flops(lambda: _step(nets, cfg, phase, batch, dtype, backward=True))
    finally:
        remove_layer_checkpointing(net, vae)
        for u in (net.reference, net.denoiser):
            u.gradient_checkpointing = False
        if vae.is_gradient_checkpointing:
            vae.disable_gradient_checkpointing()
        for p in list(net.parameters()):
            p.grad = None
    return PhaseTrace(saved=saved, flops=flops)
