"""Benchmark: DeepCache (``--deep-cache N``) on the official-size V1/V2 denoiser (random weights).

    .venv/bin/python bench/bench_deep_cache.py                 # FLOPs at 512 / 768 px + timings on this machine
    .venv/bin/python bench/bench_deep_cache.py --size 128 --steps 6 --json

1. Work (no compute: meta tensors and torch's FLOP counter): one CFG denoiser call of 12 frames at 512 px (V1)
   and 768 px (V2), whole and partial per branch; the partial call's share of the whole call, the denoising
   loop's speed-up that follows for intervals 2, 3 and 4 (``N / (1 + (N - 1) * share)``), and the size of
   the per-frame store (fp16, CFG) per 120 frames.
2. Time, side by side in one process on ``--device`` (default: CUDA if present, else the CPU; the CPU's clock
   is the process's CPU time, which other jobs barely move): a whole call and the partial calls of branches
   0, 1 and 2 at ``--size`` (median of ``--repeat`` after a warm-up), then whole generations' denoising loops
   (the Sampler, ``decode=False``) without DeepCache and with intervals 2 and 3 at branch 0, same inputs,
   ``--steps`` steps, ``--frames`` frames (median of ``--gen-repeat``, the order alternating).

Quality is not measured here: random weights say nothing about it. The store's effect on peak memory is
``bench_vram.py --deep-cache N`` (it adds exactly the store).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from _models import build

BRANCHES = (0, 1, 2, 3, 5, 8, 11)
INTERVALS = (2, 3, 4)


def _sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _inputs(h: int, frames: int, device, dtype, cond_channels: int = 320):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, frames, h, h, generator=g)
    audio = torch.randn(1, frames, 50, 384, generator=g)
    cond = torch.randn(1, cond_channels, 1, h, h, generator=g)
    return x.to(device, dtype), audio.to(device, dtype), cond.to(device, dtype)


@torch.no_grad()
def work(sizes=(512, 768), frames: int = 12) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from echomimic_lib.config import SD15
    from echomimic_lib.models.unet import EchoUNet

    with torch.device("meta"):
        ref, den = EchoUNet(SD15, "reference"), EchoUNet(SD15, "denoiser")
    out = {}
    for size in sizes:
        h = size // 8
        with torch.device("meta"):
            kv = den.prepare_reference(ref.forward_reference(torch.randn(1, 4, h, h))[0], join_budget=0)
            x, audio, cond = torch.randn(2, 4, frames, h, h), torch.randn(1, frames, 50, 384), torch.randn(1, 320, 1, h, h)
            kw = dict(audio=audio, cond=cond, reference=kv, uncond_rows=1)
            with FlopCounterMode(display=False) as fc:
                den(x, 801, **kw)
            whole = fc.get_total_flops()
            rows = {}
            for b in BRANCHES:
                _, kept = den(x, 801, cache_branch=b, **kw)
                with FlopCounterMode(display=False) as fc:
                    den(x, 801, cache_branch=b, cached=kept, **kw)
                share = fc.get_total_flops() / whole
                store = 2 * 120 * kept[0].numel() * 2  # CFG rows x 120 frames x one frame's kept input, fp16
                rows[b] = {"partial_share": round(share, 4), "kept": list(kept.shape[1:]), "store_gb_per_120_frames_fp16":
                           round(store / 1e9, 3), **{f"loop_speedup_interval_{n}": round(n / (1 + (n - 1) * share), 2)
                                                     for n in INTERVALS}}
        out[f"{size}px"] = {"whole_call_tflop": round(whole / 1e12, 2), "branches": rows}
    return out


def _clock(dev):
    """CPU: the process's CPU time (other jobs on a shared machine barely move it); CUDA: wall time."""
    return time.perf_counter if dev.type == "cuda" else time.process_time


def _median_s(fn, dev, repeat: int) -> float:
    fn()
    times, clock = [], _clock(dev)
    for _ in range(repeat):
        _sync(dev)
        t = clock()
        fn()
        _sync(dev)
        times.append(clock() - t)
    return statistics.median(times)


