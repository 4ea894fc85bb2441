"""Benchmark: the EchoMimicV3 flash-pro speed on a GPU (full-size random weights), one short run.

    python bench/gpu_v3.py                                   # CUDA, bf16, the official shot: 768x768, 81 frames
    python bench/gpu_v3.py --budget-s 60 --repeat 2
    python bench/gpu_v3.py --tiny --device cpu --compile-backend aot_eager   # the same code, tiny (a check)

The transformer is ``WanV3Transformer(WanV3Config())`` (Wan2.1-Fun 1.3B-InP DiT + flash-pro audio modules) with
random weights; the shape is the sampler's own (``sample_size`` of a ``--width`` x ``--height`` reference at the
768x768 target area, ``check_frames``): latents (1, 16, 21, 96, 96), the condition y (1, 20, 21, 96, 96), 512 text
tokens (the prompt is padded to ``text_len``) + 257 CLIP tokens of context, the audio tokens made once from 81
per-frame wav2vec2 windows by the model's projector (as ``sample_latents`` does). Figures, in this order (each
printed as a ``{"partial": ...}`` JSON line when measured, so a run cut short keeps them; one JSON line at the end):

1. one transformer call eager: a warm-up, then the median of ``--repeat`` calls (CUDA-synchronised);
2. the Wan VAE decode of the shot's latents (diffusers ``AutoencoderKLWan``, random weights; timed once);
3. the same call with the regional compile of the blocks (``compile_blocks``, which ``compile_transformer`` calls):
   the first call's excess over a steady call is ``compile_s``, then the median of ``--repeat`` calls;
4. the 8-step shot for real (``sample_latents``, audio CFG, TeaCache ``official``) when the budget allows;
5. the VAE encode of the condition (81 frames) when the budget allows.

``--fp8`` stores the blocks' Linear weights in ``float8_e4m3fn`` (``transformer_to_fp8``, upcast per layer, as
``echomimic animate --version v3 --fp8``) before any stage: the calls, the compiled calls and the shot are then
those of the low-memory path. ``--stages`` picks stages by name (the others are reported as not asked for).

FLOPs per call are analytic (:func:`echomimic_lib.models.wan.flops.call_flops`; ``tests/test_gpu_check.py`` checks
them against ``FlopCounterMode``): linear layers 2 x weights x rows, attention 4 x queries x keys x dim (self-attention over
the video tokens, text over 512, CLIP over 257, audio per latent frame over its 32 tokens); MFU is against the
card's dense bf16 peak (``_gpu_timing.PEAK_TFLOPS`` by device name, or ``--peak-tflops``). The shot estimate is
8 steps x 2 calls (audio CFG); TeaCache ``official`` skips some: its decisions depend only on the time embedding
``e0`` of each call, so they are counted for this model's (random) time MLP without running the blocks
(``teacache_calls``), beside the bounds any weights give (``teacache_calls_bounds``: per restart the first 5 calls
run, the zero-audio pass at the same timestep adds poly(0) = -0.05 and skips unless the accumulator is high).
A stage that would start past ``--budget-s`` seconds is reported as skipped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_pipeline import _register_cpu_sdpa  # noqa: E402, F401 (the FLOP tests register it through this module)
from _gpu_timing import kernels, log, run_header, sync, timed  # noqa: E402

from echomimic_lib.models.wan.flops import call_flops  # noqa: E402

TARGET, TINY_TARGET = (768, 768), (64, 64)
STEPS = 8  # the flash-pro default
STAGES = ("eager", "vae_decode", "compiled", "sample_8_steps", "vae_encode")


def teacache_calls(model, steps: int, cfg_calls: int = 2) -> int:
    """Transformer calls TeaCache ``official`` runs in a ``steps``-step shot of this model: its decision needs only
    each call's ``e0`` (``WanV3Transformer.time_embeddings``), so the blocks are not run."""
    from echomimic_lib.pipeline.wan.scheduler import flow_unipc
    from echomimic_lib.pipeline.wan.teacache import make_cache

    p = next(model.parameters())
    cache = make_cache("official", steps)
    for t in flow_unipc(steps, device=p.device).timesteps:
        e0 = model.time_embeddings(torch.as_tensor(t, device=p.device), 1, p.dtype, p.device)[1]
        for _ in range(cfg_calls):
            cache.begin(e0)
            cache.end_call()
    return sum(e["computed"] for e in cache.trace)


