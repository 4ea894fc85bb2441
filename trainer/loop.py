"""``echomimic-train fit``: the training loop on Hugging Face accelerate.

One process per device (``accelerate launch``; DDP over NCCL / gloo, or DeepSpeed ZeRO from the accelerate
config). Per optimizer step: ``grad_accum`` micro-batches inside ``accelerator.accumulate``, gradient
clipping, a non-finite check, the optimizer / LR scheduler / EMA updates, logging, and at the configured
intervals an atomic checkpoint (:mod:`trainer.checkpoint`) and a validation video.

Exact resume: the checkpoint holds model, optimizer, LR scheduler, EMA, the train state (step, non-finite
counter), the gradient scaler and every RNG state; the data position is a function of the step
(:mod:`trainer.data.dataset`), and the per-step generator is seeded from (seed, rank, step, micro-batch).
A resumed run therefore produces the same parameters as an uninterrupted one (bitwise on CPU).

Phases (:mod:`trainer.phases`) switch trainable parameters, motion modules, audio-attention masks and data
at their first step; with DDP the model is re-wrapped for the new trainable set (:mod:`trainer.distributed`,
accelerate's public API), and the EMA keeps the averages of the parameters a phase freezes (:mod:`trainer.ema`).

Step numbers (log rows, events, checkpoint names, the progress bar) count completed optimizer steps: the row
of step 1 is written after the first step, ``checkpoints/step-00000100`` holds the state after 100 steps.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from echomimic_lib.errors import EchoMimicError

from .checkpoint import (agree_on_resume, checkpoint_dir, intern_state_keys, is_writer, list_checkpoints, read_meta,
                         refuse_inside_checkpoint, remove_partial, resolve_resume, save_checkpoint)
from .config import ConfigError, TrainConfig
from .config_file import dump_config
from .earlier_run import keep_earlier_run
from .resume_match import check_resume_matches, finished_message, say_fresh_resume, say_other_clips
from .run_lock import TrainLock
from .safe_resume import check_checkpoint, weights_only_loading
from .distributed import (PhaseModel, ValidationWait, accelerator_kwargs, check_shared_output, is_fsdp, materialize_optimizer_state,
                          place_optimizer_state)
from .monitor import Monitor, memory_stats
from .net import AudioAttentionControl, bypass_motion, set_trainable, trainable_names
from .phases import describe, phase_at, pose_dropout_at
from .step import LossFns, compute_losses

log = logging.getLogger("trainer")
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteError(RuntimeError, EchoMimicError):
    """The loss or gradients stayed non-finite (``max_nonfinite`` steps in a row): the run stops, saying which setting
    to change and the last checkpoint to resume from; the command prints it as one error line (was a traceback) and
    exits with ``exit_code`` (4), not a config error's 2: a script can tell a diverged run from a wrong config."""

    exit_code = 4


class TrainState:
    """Loop counters saved in every checkpoint (accelerate ``register_for_checkpointing``)."""

    def __init__(self):
        self.step = 0
        self.nonfinite = 0
        self.nonfinite_total = 0
        self.overflow = 0  # consecutive fp16 gradient overflows

    def state_dict(self) -> dict:
        return {"step": self.step, "nonfinite": self.nonfinite, "nonfinite_total": self.nonfinite_total, "overflow": self.overflow}

    def load_state_dict(self, d: dict) -> None:
        self.step, self.nonfinite, self.nonfinite_total = int(d["step"]), int(d["nonfinite"]), int(d.get("nonfinite_total", 0))
        self.overflow = int(d.get("overflow", 0))


def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1, np.uint64)[0] % (2**63))


def make_optimizer(cfg: TrainConfig, params: list):
    o = cfg.optim
    if o.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise RuntimeError("optim.optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes)") from exc
        cls = bnb.optim.AdamW8bit
    else:
        cls = torch.optim.AdamW
    return cls(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)


