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


def check_plan_inputs(config, preset: str | None, overrides: list[str], all_presets: bool) -> None:
    """What is planned, before anything is read: ``--all-presets`` plans the shipped presets, so a config file,
    ``--preset`` or ``--set preset=`` beside it (each was ignored without a word) is refused."""
    from ..config import ConfigError
    from ..config_file import sets_preset

    chosen = [ov for ov in overrides or [] if sets_preset(ov)]
    if all_presets and (config or preset or chosen):
        what = f"the config file {config}" if config else f"--preset {preset}" if preset else f"--set {chosen[0]}"
        raise ConfigError(f"--all-presets plans every shipped preset as it is (with your other --set overrides), so "
                          f"{what} would be ignored: leave out --all-presets to plan it, or leave it out")


def plan_family(path, overrides: list[str], preset: str | None) -> tuple[str, dict, list[str]]:
    """Which trainer the config file is for (:func:`trainer.plan.v3.read_plan_mapping`), with the checks ``fit`` and
    ``v3-fit`` make before reading it: an empty file is refused (it planned the defaults, a run ``fit`` refuses), and a
    preset (``--preset``, ``--set preset=``) is refused beside an EchoMimicV3 LoRA config (presets are V1/V2 runs)."""
    from ..config import ConfigError
    from ..config_file import sets_preset
    from .v3 import read_plan_mapping

    chosen = [ov for ov in overrides or [] if sets_preset(ov)]
    family, data, decided_by = read_plan_mapping(path, [ov for ov in overrides or [] if not sets_preset(ov)])
    if family == "v3" and (preset or chosen):
        what = f"--preset {preset}" if preset else f"--set {chosen[0]}"
        raise ConfigError(f"{what}: presets are V1/V2 runs, {path} is an EchoMimicV3 LoRA config (it has "
                          f"{', '.join(decided_by[:3])}); leave {'--preset' if preset else what} out")
    if not data and not chosen:
        raise ConfigError(f"{path}: the config file is empty; write the run's settings into it (docs/training.md section 0 "
                          "has a complete small one), or plan a preset without a file: `echomimic-train plan --preset NAME`")
    return family, data, decided_by


def load_plan_config(path=None, overrides=None, preset=None):
    """The config as ``fit`` reads it (:func:`trainer.config_file.load_config`: the file's or ``--set preset=``'s
    preset, ``--preset`` where the file has none, every check), but without the checks that the model files are named
    (a plan reads none); then the GPU's memory it is planned against."""
    from ..config import ConfigError
    from ..config_file import load_config

    cfg = load_config(path, overrides, preset, files=False)
    if not cfg.memory.gpu_gib > 0:
        raise ConfigError(f"memory.gpu_gib: {cfg.memory.gpu_gib:g} is the memory of one GPU in GiB; give a number above 0 "
                          "(e.g. 80, or --gpu-gib 80).")
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