def teacache_calls_bounds(steps: int, cfg_calls: int = 2) -> list[int]:
    """The fewest and most calls TeaCache ``official`` can run: the distance between steps at which its polynomial
    is lowest (any with poly < 0) and highest."""
    from echomimic_lib.pipeline.wan.teacache import TeaCache

    probe = TeaCache(steps)
    grid = np.linspace(0.0, 1.0, 100001)
    out = []
    for rel in (0.0, float(grid[np.argmax(probe.poly(grid))])):
        cache, e0 = TeaCache(steps), torch.ones(1, dtype=torch.float64)
        for i in range(steps):
            e0 = e0 * (1 + rel) if i else e0
            for _ in range(cfg_calls):
                cache.begin(e0)
                cache.end_call()
        out.append(sum(e["computed"] for e in cache.trace))
    return sorted(out)


@torch.no_grad()
def setup(args, device, dtype) -> dict:
    """Model, VAE and the inputs of one call at the shot's shape."""
    from diffusers import AutoencoderKLWan

    from echomimic_lib.models.wan import WanV3Config, WanV3Transformer
    from echomimic_lib.models.wan.tiny import TINY_V3
    from echomimic_lib.pipeline.wan.sampler import check_frames, sample_size

    cfg = TINY_V3 if args.tiny else WanV3Config()
    height, width = sample_size(args.width, args.height, TINY_TARGET if args.tiny else TARGET)
    t_lat = check_frames(args.frames, cfg.vae_scale)
    latent = (t_lat, height // 8, width // 8)
    with torch.device(device):
        model = WanV3Transformer(cfg).eval().to(dtype).requires_grad_(False)
        vae = AutoencoderKLWan(base_dim=4 if args.tiny else 96, z_dim=cfg.out_dim).eval().to(dtype).requires_grad_(False)
    g = torch.Generator(device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, generator=g)

    a = cfg.audio
    st = dict(cfg=cfg, model=model, vae=vae, latent=latent, size=(height, width), device=device,
              x=randn(1, cfg.out_dim, *latent), y=randn(1, cfg.in_dim - cfg.out_dim, *latent),
              text=randn(1, cfg.text_len, cfg.text_dim), clip=randn(1, cfg.clip_tokens, cfg.clip_dim),
              windows=randn(1, args.frames, a.seq_len, a.blocks, a.channels))
    st["tokens"] = model.audio_tokens(st["windows"])  # once per shot, as sample_latents does
    if getattr(args, "fp8", False):  # after the audio tokens: the projector is not among the fp8 layers anyway
        from echomimic_lib.models.wan import transformer_to_fp8

        st["fp8_saved_gb"] = round(transformer_to_fp8(model) / 1e9, 3)
    st["t"] = torch.tensor(999, device=device)
    return st


def call(st: dict):
    return st["model"](st["x"], st["t"], st["text"], st["clip"], st["y"], audio_tokens=st["tokens"])


def sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def peak_gb(device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 3) if device.type == "cuda" else None


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def time_calls(st: dict, args, peak: float | None, flops: int) -> dict:
    """The first call, then the median of ``--repeat`` (seconds, TFLOP/s, MFU)."""
    with kernels(st["device"]):
        times = timed(lambda: call(st), st["device"], 1 + args.repeat)
    t = statistics.median(times[1:])
    return {"first_call_s": round(times[0], 3), "call_s": round(t, 4), "calls_s": [round(x, 4) for x in times[1:]],
            "tflops_per_s": sig(flops / t / 1e12), "mfu": round(flops / t / (peak * 1e12), 4) if peak else None}


def shot(res: dict, call_s: float, args) -> dict:
    """Seconds per video frame of an ``STEPS``-step shot from one call's time: TeaCache off (2 calls per step) and
    official (this model's count and the most any weights run), the decode (and encode, when measured) added."""
    once = res.get("vae_decode_s", 0.0) + res.get("vae_encode_s", 0.0)
    calls = {"teacache_off": 2 * STEPS, "teacache_official": res["teacache_calls"],
             "teacache_official_max": res["teacache_calls_bounds"][1]}
    return {"call_s": call_s, "includes": ["calls"] + [k for k in ("vae_decode_s", "vae_encode_s") if k in res],
            **{f"{k}_s_per_frame": round((n * call_s + once) / args.frames, 4) for k, n in calls.items()}}


@torch.no_grad()
def sample_shot(st: dict) -> dict:
    """The real ``STEPS``-step loop (audio CFG 3, TeaCache official) on the shot's inputs."""
    from echomimic_lib.pipeline.wan.sampler import V3Settings, sample_latents

    noise = torch.randn(1, st["cfg"].out_dim, *st["latent"], generator=torch.Generator().manual_seed(1))
    sync(st["device"])
    t0 = time.perf_counter()
    with kernels(st["device"]):
        lat, trace = sample_latents(st["model"], st["y"], st["text"], st["clip"], st["windows"],
                                    V3Settings(steps=STEPS, teacache="official"), noise=noise)
    sync(st["device"])
    return {"seconds": round(time.perf_counter() - t0, 3), "calls": len(trace),
            "computed_calls": sum(e["computed"] for e in trace), "finite": bool(torch.isfinite(lat).all())}


def vae_seconds(st: dict, what: str) -> float:
    from echomimic_lib.models.wan import vae as wan_vae

    sync(st["device"])
    t0 = time.perf_counter()
    if what == "decode":
        wan_vae.decode(st["vae"], st["x"])  # latents of the shot's shape
    else:  # the condition: the reference as frame 0, grey frames after it
        video = torch.zeros(1, 3, st["frames"], *st["size"], device=st["device"], dtype=st["x"].dtype)
        wan_vae.encode_mode(st["vae"], video)
    sync(st["device"])
    return round(time.perf_counter() - t0, 3)


@torch.no_grad()  # inference: no autograd graph (its saved activations would not fit at this size)
def run(args, emit) -> dict:
    """Every stage in order into one result dict; ``emit(res)`` after each."""
    device, dtype, peak, res = run_header(args, "bf16")
    res.update(compile_backend=args.compile_backend, peak_vram_gb={}, fp8=bool(getattr(args, "fp8", False)))
    t0 = time.perf_counter()
    st = setup(args, device, dtype)
    st["frames"] = args.frames
    cfg = st["cfg"]
    flops = call_flops(cfg, st["latent"])
    res.update(shape={"height": st["size"][0], "width": st["size"][1], "frames": args.frames, "latent": list(st["latent"]),
                      "video_tokens": flops["tokens"], "context_tokens": cfg.text_len + cfg.clip_tokens,
                      "audio_tokens_per_latent_frame": cfg.audio.context_tokens},
               params_b=round(sum(p.numel() for p in st["model"].parameters()) / 1e9, 3),
               flops_TF_per_call={k: sig(flops[k] / 1e12) for k in ("linear", "attention", "total")},
               teacache_calls=teacache_calls(st["model"], STEPS), teacache_calls_bounds=teacache_calls_bounds(STEPS),
               setup_s=round(time.perf_counter() - t0, 2))
    if "fp8_saved_gb" in st:
        res["fp8_saved_gb"] = st["fp8_saved_gb"]
    emit(res)

    def budget_left() -> float:
        return args.budget_s - (time.perf_counter() - args.t0)

    asked = set(getattr(args, "stages", None) or STAGES)

    def stage(name, need_s, fn):
        if name not in asked:
            res[name] = "not asked for (--stages)"
        elif budget_left() < need_s:
            res[name] = f"skipped (time budget: {budget_left():.0f} s left, ~{need_s:.0f} s needed)"
        else:
            log(f"v3: {name} ...")
            reset_peak(device)
            try:
                fn()
            except Exception as exc:  # one stage failing must not lose the others
                res[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            if peak_gb(device) is not None:
                res["peak_vram_gb"][name] = peak_gb(device)
        emit(res)

    def eager():
        res["eager"] = time_calls(st, args, peak, flops["total"])
        res["shot_eager"] = shot(res, res["eager"]["call_s"], args)

    def decode():
        res["vae_decode_s"] = vae_seconds(st, "decode")
        res["vae_decode_s_per_frame"] = round(res["vae_decode_s"] / args.frames, 4)
        if isinstance(res.get("eager"), dict) and "call_s" in res["eager"]:
            res["shot_eager"] = shot(res, res["eager"]["call_s"], args)

    def compiled():
        from echomimic_lib.models.wan.compile import compile_blocks, uncompile_regions

        compile_blocks(st["model"], backend=args.compile_backend)
        try:
            r = res["compiled"] = time_calls(st, args, peak, flops["total"])
        except Exception:
            uncompile_regions(st["model"])  # the 8-step shot then runs eager
            raise
        r["compile_s"] = round(max(0.0, r["first_call_s"] - r["call_s"]), 2)
        res["shot_compiled"] = shot(res, r["call_s"], args)

    def sample():
        res["sample_8_steps"] = r = sample_shot(st)
        r["s_per_frame_with_decode"] = round((r["seconds"] + res.get("vae_decode_s", 0.0)) / args.frames, 4)

    def encode():
        res["vae_encode_s"] = vae_seconds(st, "encode")
        for key in ("eager", "compiled"):
            if isinstance(res.get(key), dict) and "call_s" in res[key]:
                res[f"shot_{key}"] = shot(res, res[key]["call_s"], args)

    def measured(key: str, default: float) -> float:
        return res[key]["call_s"] if isinstance(res.get(key), dict) and "call_s" in res[key] else default

    stage("eager", 5.0, eager)
    call_s = measured("eager", 1.0)
    stage("vae_decode", 3 * call_s, decode)  # the decode takes a few calls' time
    stage("compiled", 20.0 + (args.repeat + 1) * call_s, compiled)
    stage("sample_8_steps", 2 * STEPS * measured("compiled", call_s) + 2.0, sample)
    stage("vae_encode", res.get("vae_decode_s", 3 * call_s) + 2.0, encode)
    res["total_s"] = round(time.perf_counter() - args.t0, 1)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="default bf16 on CUDA, fp32 on the CPU")
    ap.add_argument("--tiny", action="store_true", help="the tiny V3 config at a 64x64 target: checks the script (CPU)")
    ap.add_argument("--width", type=int, default=768, help="reference width (sized to the target area as the sampler does)")
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--frames", type=int, default=81, help="video frames, 4k+1")
    ap.add_argument("--repeat", type=int, default=3, help="timed calls after the first (the median is reported)")
    ap.add_argument("--compile-backend", default="inductor", help="aot_eager: trace only (a quick CPU check)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense peak (default: by device name)")
    ap.add_argument("--budget-s", type=float, default=100.0, help="skip the stages that would end past this many seconds")
    ap.add_argument("--fp8", action="store_true", help="the blocks' weights stored in fp8 (upcast per layer) first")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, in any order: {', '.join(STAGES)}")
    args = ap.parse_args(argv)
    args.t0 = time.perf_counter()
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown or not args.stages:
        ap.error(f"--stages: unknown {', '.join(unknown) or '(none given)'}; the stages are {', '.join(STAGES)}")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (use --tiny --device cpu for the check)")
    from echomimic_lib.pipeline.wan.sampler import check_frames

    try:
        check_frames(args.frames)
    except ValueError as exc:
        ap.error(str(exc))
    res = run(args, lambda r: print(json.dumps({"partial": r}), flush=True))
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
