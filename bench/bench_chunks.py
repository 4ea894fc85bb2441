"""Benchmark (issue 16): CPU chunking, side by side with the unchunked computation, in one process.

    .venv/bin/python bench/bench_chunks.py            # feed-forward token chunks + VAE decode frames per call
    .venv/bin/python bench/bench_chunks.py --quick    # small sizes, a check of the script

- ``ff``: ``ff(norm(h)) + h`` of one transformer block (official-size GEGLU feed-forward, random weights) for
  the token counts of a 12-frame CFG window at 128 px (UNet levels 0-2), whole vs token chunks
  (:mod:`echomimic_lib.models.unet.token_chunks`), interleaved; CPU time, system time, minor page faults, max diff.
- ``decode``: the SD VAE decoder (official size, random weights) on 24 frames at 128 px and 4 at 256 px,
  1 / 2 / 4 / 8 frames per call, interleaved; CPU time, system time, page faults, peak RSS above the
  weights (``VmHWM`` reset before each run), and the chunk :func:`~echomimic_lib.pipeline.decode.cpu_chunk`
  picks.
- ``rate``: the machine's matrix-product rate at the denoiser's shapes (a 6144 x 320 x 5120 ``addmm``, a
  3x3 convolution of 320 channels on 24 rows of 16 x 16) and the SD VAE decoder's FLOPs per frame at 128 px
  (``FlopCounterMode``): the numbers behind the README's FLOP floor.

Prints one JSON object. No timed assertions: the figures go to the README.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import proc_status, random_, reset_peak_rss  # noqa: E402  (puts the project on the path)
from _official import SD_VAE_CONFIG  # noqa: E402
from echomimic_lib.models.unet import token_chunks  # noqa: E402
from echomimic_lib.pipeline.decode import cpu_chunk  # noqa: E402


def _measure(fn) -> dict:
    reset_peak_rss()
    base = proc_status("VmRSS")
    r0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    out = fn()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu": time.process_time() - c0, "sys": r1.ru_stime - r0.ru_stime, "faults": r1.ru_minflt - r0.ru_minflt,
            "above_gb": (proc_status("VmHWM") - base) / 1e9, "out": out}


def _pairs(fns: dict, repeat: int) -> dict:
    runs = {k: [] for k in fns}
    outs = {}
    for r in range(repeat):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            m = _measure(fns[k])
            outs[k] = m.pop("out")
            runs[k].append(m)
    first = next(iter(fns))
    res = {}
    for k, lst in runs.items():
        res[k] = {f: round(statistics.median(m[f] for m in lst), 3) for f in ("cpu", "sys", "faults", "above_gb")}
        res[k]["max_abs_diff"] = float((outs[k] - outs[first]).abs().max())
        res[k]["cpu_ratio"] = round(res[k]["cpu"] / res[first]["cpu"], 3)
    return res


def _sd_vae():
    """The SD VAE (the official size) with random weights."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**SD_VAE_CONFIG)
    return random_(vae).eval()


def part_ff(args) -> dict:
    from diffusers.models.attention import FeedForward

    out = {}
    for level, dim in enumerate((320, 640, 1280)):
        tokens = 24 * (args.size // 8 // 2**level) ** 2  # CFG window of 12 frames: 24 rows
        ff, norm = random_(FeedForward(dim, activation_fn="geglu")).eval(), torch.nn.LayerNorm(dim)
        h = torch.randn(tokens, dim, generator=torch.Generator().manual_seed(1))
        fns = {"whole": lambda: ff(norm(h)) + h, "chunked": lambda: token_chunks.residual_ff(ff, norm, h)}
        with torch.no_grad():
            out[f"level{level}_{tokens}x{dim}"] = {"chunk_tokens": token_chunks.chunk_tokens(tokens, dim, 4),
                                                    **_pairs(fns, args.repeat)}
    return out


def part_decode(args) -> dict:
    vae = _sd_vae()
    out = {}
    for size, frames in args.decode:
        z = torch.randn(frames, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(2))

        def run(batch, z=z):
            return torch.cat([vae.decode(z[s : s + batch]).sample for s in range(0, z.shape[0], batch)])

        fns = {f"{b} per call": (lambda b=b: run(b)) for b in (1, 2, 4, 8) if b <= frames}
        with torch.no_grad():
            out[f"{size}px_{frames}frames"] = {"cpu_chunk": cpu_chunk(vae, size, size, 8), **_pairs(fns, args.repeat)}
    return out


def _gflops(fn, flops: float, n: int = 10) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return round(flops * n / (time.perf_counter() - t) / 1e9, 1)


def part_rate(args) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(3)
    a, w, b = torch.randn(6144, 320, generator=g), torch.randn(5120, 320, generator=g), torch.randn(5120, generator=g)
    conv = torch.nn.Conv2d(320, 320, 3, padding=1)
    x = torch.randn(24, 320, 16, 16, generator=g)
    vae = _sd_vae()
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            vae.decode(torch.randn(1, 4, 16, 16, generator=g))
        return {"addmm_6144x320x5120_gflops": _gflops(lambda: torch.addmm(b, a, w.t()), 2 * 6144 * 320 * 5120),
                "conv3x3_320ch_24x16x16_gflops": _gflops(lambda: conv(x), 2 * 24 * 256 * 320 * 320 * 9),
                "vae_decode_gflop_per_frame_128px": round(fc.get_total_flops() / 1e9, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128, help="video size of the feed-forward token counts")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--what", default="all", choices=["ff", "decode", "rate", "all"])
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat: checks that the script runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.decode = [(128, 24), (256, 4)]
    if args.quick:
        args.size, args.repeat, args.decode = 64, 1, [(64, 2)]
    res = {"threads": args.threads, "torch": torch.__version__}
    if args.what in ("ff", "all"):
        res["ff"] = part_ff(args)
    if args.what in ("rate", "all"):
        res["rate"] = part_rate(args)
    if args.what in ("decode", "all"):
        res["decode"] = part_decode(args)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
