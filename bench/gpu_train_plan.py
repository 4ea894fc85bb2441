"""`echomimic-train plan`'s memory figure of a phase beside the peak memory of real training steps (issue 26).

For each case: the plan of the preset with the batch overridden (:func:`trainer.plan.memory.plan_run`, one GPU),
then -- in a fresh process, so that peaks do not mix -- the run's networks at that size with random weights
(the planner's own builder, :func:`trainer.plan.networks.build_meta`, with its device switched from ``meta`` to
the real one: no file, no download), set up as ``trainer.loop.fit`` does (float32 master weights, frozen VAE in
the mixed-precision dtype, gradient checkpointing, the phase's trainable set, accelerate's autocast through
:class:`trainer.distributed.PhaseModel`, AdamW over every parameter any phase trains, EMA, frozen optimizer
state offloaded) and a few training steps through :func:`trainer.step.compute_losses` on a synthetic batch
(every reference and condition kept: the worst case; one step per PhD timestep range). The LPIPS network is a
random-weight trunk of the configured architecture (same size, no ImageNet weights).

Measured (CUDA): ``torch.cuda.max_memory_reserved`` from the start (weights, optimizer, EMA, activations)
plus what the CUDA context holds outside PyTorch's allocator (device memory in use minus reserved, read after
the steps), comparable with the plan's total (which assumes 2 GiB for the context). ``--dry-run`` runs the
same code on the CPU at tiny size (tiny networks, 64 px, 4 frames); there the measure is the growth of the
process's peak resident memory, a rough figure (the plan's CUDA context and allocator margin do not apply).

    python bench/gpu_train_plan.py --out OUTDIR                      # CUDA: every case, one JSON row each
    python bench/gpu_train_plan.py --dry-run --out OUTDIR            # CPU, tiny
    python bench/gpu_train_plan.py --case v1_stage2 --batch 2 --out OUTDIR

Writes OUTDIR/train_plan.jsonl (one row per case, appended as each ends: {preset, phase, batch, plan_gib,
measured_gib, ratio, ...}) and prints each row. Exit status 1 when a case failed to run (no ratio is judged:
the rows are the finding).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 2**30
# case -> (preset, phase name, config overrides at full size)
CASES = {
    "v1_stage2": ("v1_stage2", "stage2", []),
    "v2_apdh_4": ("v2_apdh", "4", []),
}
TINY = ["data.width=64", "data.height=64", "loss.spatial.crop_size=32"]
AUDIO_TOKENS = 50  # whisper rows per frame, as the dataset delivers them
KEYPOINTS = 18 + 68 + 2 * 21  # trainer.masks.FrameKeypoints.all_points


def case_config(case: str, batch: int, dry: bool):
    from trainer.plan import load_plan_config

    preset, phase_name, over = CASES[case]
    over = [*over, f"optim.batch_size={batch}", "optim.grad_accum=1", "loss.lpips.random_backbone=true"]
    if dry:
        over += TINY + [f"phases.{phase_name}.frames=4"]
    cfg = load_plan_config(preset=preset, overrides=over)
    (phase,) = [p for p in cfg.phases if p.name == phase_name]
    return cfg, phase


def networks_of(cfg, dry: bool):
    """(EchoConfig, VAE layout) of the plan and of the measurement: SD1.5 size, or tiny in the dry run."""
    from echomimic_lib.config import PRESETS as ARCH
    from echomimic_lib.tiny import TINY_VAE_CONFIG
    from trainer.plan.networks import SD_VAE, arch_for

    return (ARCH["tiny"], TINY_VAE_CONFIG) if dry else (arch_for(cfg)[0], SD_VAE)  # both VAEs downsample 8 x


def estimate(cfg, phase, dry: bool):
    from trainer.plan.memory import plan_run

    echo, vae_layout = networks_of(cfg, dry)
    run = plan_run(cfg, gpus=1, arch="tiny" if dry else None, vae_layout=vae_layout)
    (p,) = [x for x in run.phases if x.name == phase.name]
    return p


def synthetic_batch(cfg, phase, batch: int, audio_dim: int, device, gen):
    """What ``trainer.data.dataset.collate`` delivers for this config (tests/test_gpu_train_check.py compares
    keys, shapes and dtypes with the real dataset), filled with noise; every reference and condition kept."""
    import torch

    b, f, H, W = batch, phase.frames, cfg.data.height, cfg.data.width
    no = torch.zeros(b, dtype=torch.bool)
    out = {"pixels": torch.rand(b, f, 3, H, W, generator=gen) * 2 - 1, "reference": torch.rand(b, 3, H, W, generator=gen) * 2 - 1,
           "audio": torch.randn(b, f, AUDIO_TOKENS, audio_dim, generator=gen), "audio_augmented": no.clone(),
           "drop_reference": no.clone(), "drop_audio": no.clone(), "drop_condition": no.clone(),
           "loss_mask": torch.ones(b, f, H, W), "face_box": torch.tensor([[0.3, 0.3, 0.7, 0.7]]).repeat(b, 1),
           "headshot_padded": no.clone()}
    cond = cfg.data.condition
    if cond == "landmarks":
        out["cond"] = torch.rand(b, 3, f, H, W, generator=gen)
        out["parts_mask"] = torch.ones(b, len(cfg.data.rls.parts), dtype=torch.bool)
    elif cond == "face_mask":
        out["cond"] = torch.rand(b, 1, 1, H, W, generator=gen)
    else:
        out["cond"] = torch.rand(b, 3, f, H, W, generator=gen)
        out["audio_mask"] = torch.ones(b, f, H, W)
        out["keypoints"] = torch.rand(b, f, KEYPOINTS, 2, generator=gen) * min(H, W)
    return {k: v.to(device) for k, v in out.items()}


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(cfg, phase, dry: bool, steps: int = 3) -> dict:
    """Peak memory of ``steps`` training steps of ``phase`` at the config's size (see the module docstring)."""
    import torch

    import trainer.plan.networks as N
    from accelerate import Accelerator
    from trainer.distributed import PhaseModel, place_optimizer_state
    from trainer.ema import PhaseEMA
    from trainer.loop import DTYPES, make_optimizer
    from trainer.losses import training_scheduler
    from trainer.lpips_net import build_lpips, lpips_needed
    from trainer.net import AudioAttentionControl, bypass_motion, enable_gradient_checkpointing, set_trainable, trainable_names
    from trainer.plan.checkpointing import configure_checkpointing
    from trainer.step import LossFns, compute_losses

    device = torch.device("cpu" if dry else "cuda")
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_peak()
    t0 = time.perf_counter()
    echo, vae_layout = networks_of(cfg, dry)
    meta = N.META
    N.META = device  # the planner's builder, on the real device: real (random) weights
    try:
        nets = N.build_meta(cfg, echo, vae_layout)
    finally:
        N.META = meta
    net, vae = nets.net, nets.vae
    for m in (net.reference, net.denoiser):  # as trainer.init.build
        enable_gradient_checkpointing(m, cfg.model.gradient_checkpointing)
        m.set_attention_backend(cfg.model.attention)
    net.train()
    frozen = DTYPES[cfg.mixed_precision] if cfg.frozen_dtype == "auto" else torch.float32
    if frozen != torch.float32:  # as trainer.loop.fit from here on
        vae.to(dtype=frozen)
    if cfg.loss.spatial.decoder_checkpointing:
        vae.enable_gradient_checkpointing()
    if cfg.lora.enabled:
        from trainer.lora import cast_base_

        cast_base_(net, frozen)
    configure_checkpointing(cfg, net, vae)
    ctrl = AudioAttentionControl(net.denoiser)
    scheduler = training_scheduler(cfg)
    lpips = build_lpips(cfg.loss.lpips.net, True, device) if lpips_needed(cfg) else None
    fns = LossFns(lpips=lpips, pose_estimator=None, pose_encoder=net.cond_encoder)
    union = set().union(*(trainable_names(net, p.train, p.audio) for p in cfg.phases))
    params = [p for n, p in net.named_parameters() if n in union]
    optimizer = make_optimizer(cfg, params)
    ema = PhaseEMA(params, decay=cfg.ema.decay) if cfg.ema.enabled else None
    acc = Accelerator(cpu=not cuda, mixed_precision=cfg.mixed_precision)
    wrapped = PhaseModel(acc, net, optimizer)
    trainable = set_trainable(net, phase.train, phase.audio)
    bypass_motion(net.denoiser, phase.kind == "spatial" and net.denoiser.has_motion)
    configure_checkpointing(cfg, net, vae)
    wrapped.enter()
    if cfg.memory.offload_frozen_optimizer_state:
        place_optimizer_state(optimizer, device)
    model, opt = wrapped.model, wrapped.optimizer
    T = scheduler.config.num_train_timesteps
    gen = torch.Generator().manual_seed(0)
    losses, times = [], []
    for s in range(steps):
        t1 = time.perf_counter()
        batch = synthetic_batch(cfg, phase, cfg.optim.batch_size, echo.audio_dim, device, gen)
        ts = int(T * (0.05, 0.35, 0.8)[s % 3])  # one step in each PhD range (pose, detail, low frequencies)
        with acc.autocast():
            o = compute_losses(model, vae, scheduler, batch, gen, cfg, fns, ctrl, timesteps=ts)
        acc.backward(o.total)
        acc.clip_grad_norm_(trainable, cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctrl.set(None)
        if ema is not None:
            ema.step(params)
        del batch
        losses.append(float(o.total.detach()))
        del o
        if cuda:
            torch.cuda.synchronize()
        times.append(round(time.perf_counter() - t1, 3))
    row = {"device": str(device), "steps": steps, "losses": losses, "step_s": times, "setup_s": round(time.perf_counter() - t0 - sum(times), 2),
           "trainable_M": round(sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6, 1)}
    if cuda:
        free, total = torch.cuda.mem_get_info()
        context = max(0, (total - free) - torch.cuda.memory_reserved())
        peak = torch.cuda.max_memory_reserved()
        row.update(measured_gib=round((peak + context) / GIB, 3), reserved_peak_gib=round(peak / GIB, 3),
                   allocated_peak_gib=round(torch.cuda.max_memory_allocated() / GIB, 3), context_gib=round(context / GIB, 3),
                   gpu=torch.cuda.get_device_name())
    else:
        row.update(measured_gib=round(max(0, _rss_peak() - rss0) / GIB, 4), measure="peak RSS growth (CPU)")
    return row


def run_case(case: str, batch: int, dry: bool) -> dict:
    cfg, phase = case_config(case, batch, dry)
    t0 = time.perf_counter()
    p = estimate(cfg, phase, dry)
    est_s = round(time.perf_counter() - t0, 1)
    plan = {"plan_gib": round(p.total / GIB, 3), "plan_without_context_gib": round((p.total - p.context) / GIB, 3),
            "plan_parts_gib": {"weights": round(sum(p.weights.values()) / GIB, 3), "gradients": round(p.gradients / GIB, 3),
                               "optimizer": round(p.optimizer / GIB, 3), "ema": round(p.ema / GIB, 3),
                               "activations": round(p.activation_bytes / GIB, 3), "context": round(p.context / GIB, 3)},
            "checkpointing": p.checkpointing, "frames": p.frames, "plan_s": est_s}
    m = measure(cfg, phase, dry)
    ratio = round(plan["plan_gib"] / m["measured_gib"], 3) if m["measured_gib"] > 0 else None
    return {"case": case, "preset": CASES[case][0], "phase": phase.name, "batch": batch, "plan_gib": plan["plan_gib"],
            "measured_gib": m["measured_gib"], "ratio": ratio, "size": [cfg.data.width, cfg.data.height],
            "mixed_precision": cfg.mixed_precision, "dry_run": dry, **plan, **{k: v for k, v in m.items() if k != "measured_gib"}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for train_plan.jsonl")
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="default: every case")
    ap.add_argument("--batch", type=int, default=1, help="micro-batch per GPU (plan and measurement)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny networks at 64 px (the code path, not the figures)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per case")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = a.case or list(CASES)
    if a.child:  # one case in this process: its row on the last line
        print(json.dumps(run_case(cases[0], a.batch, a.dry_run)), flush=True)
        return 0
    failed = 0
    for case in cases:  # a fresh process per case: peaks and the accelerate state do not carry over
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--case", case, "--batch", str(a.batch), "--out", str(out)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        try:
            r = subprocess.run(cmd + (["--dry-run"] if a.dry_run else []), capture_output=True, text=True, timeout=a.timeout, env=env)
            rc, so, se = r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired as exc:
            rc, so, se = 124, exc.stdout or "", f"timed out after {a.timeout:g} s"
            so, se = so if isinstance(so, str) else so.decode(), se
        lines = [x for x in so.strip().splitlines() if x.startswith("{")]
        if rc == 0 and lines:
            row = json.loads(lines[-1])
        else:
            failed = 1
            row = {"case": case, "preset": CASES[case][0], "phase": CASES[case][1], "batch": a.batch, "error": (se or so)[-2000:], "rc": rc}
        with open(out / "train_plan.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
