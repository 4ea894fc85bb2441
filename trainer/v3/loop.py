"""``echomimic-train v3-fit``: a LoRA on the EchoMimicV3 flash-pro transformer, one process or many (accelerate).

Order of work: every check that needs no network (config, windows, output folder, resume checkpoint), then the
encoders once over every window (cached on disk, :mod:`.encode`; the prompts' umT5 states first, umT5 freed), then
the transformer alone on the device (frozen, in the mixed-precision dtype; adapters in float32; each block's
activations recomputed in the backward pass with ``gradient_checkpointing``), then the steps. Each micro-step draws
its windows, audio dropout, sigmas and noise from a generator seeded by (seed, rank, step, micro-step): a resumed run
continues with exactly the samples the uninterrupted one would have drawn. Checkpoints (adapters, optimiser, LR
schedule, step) are written whole or not at all (:func:`trainer.checkpoint.save_checkpoint`) and resumed with
``weights_only`` loading; with ``validation`` set, each checkpoint also renders a clip (:mod:`.validation`).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import V3TrainConfig

log = logging.getLogger("trainer.v3")


def make_batch(cache, prompts: dict, windows: list, idxs: list[int], drop: torch.Tensor, device, dtype) -> dict:
    """Stack the cached windows ``idxs``; the audio of samples with ``drop`` is zeroed (audio CFG's unconditional)."""
    from echomimic_lib.audio.wav2vec import window_indices

    items = [cache.load(i) for i in idxs]
    frames = items[0]["audio"].shape[0]
    audio = torch.stack([it["audio"].float()[window_indices(frames)] for it in items])
    audio[drop] = 0
    texts = [prompts[windows[i].prompt] for i in idxs]
    n = max(t.shape[0] for t in texts)
    context = torch.stack([F.pad(t, (0, 0, 0, n - t.shape[0])) for t in texts])  # the network pads to text_len with zeros too
    out = {"latents": torch.stack([it["latents"] for it in items]), "y": torch.stack([it["y"] for it in items]),
           "clip": torch.stack([it["clip"] for it in items]), "context": context, "audio_windows": audio}
    return {**{k: v.to(device) for k, v in out.items()}, "dtype": dtype}


def windows_id(windows: list) -> dict:
    """The run's sample set in a checkpoint's meta: a resume on another set is reported."""
    import hashlib
    import json

    text = json.dumps([[w.clip_id, w.start, w.frames, w.prompt, w.silent] for w in windows])
    return {"count": len(windows), "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}


def _checks(cfg: V3TrainConfig, resume):
    """Everything that needs no network: model files, windows, the output folder, the resume checkpoint."""
    from echomimic_lib.model_set import ensure_v3

    from ..checkpoint import checkpoint_dir, list_checkpoints, read_meta, refuse_inside_checkpoint, resolve_resume
    from ..config import ConfigError
    from ..resume_match import check_v3_resume_matches
    from ..safe_resume import check_checkpoint
    from .validation import prepare
    from .windows import list_windows

    out = Path(cfg.output_dir)
    refuse_inside_checkpoint(out, "output_dir")  # another run's rotation would delete this one
    files = ensure_v3(Path(cfg.model.path), download=False)  # the error lists each missing file and where to get it
    windows = list_windows(cfg.data)
    validator = prepare(cfg.validation, cfg.data.width, cfg.data.height, cfg.data.frames, cfg.data.prompt)
    ckpt = resolve_resume(resume, out)
    if ckpt is not None:
        check_checkpoint(ckpt)  # no file of the run folder runs code
        if read_meta(ckpt).get("family") != "v3":
            raise ConfigError(f"{ckpt}: a V1/V2 checkpoint; resume it with `echomimic-train fit --resume`")
        check_v3_resume_matches(cfg, ckpt, read_meta(ckpt))  # another rank / alpha / targets: before anything is written
    elif list_checkpoints(checkpoint_dir(out)):
        raise FileExistsError(f"{out} already has checkpoints: continue it with --resume, or choose another output_dir")
    return files, windows, validator, ckpt


def fit_v3(cfg: V3TrainConfig, resume=None, stop_after: int | None = None) -> dict:
    """Train; ``resume``: True / "latest" or a checkpoint folder; ``stop_after``: stop after this many steps (tests).
    The output folder's lock (:mod:`trainer.run_lock`) is held until it returns or fails."""
    from contextlib import ExitStack

    with ExitStack() as locks:
        return _fit_v3(cfg, resume, stop_after, locks)


def _fit_v3(cfg: V3TrainConfig, resume, stop_after, locks) -> dict:
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    from diffusers.optimization import get_scheduler

    from echomimic_lib.models.wan import load_v3_transformer

    from ..checkpoint import agree_on_resume, checkpoint_dir, is_writer, read_meta, remove_partial, save_checkpoint
    from ..lora import register_checkpoint_hooks
    from ..loop import DTYPES, NonFiniteError, TrainState, _cpu_only, step_seed
    from ..monitor import Monitor
    from ..safe_resume import weights_only_loading
    from ..config_file import write_run_config
    from ..earlier_run import keep_earlier_run
    from ..resume_match import say_fresh_resume
    from ..run_lock import TrainLock
    from ..distributed import ValidationWait
    from .encode import EncodedWindows, Encoders, encoder_id, prompt_states
    from .flow import flow_loss, training_sigmas
    from .lora import cast_base_, inject

    acc = Accelerator(cpu=_cpu_only(), mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.optim.grad_accum,
                      kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.distributed.timeout_s))])
    main, rank, world = acc.is_main_process, acc.process_index, acc.num_processes
    files, windows, validator, ckpt = _checks(cfg, resume)
    vwait = ValidationWait(acc, cfg.distributed.validation_timeout_s) if validator is not None else None  # collective
    agree_on_resume(acc, ckpt)
    out = Path(cfg.output_dir)
    if ckpt is not None:
        from ..resume_match import finished_message

        done = finished_message(ckpt, out, read_meta(ckpt)["step"], cfg.steps, "steps", cfg.steps,
                                "echomimic-train v3-export {ckpt} LORA.safetensors")
        if done:  # every step trained: no encoder or transformer loads, nothing is written
            return {"step": read_meta(ckpt)["step"], "output_dir": str(out), "windows": len(windows), "lora": None, "finished": done}
    if main:
        say_fresh_resume(resume, ckpt, out)
    if is_writer(acc):
        out.mkdir(parents=True, exist_ok=True)
        locks.enter_context(TrainLock(out))  # a second run on this folder is refused before it writes anything
        if main and ckpt is None:  # a fresh run: an earlier run's log, samples, config are renamed aside, never overwritten
            keep_earlier_run(out)
        write_run_config(dataclasses.asdict(cfg), out / "config.yaml")
        for p in remove_partial(checkpoint_dir(out)):
            log.warning("removed an incomplete checkpoint %s (interrupted while saving)", p)
    acc.wait_for_everyone()
    dtype = DTYPES[cfg.mixed_precision]

    # 1. encoders, once per window (cached), then freed
    distinct = list(dict.fromkeys([w.prompt for w in windows] + ([validator.prompt] if validator else [])))
    if main:
        prompt_states(files, distinct, Path(cfg.model.path) / "prompt_cache", acc.device, dtype)
    acc.wait_for_everyone()
    prompts = prompt_states(files, distinct, Path(cfg.model.path) / "prompt_cache", acc.device, dtype)  # all cached now
    cache = EncodedWindows(Path(cfg.data.cache_dir or out / "encoded"), windows, cfg.data.width, cfg.data.height,
                           encoder_id(files, dtype))
    t0 = time.time()
    missing = cache.missing()
    acc.wait_for_everyone()  # every process splits the same list (none has written yet)
    def progress(n, total):
        if n == total or n % max(1, total // 10) == 0:
            log.info("rank %d: encoded %d/%d windows", rank, n, total)

    wrote = cache.fill(lambda: Encoders(files, acc.device, dtype), missing[rank::world], progress)
    acc.wait_for_everyone()
    if cache.missing():
        raise RuntimeError(f"{len(cache.missing())} encoded window(s) missing after encoding (another process failed?)")
    if main and validator is not None:  # its reference and speech, encoded once
        enc = Encoders(files, acc.device, dtype)
        validator.encode(enc, prompts[validator.prompt])
        enc.free()
    if main:
        log.info("%d windows of %d frames (%d encoded now in %.0f s, the rest cached in %s)", len(windows), cfg.data.frames,
                 wrote, time.time() - t0, cache.folder)

    # 2. the transformer with its adapters
    model, report = load_v3_transformer(files["base"], files["flash"], dtype=dtype, device=acc.device)
    model.checkpoint_blocks = cfg.gradient_checkpointing
    desc = inject(model, cfg)
    cast_base_(model, dtype)
    model.to(acc.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    lr_sched = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=cfg.optim.warmup_steps)
    state = TrainState()
    model, optimizer = acc.prepare(model, optimizer)
    register_checkpoint_hooks(acc, acc.unwrap_model(model))
    acc.register_for_checkpointing(lr_sched, state)
    if ckpt is not None:
        with weights_only_loading():
            acc.load_state(str(ckpt))
        log.info("resumed from %s at step %d", ckpt, state.step)
    sigmas = training_sigmas(cfg.noise.shift)
    meta = {"family": "v3", "lora": desc, "config": dataclasses.asdict(cfg), "frames": cfg.data.frames,
            "size": [cfg.data.width, cfg.data.height], "weights": report.summary(), "windows": windows_id(windows)}
    before = read_meta(ckpt).get("windows") if ckpt is not None else None
    if before not in (None, meta["windows"]):
        log.warning("the training windows changed since %s (%s then, %s now: other clips, captions, frames or stride): the "
                    "resumed run draws from the new set, so it is not the run the checkpoint began",
                    ckpt.name, before["count"], meta["windows"]["count"])
    mon = Monitor(out, main, tensorboard=True, plot=False, fresh=ckpt is None)

    # 3. the steps
    step, done, sums, t_log = state.step, 0, 0.0, time.time()
    saved = step  # the checkpoint resumed from holds this step (a fresh run: nothing to keep at step 0)
    try:
        while step < cfg.steps and (stop_after is None or done < stop_after):
            for micro in range(cfg.optim.grad_accum):
                g = torch.Generator().manual_seed(step_seed(cfg.seed, rank, step, micro))
                idxs = torch.randint(len(windows), (cfg.optim.batch_size,), generator=g).tolist()
                drop = torch.rand(cfg.optim.batch_size, generator=g) < cfg.data.audio_drop
                batch = make_batch(cache, prompts, windows, idxs, drop, acc.device, dtype)
                with acc.accumulate(model):
                    loss, _ = flow_loss(model, batch, cfg.noise, g, sigmas)
                    if not torch.isfinite(loss):
                        raise NonFiniteError(f"step {step + 1}: the loss is {float(loss)} (windows {idxs}); lower optim.lr, "
                                             "use mixed_precision: bf16 rather than fp16, or resume from the last checkpoint")
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                        acc.clip_grad_norm_(params, cfg.optim.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                sums += float(loss.detach()) / cfg.optim.grad_accum
            lr_sched.step()
            step += 1
            done += 1
            state.step = step
            if step % cfg.log_every == 0 or step == cfg.steps:
                n = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
                mon.step(step, {"loss": sums / max(1, n), "lr": lr_sched.get_last_lr()[0],
                                "s_per_step": (time.time() - t_log) / max(1, n)})
                if main:
                    log.info("step %d/%d loss %.4f", step, cfg.steps, sums / max(1, n))
                sums, t_log = 0.0, time.time()
            if step % cfg.checkpoint.every == 0 or step == cfg.steps:
                save_checkpoint(acc, out, step, meta, cfg.checkpoint.keep_last)
                saved = step
                if validator is not None:
                    if main:
                        clip = validator.render(acc.unwrap_model(model), files, step, out, acc.device, dtype)
                        mon.event(step, "validation", video=str(clip))
                        log.info("validation clip %s", clip)
                    vwait.wait()  # the others wait here, within distributed.validation_timeout_s (a gloo group of its own)
    finally:
        mon.close()
    if saved != step and step > 0:  # stopped early (stop_after): keep what was trained
        save_checkpoint(acc, out, step, meta, cfg.checkpoint.keep_last)
    return {"step": step, "output_dir": str(out), "windows": len(windows), "lora": desc}
