"""Benchmark (issue 2): one denoiser call of the official-size architecture (random weights).

    .venv/bin/python bench/bench_unet.py [--size 128] [--frames 12] [--repeat 3] [--device cpu]

CFG batch (uncond + cond) at 128 px, 12 frames: time per call (median of --repeat after one
warm-up) and peak RSS; on CUDA also peak VRAM (fp16). The comparison with the official code is
``bench_official.py``; every GPU figure at once is ``gpu_suite.py``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from _models import build, peak_rss_gb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="sd15")
    args = ap.parse_args()
    dev = torch.device(args.device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    t0 = time.time()
    cfg, ref, den, enc = build(args.preset)
    ref, den, enc = ref.to(dev, dtype), den.to(dev, dtype), enc.to(dev, dtype)
    den.fuse_projections()  # as the sampler does
    build_s = time.time() - t0
    h = args.size // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, args.frames, h, h, generator=g).to(dev)
    audio = torch.randn(1, args.frames, 50, 384, generator=g).to(dev)
    cond_img = torch.rand(1, 3, args.frames, args.size, args.size, generator=g).to(dev)
    times = []
    with torch.no_grad():
        kv = den.prepare_reference(ref.forward_reference(torch.randn(1, 4, h, h, generator=g).to(dev))[0])
        cond = enc(cond_img)
        for i in range(args.repeat + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.time()
            den(torch.cat([x, x]), 966, audio=audio, cond=cond, reference=kv, uncond_rows=1)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.time() - t)
    out = {"device": str(dev), "dtype": str(dtype), "size": args.size, "frames": args.frames, "batch": "CFG (2)",
           "seconds_per_call_median": round(statistics.median(times), 3), "seconds_per_call_all": [round(t, 3) for t in times],
           "model_build_seconds": round(build_s, 1), "peak_rss_gb": round(peak_rss_gb(), 2),
           "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        out["peak_vram_gb"] = round(torch.cuda.max_memory_allocated(dev) / 1024**3, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
