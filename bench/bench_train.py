"""Trainer benchmark: step time and peak memory of one training step.

Cases (each measured in a fresh subprocess so peak memory is its own):
- ``stage1`` / ``stage2``: V1 stage 1 (reference + denoiser + encoder trained, one frame) and stage 2
  (motion modules trained, ``--frames`` frames), with and without gradient checkpointing;
- ``spatial``: stage 1 plus the V1 spatial loss (VAE decode with gradients): full decode, decoder
  gradient checkpointing, face crop;
- V2 phase types: ``v2_muted`` (APDH 1-2: audio attention muted), ``v2_masked`` (3a-3c: lips/head partial
  attention), ``v2_global`` (3d), ``v2_temporal`` (4), all with the PhD loss;
- PhD S1 forms side by side: ``v2_s1_heatmap`` / ``v2_s1_encoder`` (phase 3d, every step at t = 950 = S1,
  ``loss.phd.pose_form`` heatmap vs encoder).
Networks are random at the chosen size (``--size sd15`` = the official SD1.5 widths; ``tiny`` for a quick
run), the VAE is an SD-size random AutoencoderKL, inputs are random tensors of the training shapes.

Memory: CUDA allocator peak on GPU; on CPU the process's peak RSS (ru_maxrss) minus the RSS after the
models were built (``build_gb``), i.e. what the step adds (activations, gradients, optimizer state).
The optimizer step runs only where AdamW state fits (``--optimizer none`` skips it and reports the
analytic AdamW state size instead: 8 bytes per trained parameter).

    .venv/bin/python bench/bench_train.py --size sd15 --res 128 --cases stage1,stage2 --steps 2
    .venv/bin/python bench/bench_train.py --size tiny --res 128 --cases all
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

CASES = ("stage1", "stage1_ckpt", "stage2", "stage2_ckpt", "spatial_full", "spatial_decoder_gc", "spatial_face_crop",
         "v2_muted", "v2_masked", "v2_global", "v2_temporal", "v2_s1_heatmap", "v2_s1_encoder")


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3


def run_case(case: str, size: str, res: int, frames: int, steps: int, device: str, optimizer: str, vae_size: str | None = None) -> dict:
    import torch
    from diffusers import AutoencoderKL

    from echomimic_lib.config import PRESETS as ARCH
    from echomimic_lib.models.unet import ConditionEncoder, EchoUNet
    from echomimic_lib.pipeline import make_scheduler
    from trainer.config import TrainConfig, PhaseConfig
    from trainer.net import AudioAttentionControl, TrainingNet, bypass_motion, enable_gradient_checkpointing, set_trainable
    from trainer.step import LossFns, compute_losses

    torch.manual_seed(0)
    dev = torch.device(device)
    arch = ARCH[size]
    temporal = "stage2" in case or case == "v2_temporal"
    v2 = case.startswith("v2")
    ckpt = case in ("stage1_ckpt", "stage2_ckpt")
    f = frames if temporal else 1
    cfg = TrainConfig()
    cfg.data.condition = "pose" if v2 else "landmarks"
    audio_mode = {"v2_muted": "muted", "v2_masked": "lips"}.get(case, "global")
    train = ["motion"] if temporal else ["reference", "denoiser", "cond_encoder"]
    cfg.phases = [PhaseConfig(name="p", steps=steps, kind="temporal" if temporal else "spatial", frames=f, train=train, audio=audio_mode)]
    if case.startswith("spatial"):
        cfg.loss.spatial.weight, cfg.loss.spatial.lpips = 0.1, 0.0
        cfg.loss.spatial.decoder_checkpointing = case == "spatial_decoder_gc"
        cfg.loss.spatial.face_crop, cfg.loss.spatial.crop_size = case == "spatial_face_crop", res // 2
    if v2:
        cfg.loss.phd.enabled, cfg.loss.phd.low_weight, cfg.loss.decode_frames = True, 0.0, 4  # as the v2_apdh preset
        cfg.loss.phd.pose_form = "heatmap" if case == "v2_s1_heatmap" else "encoder"
    s1_only = case.startswith("v2_s1_")
    vae_size = vae_size or size
    vae_cfg = dict(block_out_channels=[128, 256, 512, 512] if vae_size == "sd15" else [32, 32, 32, 32],
                   down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4,
                   layers_per_block=2 if vae_size == "sd15" else 1, norm_num_groups=32)
    t0 = time.perf_counter()
    net = TrainingNet(EchoUNet(arch, "reference"), EchoUNet(arch, "denoiser", motion=temporal),
                      ConditionEncoder(3, arch.cond_out_channels, arch.cond_block_channels)).to(dev)
    vae = AutoencoderKL(**vae_cfg).to(dev).requires_grad_(False).eval()
    if cfg.loss.spatial.decoder_checkpointing:
        vae.enable_gradient_checkpointing()
    for m in (net.reference, net.denoiser):
        enable_gradient_checkpointing(m, ckpt)
    params = set_trainable(net, train, audio_mode)
    bypass_motion(net.denoiser, not temporal and net.denoiser.has_motion)
    ctrl = AudioAttentionControl(net.denoiser)
    opt = torch.optim.AdamW(params, lr=1e-5) if optimizer == "adamw" else None
    sched = make_scheduler()
    n_train = sum(p.numel() for p in params)
    build_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _current_rss_gb()
    b = 1
    batch = {
        "pixels": torch.rand(b, f, 3, res, res, device=dev) * 2 - 1,
        "reference": torch.rand(b, 3, res, res, device=dev) * 2 - 1,
        "audio": torch.randn(b, f, 50, 384, device=dev),
        "cond": torch.rand(b, 3, f, res, res, device=dev),
        "drop_reference": torch.zeros(b, dtype=torch.bool, device=dev),
        "drop_audio": torch.zeros(b, dtype=torch.bool, device=dev),
        "drop_condition": torch.zeros(b, dtype=torch.bool, device=dev),
        "loss_mask": torch.ones(b, f, res, res, device=dev),
        "face_box": torch.tensor([[0.3, 0.2, 0.7, 0.6]], device=dev),
        "headshot_padded": torch.zeros(b, dtype=torch.bool, device=dev),
        "keypoints": torch.rand(b, f, 128, 2, device=dev) * res,
    }
    if v2:
        m = torch.zeros(b, f, res, res, device=dev)
        m[..., res // 3 : res // 2, res // 3 : 2 * res // 3] = 1
        batch["audio_mask"] = m if audio_mode == "lips" else torch.full_like(m, 0.0 if audio_mode == "muted" else 1.0)
    times = []
    for i in range(steps):
        t1 = time.perf_counter()
        gen = torch.Generator().manual_seed(i)
        t = 950 if (i % 2 or s1_only) else 500
        out = compute_losses(net, vae, sched, batch, gen, cfg, LossFns(), ctrl, timesteps=torch.tensor([t]))
        out.total.backward()
        if opt is not None:
            opt.step()
        for p in params:
            p.grad = None
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t1)
    res_ = {"case": case, "size": size, "vae": vae_size, "res": res, "frames": f, "device": device, "grad_ckpt": ckpt, "optimizer": optimizer,
            "trained_params_m": round(n_train / 1e6, 1), "build_s": round(build_s, 1),
            "step_s": round(min(times[1:] or times), 3), "first_step_s": round(times[0], 3)}
    if dev.type == "cuda":
        res_["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    else:
        res_["build_gb"] = round(base, 2)
        res_["peak_rss_gb"] = round(_rss_gb(), 2)
        res_["step_added_gb"] = round(_rss_gb() - base, 2)
    if opt is None:
        res_["adamw_state_gb_not_allocated"] = round(n_train * 8 / 1024**3, 2)
    return res_


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["sd15", "tiny"], default="sd15", help="UNet widths")
    p.add_argument("--vae", choices=["sd15", "tiny"], help="VAE size (default: --size); e.g. --size tiny --vae sd15 isolates the decoder")
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--optimizer", choices=["adamw", "none", "auto"], default="auto",
                   help="auto: AdamW except for the stage-1 cases at sd15 size on CPU (their state does not fit 24 GB)")
    p.add_argument("--cases", default="stage1,stage1_ckpt,stage2,stage2_ckpt", help=f"comma list or 'all' of {','.join(CASES)}")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(run_case(args.one, args.size, args.res, args.frames, args.steps, args.device, args.optimizer, args.vae)))
        return 0
    cases = CASES if args.cases == "all" else tuple(args.cases.split(","))
    rows = []
    for case in cases:
        opt = args.optimizer
        if opt == "auto":
            opt = "none" if args.size == "sd15" and args.device == "cpu" and not ("stage2" in case or case == "v2_temporal") else "adamw"
        cmd = [sys.executable, __file__, "--one", case, "--size", args.size, "--res", str(args.res), "--frames", str(args.frames),
               "--steps", str(args.steps), "--device", args.device, "--optimizer", opt] + (["--threads", str(args.threads)] if args.threads else []) \
            + (["--vae", args.vae] if args.vae else [])
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            rows.append({"case": case, "error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"})
        else:
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
