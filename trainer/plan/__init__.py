"""``echomimic-train plan``: memory per GPU and expected speed of every phase of a run, from the real network
definitions built on the meta device (no weights, no GPU needed).

- :mod:`.trace`: shapes-only traces (saved activations, FLOPs);
- :mod:`.networks`: the run's networks on the meta device, one training step of a phase traced;
- :mod:`.memory`: the per-phase memory model (weights, gradients, optimizer state, EMA, activations);
- :mod:`.report`: the Markdown table;
- :mod:`.checkpointing`: layer-granularity gradient checkpointing (``memory.checkpointing: layer``);
- :mod:`.v3_step` and :mod:`.v3`: an EchoMimicV3 LoRA config (``v3-fit``): the trainer's step on fake tensors, and its
  plan (which trainer a file is for, memory against ``--gpu-gib``, speed).
"""
from __future__ import annotations

import math

MAX_GPUS = 16384


def check_plan_numbers(gpus: int | None, gpu_gib: float | None, peak_tflops: float, mfu: float) -> None:
    """The command line's numbers, before any config is read: a GPU count of 0 or less, a zero, negative or non-finite
    memory or peak, or a utilisation outside (0, 1] printed a plan of nonsense (negative or infinite step times)."""
    from ..config import ConfigError

    if gpus is not None and not 1 <= gpus <= MAX_GPUS:
        raise ConfigError(f"--gpus {gpus}: give the number of GPUs the run uses, 1 to {MAX_GPUS} (default 8 for V1/V2, "
                          "1 for a V3 LoRA).")
    if gpu_gib is not None and not (math.isfinite(gpu_gib) and gpu_gib > 0):
        raise ConfigError(f"--gpu-gib {gpu_gib}: give the memory of one GPU in GiB, a number above 0 (e.g. 80 for an "
                          "A100 80 GB, 24 for a consumer card).")
    if not (math.isfinite(peak_tflops) and peak_tflops > 0):
        raise ConfigError(f"--peak-tflops {peak_tflops}: give one GPU's dense bf16 peak in TFLOP/s, a number above 0 "
                          "(default 312, an A100; an H100 SXM is 989).")
    if not (math.isfinite(mfu) and 0 < mfu <= 1):
        raise ConfigError(f"--mfu {mfu}: the model FLOP utilisation is a fraction above 0 and at most 1 (default 0.30; "
                          "0.3 means 30 %).")


def load_plan_config(path=None, overrides=None, preset=None):
    """Like :func:`trainer.config_file.load_config`, but without the checks of paths (a plan needs no files)."""
    import json

    from ..config import ConfigError, TrainConfig
    from ..config_file import apply_override, check_numbers, deep_merge, from_dict, read_yaml_mapping
    from ..phases import validate_phases
    from ..presets import preset_dict

    user = read_yaml_mapping(path) if path is not None else {}
    name = user.get("preset", preset)
    data = deep_merge(preset_dict(name), user) if name else dict(user)
    data = json.loads(json.dumps(data))
    for ov in overrides or []:
        data = apply_override(data, ov)
    cfg = from_dict(TrainConfig, data)
    check_numbers(cfg)
    if not cfg.memory.gpu_gib > 0:
        raise ConfigError(f"memory.gpu_gib: {cfg.memory.gpu_gib:g} is the memory of one GPU in GiB; give a number above 0 "
                          "(e.g. 80, or --gpu-gib 80).")
    validate_phases(cfg.phases, cfg.data.condition)
    return cfg


def describe_data(cfg) -> str:
    return (f"batch {cfg.optim.batch_size} per GPU x {cfg.optim.grad_accum} accumulation, {cfg.data.width}x{cfg.data.height}, "
            f"mixed precision {cfg.mixed_precision}, gradient checkpointing "
            f"{cfg.memory.checkpointing if cfg.model.gradient_checkpointing else 'off'}"
            f"{' + VAE decoder' if cfg.loss.spatial.decoder_checkpointing else ''}, optimizer {cfg.optim.optimizer}"
            f"{', EMA' if cfg.ema.enabled else ''}{', LoRA rank ' + str(cfg.lora.rank) if cfg.lora.enabled else ''}")


def plan_text(cfg, title: str, gpus: int = 8, peak_tflops: float = 312.0, mfu: float = 0.30, arch: str | None = None) -> tuple[str, object]:
    from .memory import plan_run
    from .report import format_plan

    run = plan_run(cfg, gpus=gpus, peak_tflops=peak_tflops, mfu=mfu, arch=arch)
    return format_plan(run, title, describe_data(cfg)), run
