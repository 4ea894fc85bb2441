"""Benchmark (issue 23): the denoiser's attention calls on each SDPA kernel, side by side in one run.

    python bench/gpu_attention.py                       # CUDA, fp16: V1 512 px and V2 768 px shapes
    python bench/gpu_attention.py --device cpu --tiny   # the script itself, on the CPU (a check)

SD1.5's first level has 320 channels in 8 heads: 40-wide heads, which kernels tuned for 64 or 128 run
poorly, and at 768 px the reference attention there (9,216 queries over 18,432 keys) is a third of the
denoiser's FLOPs. For every attention shape of one 12-frame denoiser call (spatial self + reference
attention per level, the motion modules' temporal attention, the audio cross-attention), and every kernel
(PyTorch's own pick ``sdpa``, then ``sdpa-flash``, ``sdpa-cudnn``, ``sdpa-efficient``: the pack's attention
backends, see ``echomimic_lib.models.unet.attention``), it times the call with CUDA events and prints
ms, TFLOP/s and the attention time of one whole denoiser call (each shape times how often the call runs
it). A kernel that refuses a shape is reported as such. One JSON line at the end.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echomimic_lib.models.unet.attention import BACKENDS, sdpa_choice  # noqa: E402

KERNELS = [b for b in BACKENDS if b.startswith("sdpa")]
LEVELS = ((1, 320), (4, 640), (16, 1280), (64, 1280))  # (token divisor, channels) per resolution level
BLOCKS = {0: 5, 1: 5, 2: 5, 3: 1}  # transformer blocks per level: 2 down + 3 up; the mid block at the deepest
MOTION = {0: 5, 1: 5, 2: 5, 3: 6}  # motion modules per level (21 in all, 2 temporal attentions each)


def shapes(size: int, frames: int, cfg: bool, tiny: bool) -> list[dict]:
    """Every attention shape of one denoiser call: rows, heads, queries, keys, head width, times per call."""
    n0 = (size // 8) ** 2
    rows = frames  # conditional rows (the CFG call adds as many unconditional rows, without reference tokens)
    out = []
    for level, (div, ch) in enumerate(LEVELS):
        n, d = n0 // div, ch // 8
        if tiny:
            n, d = max(16, n // 64), d
        out.append(dict(name=f"L{level} reference", rows=rows, q=n, k=2 * n, d=d, times=BLOCKS[level]))
        if cfg:
            out.append(dict(name=f"L{level} self (uncond)", rows=rows, q=n, k=n, d=d, times=BLOCKS[level]))
        out.append(dict(name=f"L{level} audio", rows=rows * (2 if cfg else 1), q=n, k=50, d=d, times=BLOCKS[level]))
        out.append(dict(name=f"L{level} temporal", rows=(2 if cfg else 1) * n, q=frames, k=frames, d=d, times=2 * MOTION[level]))
    return out


def flops(s: dict) -> float:
    return 4.0 * s["rows"] * 8 * s["q"] * s["k"] * s["d"]


def time_call(fn, device, repeat: int) -> float:
    """Median seconds of ``fn`` (CUDA events on a GPU, wall clock on the CPU), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_shape(s: dict, kernel: str, device, dtype, repeat: int) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(s["rows"], 8, s["q"], s["d"], device=device, dtype=dtype, generator=g)
    k = torch.randn(s["rows"], 8, s["k"], s["d"], device=device, dtype=dtype, generator=g)
    v = torch.randn_like(k)

    def call():
        with sdpa_choice(kernel if device.type == "cuda" else "sdpa"):
            return F.scaled_dot_product_attention(q, k, v)

    try:
        sec = time_call(call, device, repeat)
    except RuntimeError as exc:  # the kernel (and its fallback) refuse this shape
        return {"error": str(exc).splitlines()[0][:160]}
    return {"ms": round(sec * 1e3, 4), "tflops": round(flops(s) / sec / 1e12, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"], help="default fp16 on CUDA, fp32 on the CPU")
    ap.add_argument("--tiny", action="store_true", help="small token counts: checks the script (CPU)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--kernels", default=",".join(KERNELS) if torch.cuda.is_available() else "sdpa")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    kernels = args.kernels.split(",")
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "dtype": str(dtype),
              "torch": torch.__version__, "kernels": kernels, "cases": {}}
    for label, size, cfg in (("v1 512 single", 512, False), ("v1 512 cfg", 512, True), ("v2 768 single", 768, False)):
        rows, per_call = [], {k: 0.0 for k in kernels}
        for s in shapes(size, 12, cfg, args.tiny):
            row = {"shape": s["name"], "rows": s["rows"], "q": s["q"], "k": s["k"], "d": s["d"], "times": s["times"]}
            for kernel in kernels:
                row[kernel] = r = run_shape(s, kernel, device, dtype, args.repeat)
                per_call[kernel] = per_call[kernel] + r["ms"] * s["times"] if "ms" in r and per_call[kernel] is not None else None
            rows.append(row)
            print(json.dumps({"case": label, **row}), file=sys.stderr, flush=True)
        result["cases"][label] = {"shapes": rows, "attention_ms_per_call": {k: None if v is None else round(v, 2)
                                                                             for k, v in per_call.items()}}
        print(f"{label}: attention per denoiser call " + ", ".join(
            f"{k} {v:.1f} ms" if v is not None else f"{k} n/a" for k, v in per_call.items()), file=sys.stderr, flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
