"""Benchmark (issue 14): what the low-VRAM streaming and fp8 weights cost in speed, and how much they change
the output, each measured side by side with the default path in one run.

    .venv/bin/python bench/bench_lowvram.py            # speed: official-size denoiser, bf16, 64 px, 12 frames, CFG
    .venv/bin/python bench/bench_lowvram.py --json     # + one JSON object as the last line

Speed: one denoiser call (12-frame window, CFG batch) per mode, repeated in rotating order (A B C D, B C D A,
...) so that load drift on this shared machine hits every mode alike; medians and ratios to the default. On
the CPU the streamed weights do not cross a bus: the ratio is the cost of the hooks and of copying the
weights (2.6 GB in bf16) once per call in host memory. On a GPU the same copy goes over PCIe (about 0.1 s per
call at 25 GB/s, prefetched on a side stream while the previous block computes).

Output: whole generations on tiny random weights (TINY architecture, 64 px, 24 frames, 2 steps, CFG 2.5,
fp32): the frames (in [0, 1]) of each mode against the default path's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from _models import ROOT, peak_rss_gb  # noqa: F401  (puts the repo on sys.path)
from echomimic_lib.config import SD15, TINY
from echomimic_lib.memory import BlockStreamer, Placement, to_fp8
from echomimic_lib.models.unet import EchoUNet

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@torch.no_grad()
def _random_denoiser(cfg, dtype, seed=0) -> EchoUNet:
    """Random weights built straight in ``dtype`` (no fp32 copy of the 1.3 B parameters)."""
    with torch.device("meta"):
        den = EchoUNet(cfg, "denoiser").to(dtype)
    den.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    for name, p in den.named_parameters():
        if p.dim() == 1:
            p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
        else:
            p.copy_(torch.randn(p.shape, generator=g).mul_(min(max(p[0].numel() ** -0.5, 0.02), 0.25)))
    from echomimic_lib.models.unet.motion import sinusoid_table

    for name, b in den.named_buffers():
        if name.endswith("pos_encoder.pe"):
            b.copy_(sinusoid_table(b.shape[1], b.shape[2]))
    return den.eval()


def _rotate(modes: dict, reps: int, call) -> dict:
    times = {m: [] for m in modes}
    names = list(modes)
    for r in range(reps):
        for m in names[r % len(names):] + names[: r % len(names)]:
            times[m].append(call(*modes[m]))
    return times


def speed(args) -> dict:
    dtype = DTYPES[args.dtype]
    cfg = {"sd15": SD15, "tiny": TINY}[args.preset]
    den = _random_denoiser(cfg, dtype)
    g = torch.Generator().manual_seed(1)
    h = args.size // 8
    x = torch.randn(2, 4, 12, h, h, generator=g)
    audio = torch.randn(1, 12, 10, 384, generator=g)
    streamer = BlockStreamer(den, "cpu", "cpu")

    @torch.no_grad()
    def call(stream: bool) -> float:
        if stream:
            streamer.attach()
        t = time.perf_counter()
        den(x, 500, audio=audio, uncond_rows=1)
        dt = time.perf_counter() - t
        if stream:
            streamer.detach()
        return dt

    call(False)  # warm-up
    times = _rotate({"default": (False,), "low-VRAM (streamed)": (True,)}, args.reps, call)
    if args.with_fp8:  # in place (a second official-size copy would not fit this machine's memory rule): after the others
        to_fp8(den)
        streamer = BlockStreamer(den, "cpu", "cpu")
        call(False)
        times.update({f"fp8{k}": v for k, v in _rotate({"": (False,), " + low-VRAM": (True,)}, args.reps, call).items()})
    base = statistics.median(times["default"])
    return {"setup": f"{args.preset} denoiser, {args.dtype}, {args.size} px, 12 frames, CFG batch, {torch.get_num_threads()} threads",
            "seconds_per_call": {m: round(statistics.median(t), 2) for m, t in times.items()},
            "ratio_to_default": {m: round(statistics.median(t) / base, 3) for m, t in times.items()},
            "runs": {m: [round(v, 2) for v in t] for m, t in times.items()}, "peak_rss_gb": round(peak_rss_gb(), 2),
            "note": "default and low-VRAM interleaved; the fp8 rows ran afterwards on the same (converted) network"}


def output_difference() -> dict:
    from diffusers import AutoencoderKL

    from echomimic_lib.audio import AudioFeatures
    from echomimic_lib.audio.whisper import random_whisper_encoder
    from echomimic_lib.model_set import EchoMimicModels
    from echomimic_lib.models.unet import ConditionEncoder
    from echomimic_lib.modes import WEIGHT_SETS
    from echomimic_lib.pipeline import MaskCondition, Sampler, settings_for
    from echomimic_lib.tiny import TINY_VAE_CONFIG, randomize_

    def models(fp8: bool):
        torch.manual_seed(0)
        m = EchoMimicModels(TINY, WEIGHT_SETS["v1_audio"], "normal", randomize_(EchoUNet(TINY, "reference"), 1).eval(),
                            randomize_(EchoUNet(TINY, "denoiser"), 2).eval(),
                            randomize_(ConditionEncoder(1, TINY.cond_out_channels, TINY.cond_block_channels), 3, gain=2.0).eval(),
                            randomize_(AutoencoderKL(**TINY_VAE_CONFIG), 4).eval(), random_whisper_encoder(5))
        if fp8:
            to_fp8(m.reference), to_fp8(m.denoiser)
        return m

    rows = 64
    audio = AudioFeatures(torch.randn(rows, 5, 384, generator=torch.Generator().manual_seed(6)), rows * 320)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = MaskCondition(np.pad(np.ones((32, 32)), 16))
    s = settings_for("v1-audio", "normal", width=64, height=64, steps=2, cfg=2.5, num_frames=24)
    out = {}
    for name, fp8, stream in (("default", False, False), ("low-VRAM (streamed)", False, True), ("fp8", True, False)):
        m = models(fp8)
        out[name] = Sampler(m, Placement(m, "cpu", stream_denoiser=stream, settings=s))(image, audio, mask, s).frames
    ref = out.pop("default")
    return {m: {"max_abs": float((f - ref).abs().max()), "mean_abs": float((f - ref).abs().mean())} for m, f in out.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=["sd15", "tiny"], default="sd15")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="bf16 keeps the official-size denoiser under 4 GB of RAM")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-fp8", dest="with_fp8", action="store_false")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    res = {"speed": speed(args), "output_difference_tiny_weights": output_difference()}
    sp = res["speed"]
    print(sp["setup"])
    for m, v in sp["seconds_per_call"].items():
        print(f"  {m:22s} {v:7.2f} s/call  x{sp['ratio_to_default'][m]}")
    for m, d in res["output_difference_tiny_weights"].items():
        print(f"  {m:22s} frames vs default: max |diff| {d['max_abs']:.4f}, mean {d['mean_abs']:.4f}")
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
