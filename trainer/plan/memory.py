"""Memory per GPU and expected speed of every phase of a run (``echomimic-train plan``).

Per phase, on one GPU (bytes):

- weights: each parameter once, trainable ones in float32 (the master copy), frozen ones in float32 except
  a LoRA run's base (``frozen_dtype``), counted from the real networks built on the meta device; the VAE
  in the frozen dtype. FSDP (``distributed.strategy: fsdp``) shards them over the GPUs and adds the gathered
  root unit (attention layers, condition encoder, ...) and the largest ResNet / motion-module unit twice (its
  working copy and the prefetched next);
- gradients: float32 for each trainable parameter (/ GPUs with FSDP), plus DDP's bucket copy with >1 GPU;
- optimizer state: AdamW m + v in float32 (8 bytes per parameter; 2 with ``adamw8bit``) for the parameters
  this phase trains, plus -- unless ``memory.offload_frozen_optimizer_state`` -- those earlier phases of the
  same run trained (torch keeps a parameter's state once created);
- EMA: one float32 copy of every parameter any phase trains (``ema.enabled``);
- activations: what autograd keeps for one micro-batch (:mod:`trainer.plan.trace`, exact for the shapes,
  with fused attention) without and with gradient checkpointing, at the configured batch, frames and size,
  in the mixed-precision dtype; the configured one counts, times ``ALLOCATOR_MARGIN``;
- ``CONTEXT_GIB`` for the CUDA context, cuBLAS / cuDNN workspaces and small buffers (assumed).

Steps per second = peak FLOP/s x MFU / FLOPs of one optimizer step (micro-batches x the traced forward +
backward, recomputation included). Not counted: the LPIPS network and the PhD pose-encoder pass on decoded
frames (small next to the UNets), the VAE encoder's transient memory (no gradients: freed before the UNets run).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import TrainConfig
from ..net import trainable_names
from .networks import arch_for, build_meta, cached_trace, checkpointing_of, run_key, trace_phase

GIB = 2**30
CONTEXT_GIB = 2.0
ALLOCATOR_MARGIN = 1.10  # fragmentation of the caching allocator on activations (assumed)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MIXED = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class PhasePlan:
    name: str
    kind: str
    frames: int
    batch: int  # micro-batch per GPU
    grad_accum: int
    trainable: int  # parameters
    frozen: int
    weights: dict = field(default_factory=dict)  # "trainable float32" / "frozen bfloat16" / "VAE bfloat16" -> bytes
    gradients: int = 0
    optimizer: int = 0
    optimizer_cpu: int = 0  # offloaded state of frozen parameters (host memory)
    ema: int = 0
    fsdp_gather: int = 0
    activations: dict = field(default_factory=dict)  # UNet checkpointing "none" / "block" / "layer" -> bytes
    checkpointing: str = "none"  # the configured granularity
    configured: int = 0  # activations as configured (UNets and decoder)
    context: int = int(CONTEXT_GIB * GIB)
    flops: int = 0
    steps_per_s: float = 0.0

    @property
    def activation_bytes(self) -> int:
        return int(self.configured * ALLOCATOR_MARGIN)

    @property
    def total(self) -> int:
        return (sum(self.weights.values()) + self.gradients + self.optimizer + self.ema + self.fsdp_gather
                + self.activation_bytes + self.context)


@dataclass
class RunPlan:
    arch: str
    gpus: int
    strategy: str
    peak_tflops: float
    mfu: float
    budget_gib: float
    phases: list[PhasePlan]

    def over_budget(self) -> list[PhasePlan]:
        return [p for p in self.phases if p.total > self.budget_gib * GIB]


def _numel(params) -> int:
    return sum(p.numel() for p in params)


def plan_run(cfg: TrainConfig, gpus: int = 8, peak_tflops: float = 312.0, mfu: float = 0.30, arch: str | None = None,
             vae_layout: dict | None = None) -> RunPlan:
    echo, arch_src = arch_for(cfg, arch)
    nets = build_meta(cfg, echo, vae_layout)
    net = nets.net
    act_dtype = getattr(torch, MIXED[cfg.mixed_precision])
    frozen_dtype = MIXED[cfg.mixed_precision] if cfg.lora.enabled and cfg.frozen_dtype == "auto" else "float32"
    vae_dtype = MIXED[cfg.mixed_precision] if cfg.frozen_dtype == "auto" else "float32"
    fsdp = cfg.distributed.strategy == "fsdp" and gpus > 1
    shard = gpus if fsdp else 1
    opt_bytes = 2 if cfg.optim.optimizer == "adamw8bit" else 8
    params = dict(net.named_parameters())
    union = set().union(*(trainable_names(net, p.train, p.audio) for p in cfg.phases))
    level, decoder = checkpointing_of(cfg)
    cache: dict = {}
    whole = run_key(cfg, echo, vae_layout)
    had_state: set[str] = set()
    plans = []
    for phase in cfg.phases:
        names = trainable_names(net, phase.train, phase.audio)
        train_n = _numel(params[n] for n in names)
        frozen_n = _numel(p for n, p in params.items() if n not in names)
        key = (phase.kind, phase.frames, tuple(sorted(phase.train)), phase.audio == "muted")
        if key not in cache:
            cache[key] = cached_trace((whole, key, cfg.optim.batch_size, str(act_dtype)),
                                      lambda: trace_phase(nets, cfg, phase, cfg.optim.batch_size, act_dtype))
        tr = cache[key]
        stale = had_state - names  # optimizer state left by earlier phases for parameters frozen now
        stale_bytes = _numel(params[n] for n in stale) * opt_bytes
        had_state |= names
        weights = {"trainable float32": train_n * 4 // shard,
                   f"frozen {frozen_dtype}": frozen_n * DTYPE_BYTES[frozen_dtype] // shard,
                   f"VAE {vae_dtype}": _numel(nets.vae.parameters()) * DTYPE_BYTES[vae_dtype]}
        p = PhasePlan(phase.name, phase.kind, phase.frames, cfg.optim.batch_size, cfg.optim.grad_accum, train_n, frozen_n, weights)
        p.gradients = train_n * 4 // shard + (train_n * 4 if gpus > 1 and not fsdp else 0)
        p.optimizer = train_n * opt_bytes // shard
        if cfg.memory.offload_frozen_optimizer_state:
            p.optimizer_cpu = stale_bytes // shard
        else:
            p.optimizer += stale_bytes // shard
        p.ema = _numel(params[n] for n in union) * 4 // shard if cfg.ema.enabled else 0
        if fsdp:  # the root unit gathered for the whole step, plus the largest unit and the prefetched next
            sizes = [_numel(m.parameters()) for m in _fsdp_units(net)]
            root = _numel(params.values()) - sum(sizes)
            p.fsdp_gather = (root + 2 * max(sizes)) * DTYPE_BYTES[MIXED[cfg.mixed_precision]]
        with_dec = cfg.loss.spatial.decoder_checkpointing  # the decoder follows the UNets' granularity when on
        p.activations = {g: tr.at(g, g if with_dec else "none") for g in ("none", "block", "layer")}
        p.checkpointing, p.configured = level, tr.at(level, decoder)
        p.flops = tr.flops * cfg.optim.grad_accum
        p.steps_per_s = peak_tflops * 1e12 * mfu / max(1, p.flops)
        plans.append(p)
    return RunPlan(arch_src, gpus, "fsdp" if fsdp else "ddp" if gpus > 1 else "single", peak_tflops, mfu,
                   cfg.memory.gpu_gib, plans)


def _fsdp_units(net):
    """FSDP wraps each ResNet layer and motion module (trainer.distributed's auto-wrap policy); the rest is the root unit."""
    from ..distributed import fsdp_units

    kinds = fsdp_units()
    return [m for m in net.modules() if isinstance(m, kinds)]