def _cpu_only() -> bool:
    """No accelerator device: run on the CPU, and with several processes use gloo (``accelerate launch
    --multi_gpu --num_processes N`` on a CPU-only machine then trains with N CPU processes)."""
    import os

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    return not (torch.cuda.is_available() or has_mps or has_xpu)


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def fit(cfg: TrainConfig, resume=None, lpips_fn=None, stop_after: int | None = None, hooks: dict | None = None) -> dict:
    """:func:`_fit`, with the output folder's lock (:mod:`trainer.run_lock`) released when it returns or fails."""
    from contextlib import ExitStack

    with ExitStack() as locks:
        return _fit(cfg, resume, lpips_fn, stop_after, hooks, locks)


def _fit(cfg: TrainConfig, resume, lpips_fn, stop_after, hooks, locks) -> dict:
    """Train according to ``cfg``. ``resume``: True/"latest" or a checkpoint path. ``lpips_fn`` replaces the
    LPIPS network (any callable (a, b) -> (N,)). ``stop_after``: stop after this many steps of this call
    (tests). A resumed run whose steps are all done returns at once, nothing built or written, with ``finished``: what
    to do (lengthen the run, or export). ``hooks``: optional callbacks (tests, debugging): ``setup(net, audio_control)``,
    ``after_loss(step_index, StepOutput) -> StepOutput | None`` (0-based index of the step being computed),
    ``after_step(steps_done, outputs, net)``."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .data.dataset import build_pools, clip_set, make_loader
    from .ema import PhaseEMA
    from .init import build, echomimic_files, sd_unet_config
    from .losses import load_pose_estimator, training_scheduler
    from .lpips_net import build_lpips, lpips_needed, resolve_backbone

    refuse_inside_checkpoint(cfg.output_dir, "output_dir")  # another run's rotation would delete this one
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    # checks that need no network come first: a missing LPIPS backbone is reported before anything is built
    need_lpips = lpips_fn is None and lpips_needed(cfg)
    backbone = resolve_backbone(cfg.loss.lpips) if need_lpips else None
    if cfg.model.init == "sd":  # a missing or damaged unet/config.json, said before anything is written or built
        sd_unet_config(cfg.model.sd_path)
    acc = Accelerator(cpu=_cpu_only(), mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.optim.grad_accum,
                      **accelerator_kwargs(cfg))  # timeout, per-node checkpoints, FSDP (trainer.distributed)
    out = Path(cfg.output_dir)
    main, rank, world = acc.is_main_process, acc.process_index, acc.num_processes
    check_shared_output(acc, out, cfg.distributed.shared_fs)  # several nodes: refuses an output_dir they do not share
    vwait = ValidationWait(acc, cfg.distributed.validation_timeout_s)
    ckpt = resolve_resume(resume, out)
    agree_on_resume(acc, ckpt)
    if main:
        say_fresh_resume(resume, ckpt, out)
    if ckpt is not None:
        check_checkpoint(ckpt)  # no file of the run folder runs code: refused here, before anything is built
        if read_meta(ckpt).get("family") == "v3":
            raise ConfigError(f"{ckpt}: an EchoMimicV3 LoRA checkpoint; resume it with `echomimic-train v3-fit --resume` "
                              "(fit trains V1/V2)")
        check_resume_matches(cfg, ckpt, read_meta(ckpt))  # another run's checkpoint: said before config.yaml is replaced
        done = finished_message(ckpt, out, read_meta(ckpt)["step"], cfg.max_steps, f"phases.{cfg.phases[-1].name}.steps",
                                cfg.phases[-1].steps, "echomimic-train export {ckpt} DEST")
        if done:  # every step trained: nothing is built or written
            return {"step": read_meta(ckpt)["step"], "output_dir": str(out), "nonfinite_total": None, "finished": done}
    if ckpt is None and list_checkpoints(checkpoint_dir(out)):
        raise FileExistsError(f"{out} already has checkpoints: continue it with --resume, or choose another output_dir")
    pools = build_pools(cfg, rank, world)  # clips V1/V2 cannot train on are refused before anything is written or built
    if ckpt is not None and main:
        say_other_clips(ckpt, read_meta(ckpt).get("clips"), clip_set(pools))
    if cfg.model.init == "echomimic":  # another weight set's folder (V1 weights for a V2 run), a missing file: named
        echomimic_files(cfg)  # before the run folder is written
    if is_writer(acc):  # the main process, or each node's first with per-node checkpoints
        out.mkdir(parents=True, exist_ok=True)
        locks.enter_context(TrainLock(out))  # a second run on this folder is refused before it writes anything
        if main and ckpt is None:  # a fresh run: an earlier run's log, videos, config are renamed aside, never overwritten
            keep_earlier_run(out)
        dump_config(cfg, out / "config.yaml")
        for p in remove_partial(checkpoint_dir(out)):
            log.warning("removed an incomplete checkpoint %s (interrupted while saving)", p)
    acc.wait_for_everyone()
    built = build(cfg)
    net, vae = built.net.to(acc.device), built.vae
    frozen = DTYPES[cfg.mixed_precision] if cfg.frozen_dtype == "auto" else torch.float32
    vae.to(acc.device)
    if frozen != torch.float32:
        vae.to(dtype=frozen)
    if cfg.loss.spatial.decoder_checkpointing:
        vae.enable_gradient_checkpointing()
    if cfg.lora.enabled:  # frozen base in the frozen dtype; checkpoints hold only the adapters (trainer.lora)
        from .lora import cast_base_, register_checkpoint_hooks

        cast_base_(net, frozen)
        register_checkpoint_hooks(acc, net)
    from .plan.checkpointing import configure_checkpointing

    configure_checkpointing(cfg, net, vae)  # memory.checkpointing: layer (trainer/plan/checkpointing.py)
    ctrl = AudioAttentionControl(net.denoiser)
    scheduler = training_scheduler(cfg)  # cfg.noise: the training schedule (docs/training.md, "Noise schedule")
    lpips = build_lpips(cfg.loss.lpips.net, cfg.loss.lpips.random_backbone, acc.device, backbone) if need_lpips else None
    fns = LossFns(lpips=lpips_fn or lpips, pose_estimator=load_pose_estimator(cfg.loss.phd.pose_estimator), pose_encoder=net.cond_encoder)

    union = set().union(*(trainable_names(net, p.train, p.audio) for p in cfg.phases))
    named = [(n, p) for n, p in net.named_parameters() if n in union]
    params = [p for _, p in named]
    optimizer = make_optimizer(cfg, params)
    lr_sched = get_scheduler(cfg.optim.lr_schedule, optimizer, num_warmup_steps=cfg.optim.warmup_steps, num_training_steps=cfg.max_steps)
    ema = PhaseEMA(params, decay=cfg.ema.decay) if cfg.ema.enabled else None  # frozen parameters keep their average
    state = TrainState()
    acc.register_for_checkpointing(lr_sched, state, *([ema] if ema else []))

    start = read_meta(ckpt)["step"] if ckpt else 0
    at = phase_at(cfg.phases, start)
    wrapped = PhaseModel(acc, net, optimizer)  # wrapper and accelerate optimizer for the phase's trainable set

    def enter(at_):
        trainable = set_trainable(net, at_.phase.train, at_.phase.audio)
        bypass_motion(net.denoiser, at_.phase.kind == "spatial" and net.denoiser.has_motion)
        configure_checkpointing(cfg, net, vae)  # re-wraps motion modules whose bypass was lifted
        wrapped.enter()
        _place_state()
        return trainable

    def _place_state():
        if cfg.memory.offload_frozen_optimizer_state and not is_fsdp(acc):
            place_optimizer_state(wrapped.raw_optimizer, acc.device)

    trainable = enter(at)
    current = at.index
    if "setup" in (hooks or {}):
        hooks["setup"](net, ctrl)
    if ckpt:
        if is_fsdp(acc):  # the sharded optimizer checkpoint loads only into state that exists (trainer/distributed.py)
            materialize_optimizer_state(wrapped.raw_optimizer)
        with weights_only_loading():  # every torch.load of accelerate's, custom objects included
            acc.load_state(str(ckpt))
        intern_state_keys(wrapped.raw_optimizer)  # optimizer.bin then has the uninterrupted run's bytes
        _place_state()
        log.info("resumed from %s at step %d (phase %s)", ckpt, state.step, at.phase.name)
    step = state.step
    mon = Monitor(out, main, cfg.log.tensorboard, cfg.log.plot, fresh=ckpt is None)
    if main:
        log.info("phases:\n%s", describe(cfg.phases, cfg.data.condition))
        mon.event(step, "start", resumed_from=str(ckpt) if ckpt else None, phase=at.phase.name, processes=world,
                  distributed=str(getattr(acc.distributed_type, "value", acc.distributed_type)),
                  report={k: v for k, v in built.report.items() if k != "denoiser_fresh"})

    per_step = cfg.optim.batch_size * cfg.optim.grad_accum
    latent_key = None
    if cfg.data.cache_latents:  # stored VAE posteriors replace the encoder (trainer/data/latent_cache.py)
        from .data.latent_cache import run_cache

        latent_key = run_cache(cfg, vae, built.vae_path, pools, main)
        acc.wait_for_everyone()
    loader = make_loader(cfg, pools, rank, step * per_step, str(built.whisper_path), latent_key=latent_key)
    it = iter(loader)
    meta = {"weights": cfg.model.weights, "echo_config": built.config.to_dict(), "cond_channels": built.cond_channels,
            "vae_path": str(built.vae_path), "whisper_path": str(built.whisper_path), "param_names": [n for n, _ in named],
            "ema_index": 2 if ema is not None else None, "lora": getattr(net, "lora", None), "clips": clip_set(pools)}
    bar = tqdm(total=cfg.max_steps, initial=step, desc="fit", disable=not (main and cfg.log.progress), dynamic_ncols=True)
    hooks = hooks or {}
    sums, count, t_log = {}, 0, time.perf_counter()
    done_here = 0
    redirect = logging_redirect_tqdm()  # log lines are printed above the progress bar, not through it
    redirect.__enter__()
    try:
        while step < cfg.max_steps and (stop_after is None or done_here < stop_after):
            at = phase_at(cfg.phases, step)
            if at.index != current:
                trainable = enter(at)
                current = at.index
                if main:  # numbered by the phase's first step (1-based, like every step number)
                    mon.event(step + 1, "phase", name=at.phase.name, phase_kind=at.phase.kind, train=at.phase.train, audio=at.phase.audio,
                              pose_parts=at.phase.pose_parts, data=at.phase.data)
                    log.info("step %d: phase %s", step + 1, at.phase.name)
            model, optimizer = wrapped.model, wrapped.optimizer
            t0 = time.perf_counter()
            loss_ok, grad_ok, gn, outs = True, True, torch.tensor(0.0), []
            for micro in range(cfg.optim.grad_accum):
                batch = _to_device(next(it), acc.device)
                gen = torch.Generator().manual_seed(step_seed(cfg.seed, rank, step, micro))
                with acc.accumulate(model):
                    with acc.autocast():
                        o = compute_losses(model, vae, scheduler, batch, gen, cfg, fns, ctrl)
                    if "after_loss" in hooks:
                        o = hooks["after_loss"](step, o) or o
                    loss_ok &= bool(torch.isfinite(o.total.detach()))
                    acc.backward(o.total)
                    if acc.sync_gradients:
                        gn = acc.clip_grad_norm_(trainable, cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else math.inf)
                        gn = torch.as_tensor(gn if gn is not None else 0.0).detach().float().cpu()
                        grad_ok = bool(torch.isfinite(gn))
                        if (loss_ok and grad_ok) or getattr(acc, "scaler", None) is not None:
                            optimizer.step()  # with a gradient scaler (fp16 on GPU) it skips the update itself and lowers the scale
                    optimizer.zero_grad(set_to_none=True)
                outs.append(o)
            ctrl.set(None)
            skipped = not (loss_ok and grad_ok) or bool(getattr(optimizer, "step_was_skipped", False))
            if not skipped:
                lr_sched.step()
                if ema is not None:
                    ema.step(params)
                state.nonfinite = state.overflow = 0
            elif getattr(acc, "scaler", None) is not None and loss_ok:
                # gradient overflow with a finite loss: the loss scaler's normal calibration, fatal only if it never ends
                state.overflow += 1
                _report_nonfinite(cfg, acc, mon, step + 1, outs, gn, state, overflow=True)
            else:
                state.nonfinite += 1
                state.nonfinite_total += 1
                _report_nonfinite(cfg, acc, mon, step + 1, outs, gn, state)
            step += 1
            done_here += 1
            state.step = step
            bar.update(1)
            for o in outs:
                for k, v in o.terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
            if "after_step" in hooks:
                hooks["after_step"](step, outs, net)
            if step % cfg.log.every == 0 or step == cfg.max_steps:
                _log_step(cfg, acc, mon, step, at, sums, count, lr_sched, gn, time.perf_counter() - t0, t_log, outs, bar,
                          ctrl.reset_stats())
                sums, count, t_log = {}, 0, time.perf_counter()
            if step % cfg.checkpoint.every == 0 or step == cfg.max_steps:
                phase_now = phase_at(cfg.phases, min(step, cfg.max_steps - 1))
                sums_all = acc.gather(param_checksum(net).to(acc.device)[None]).cpu().tolist()
                path = save_checkpoint(acc, out, step, {**meta, "phase": phase_now.phase.name}, cfg.checkpoint.keep_last)
                if main:
                    mon.event(step, "checkpoint", path=str(path), completed_steps=step, rank_checksums=sums_all,
                              ranks_consistent=len(set(sums_all)) == 1)
                    mon.plot(checkpoint_dir(out) / "loss.png")
                if len(set(sums_all)) != 1 and not is_fsdp(acc):  # FSDP: each rank holds its own shard
                    raise RuntimeError(f"step {step}: the processes hold different parameters (checksums {sums_all})")
            if cfg.validation.every and step % cfg.validation.every == 0 and not main:
                vwait.wait()  # rank 0 renders alone; the others wait here, not in the next collective
            if cfg.validation.every and step % cfg.validation.every == 0 and main:
                from .validation import render_or_say

                if ema is not None:  # validate the EMA weights, then put the live ones back
                    ema.store(params)
                    ema.copy_to(params)
                try:  # with the phase's conditions and audio-attention mask
                    render_or_say(cfg, net, vae, built, pools, step, out, mon, acc.device, phase=at.phase, audio_control=ctrl)
                finally:
                    if ema is not None:
                        ema.restore(params)
                ctrl.set(None)
                ctrl.reset_stats()
                vwait.wait()
    finally:
        redirect.__exit__(None, None, None)
        bar.close()
        ctrl.remove()
        mon.close()
    acc.wait_for_everyone()
    acc.end_training()
    return {"step": step, "output_dir": str(out), "nonfinite_total": state.nonfinite_total}


@torch.no_grad()
def param_checksum(net) -> torch.Tensor:
    """Order-sensitive float64 checksum of all parameters (compared across processes at every checkpoint)."""
    total = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(net.parameters()):
        total += (i + 1) * p.detach().double().sum().cpu()
    return total


def _report_nonfinite(cfg, acc, mon, step, outs, gn, state, overflow: bool = False) -> None:
    """Log a skipped step; stop after ``max_nonfinite`` consecutive non-finite losses (or 30 fp16 overflows in a row)."""
    terms = {k: float(v) for o in outs for k, v in o.terms.items()}
    scale = float(acc.scaler.get_scale()) if getattr(acc, "scaler", None) is not None else None
    if overflow:
        kind, count, limit = "fp16_overflow", state.overflow, 30
        advice = "fp16 gradient overflow: the loss scaler skipped the step and lowered the scale"
    else:
        kind, count, limit = "nonfinite", state.nonfinite, cfg.max_nonfinite
        advice = ("fp16 produced a non-finite loss (activations overflowed; the loss scaler cannot fix that): train in bf16 "
                  "(mixed_precision: bf16) or fp32" if cfg.mixed_precision == "fp16" else
                  "non-finite loss or gradient: the step was skipped (lower the LR, check the data)")
    if acc.is_main_process:
        mon.event(step, kind, terms=terms, grad_norm=float(gn), loss_scale=scale, consecutive=count, advice=advice)
    log.warning("step %d: %s (%s, grad norm %s, loss scale %s) -- %s", step, kind, terms, float(gn), scale, advice)
    if count >= limit:
        kept = list_checkpoints(checkpoint_dir(cfg.output_dir))  # (skipped steps never changed the weights saved)
        resume = (f" The last checkpoint, {kept[-1][1]}, was saved before and is kept: change the setting, then "
                  f"`echomimic-train fit --config {Path(cfg.output_dir) / 'config.yaml'} --resume` goes on from it."
                  if kept else " No checkpoint was saved yet: change the setting and start the run again.")
        raise NonFiniteError(f"{count} consecutive steps with non-finite {'gradients' if overflow else 'loss/gradients'} "
                             f"(last at step {step}, mixed precision '{cfg.mixed_precision}', loss scale {scale}): {advice}."
                             + resume)


def _log_step(cfg, acc, mon, step, at, sums, count, lr_sched, gn, step_time, t_log, outs, bar, audio_max) -> None:
    keys = sorted(sums)
    vals = torch.tensor([sums[k] / max(1, count) for k in keys], device=acc.device)
    vals = acc.reduce(vals, "mean") if acc.num_processes > 1 else vals
    if not acc.is_main_process:
        return
    scalars = {f"loss/{k}": float(v) for k, v in zip(keys, vals.tolist())}
    scalars.update({"lr": lr_sched.get_last_lr()[0], "grad_norm": float(gn), "time/step_s": step_time,
                    "time/steps_per_s": cfg.log.every / max(1e-9, time.perf_counter() - t_log), "apdh/phase_index": at.index,
                    "apdh/pose_dropout_p": pose_dropout_at(at)})
    scalars.update(memory_stats(acc.device))
    if audio_max is not None:  # 0 while the audio attention is muted (APDH phases 1-2)
        scalars["apdh/audio_attn_out_absmax"] = audio_max
    text = {"phase": at.phase.name, "audio_mask": at.phase.audio}
    if cfg.data.condition == "pose":
        text["pose_parts"] = "+".join(at.phase.pose_parts)
    info = {k: torch.cat([o.info[k] for o in outs]) for k in outs[-1].info}  # this step's samples, all micro-batches
    text["t"] = [int(x) for x in info["t"].tolist()]
    text["headshot"] = [bool(x) for x in info["headshot"].tolist()]  # padded headshot samples (V2)
    if "phd_phase" in info:
        names = ("S1", "S2", "S3")
        text["phd_phase"] = [names[int(x)] for x in info["phd_phase"].tolist()]
        for i, n in enumerate(names):
            scalars[f"phd/count_{n}"] = float(sum(int((o.info["phd_phase"] == i).sum()) for o in outs))
    mon.step(step, scalars, text)
    bar.set_postfix(loss=f"{scalars.get('loss/total', float('nan')):.4f}", phase=at.phase.name)