@torch.no_grad()
def timed(args) -> dict:
    from echomimic_lib.audio import AudioFeatures
    from echomimic_lib.model_set import EchoMimicModels
    from echomimic_lib.modes import WEIGHT_SETS
    from echomimic_lib.pipeline import MaskCondition, Sampler, settings_for

    dev = torch.device(args.device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    cfg, ref, den, enc = build(args.preset, cond_channels=1, device=str(dev))
    ref, den, enc = ref.to(dtype), den.to(dtype), enc.to(dtype)
    den.fuse_projections()
    h = args.size // 8
    x, audio, cond = _inputs(h, 12, dev, dtype, cfg.block_out_channels[0])
    kv = den.prepare_reference(ref.forward_reference(torch.randn(1, 4, h, h).to(dev, dtype))[0])
    kw = dict(audio=audio, cond=cond, reference=kv, uncond_rows=1)
    calls = {"whole_s": _median_s(lambda: den(x, 801, **kw), dev, args.repeat)}
    for b in (0, 1, 2):
        _, kept = den(x, 801, cache_branch=b, **kw)
        calls[f"partial_branch_{b}_s"] = _median_s(lambda: den(x, 801, cache_branch=b, cached=kept, **kw), dev, args.repeat)
        calls[f"partial_branch_{b}_share"] = round(calls[f"partial_branch_{b}_s"] / calls["whole_s"], 4)

    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=[32] * 4, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=1,
                        norm_num_groups=32).to(dev, dtype).eval()  # the reference image's encode only: not timed
    models = EchoMimicModels(config=cfg, weight_set=WEIGHT_SETS["v1_audio"], variant="normal", reference=ref,
                             denoiser=den, cond_encoder=enc, vae=vae)
    rows = int(np.ceil(args.frames * 50 / 25))
    feats = AudioFeatures(torch.randn(rows, 5, 384, generator=torch.Generator().manual_seed(1)), rows * 320)
    image = np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)
    mask = MaskCondition(np.pad(np.ones((args.size // 2, args.size // 2)), args.size // 4))
    loops, clock = {0: [], 2: [], 3: []}, _clock(dev)
    order = [-1] + [n for r in range(args.gen_repeat) for n in ((0, 2, 3) if r % 2 == 0 else (3, 2, 0))]
    for interval in order:  # -1: a one-step warm-up generation, not reported; the order alternates per repeat
        s = settings_for("v1-audio", "normal", width=args.size, height=args.size, steps=1 if interval < 0 else args.steps,
                         fps=25, num_frames=args.frames, deep_cache=max(0, interval))
        _sync(dev)
        t = clock()
        Sampler(models)(image, feats, mask, s, decode=False)
        _sync(dev)
        if interval >= 0:
            loops[interval].append(clock() - t)
    loops = {n: statistics.median(v) for n, v in loops.items()}
    return {"device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
            "clock": "wall" if dev.type == "cuda" else "process CPU time",
            "dtype": str(dtype).removeprefix("torch."), "size": args.size, "calls_12_frames_cfg": calls,
            "generation": {"frames": args.frames, "steps": args.steps, "repeats": args.gen_repeat, "seconds_off": round(loops[0], 2),
                           **{f"speedup_interval_{n}_branch_0": round(loops[0] / loops[n], 2) for n in (2, 3)}}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128, help="timed part: width = height (the work part is 512 and 768)")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per kind (median)")
    ap.add_argument("--gen-repeat", type=int, default=1, help="generations per setting (median; the order alternates)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="sd15", choices=["sd15", "tiny"], help="tiny: a quick check of the script")
    ap.add_argument("--no-work", action="store_true", help="skip the FLOP part")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = {"timed": timed(args)}
    if not args.no_work:
        res["work"] = work()
    print(json.dumps(res) if args.json else json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
