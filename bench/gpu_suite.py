"""Benchmark (issue 16): every GPU figure in one short run (target: under 8 minutes on one GPU).

    .venv/bin/python bench/gpu_suite.py                        # CUDA: V1 512 px and V2 768 px, fp16
    .venv/bin/python bench/gpu_suite.py --dtype bf16 --cuda-graphs
    .venv/bin/python bench/gpu_suite.py --device cpu --tiny    # the same script at a tiny size (a check)

For V1 (512 px, face locator) and V2 (768 px, pose encoder), official-size random weights, and each of
compile off / on (regional ``torch.compile`` of the ResNet blocks, spatial transformers and motion
modules; ``--cuda-graphs`` adds compile + CUDA graphs per region):

- denoiser call time for the CFG batch (normal: 30 steps, cfg 2.5) and the single batch (acc: 6 steps,
  cfg 1), 12-frame windows; its FLOPs (``torch.utils.flop_counter.FlopCounterMode``) and MFU = FLOPs /
  time / the GPU's dense fp16/bf16 peak (a table by device name, or ``--peak-tflops``);
- VAE decode per frame (8 frames per call), reference pass + reference encode (once per video);
- seconds per video frame for a ``--frames`` long video (default 120): steps x windows per step x call
  time / frames + decode per frame + once-per-video work / frames; the windows are the sampler's own
  (12 frames, overlap 3);
- a short real generation through the sampler (24 frames, 2 steps): its peak VRAM and measured time;
- compile time: first call minus a steady call (every block kind and size compiles on the first call).

SDPA is restricted to the flash / memory-efficient / cuDNN kernels on CUDA (a math fallback fails instead
of silently allocating the score matrix). Prints progress to stderr and one JSON line at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import numpy as np
import torch

from _models import build, random_
from bench_pipeline import _register_cpu_sdpa

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A800": 312.0,
               "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}
VERSIONS = {"v1": dict(size=512, cond=1, mode="v1-audio"), "v2": dict(size=768, cond=3, mode="v2-halfbody")}
MODES = {"normal": dict(steps=30, cfg=2.5), "acc": dict(steps=6, cfg=1.0)}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernels(device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION])


def timed(fn, device, repeat: int) -> tuple[float, list[float]]:
    """(first call, steady calls) in seconds."""
    out = []
    for _ in range(repeat + 1):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out[0], out[1:]


def flops_of(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def make_models(version: str, preset: str, device, dtype):
    from diffusers import AutoencoderKL

    from _official import SD_VAE_CONFIG
    from echomimic_lib.model_set import EchoMimicModels
    from echomimic_lib.modes import WEIGHT_SETS
    from echomimic_lib.tiny import TINY_VAE_CONFIG

    cfg, ref, den, enc = build(preset, VERSIONS[version]["cond"], device)
    with torch.device("meta"):
        vae = AutoencoderKL(**(SD_VAE_CONFIG if preset == "sd15" else TINY_VAE_CONFIG))
    ws = WEIGHT_SETS["v1_audio" if version == "v1" else "v2"]
    models = EchoMimicModels(cfg, ws, "normal", ref, den, enc, random_(vae, 5, device).eval())
    models.to(device, dtype)
    den.fuse_projections()
    return models


def apply_layout(models, channels_last: bool) -> None:
    models.denoiser.set_channels_last(channels_last)


def short_generation(models, version: str, size: int, device, frames: int = 24, steps: int = 2, variant: str = "normal",
                     fps: float = 24.0, windows_per_batch: int = 1) -> dict:
    """A real generation through the sampler (``variant='acc'``: cfg 1, the acc end-to-end figure): seconds,
    video frames per second, peak VRAM."""
    from echomimic_lib.audio import AudioFeatures
    from echomimic_lib.pipeline import FrameCondition, MaskCondition, Sampler, settings_for

    rows = int(np.ceil(frames * 50 / fps)) + 4
    audio = AudioFeatures(torch.randn(rows, 5, 384), rows * 320)
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    if version == "v1":
        cond = MaskCondition(np.pad(np.ones((size // 2, size // 2), np.float32), size // 4))
    else:
        cond = FrameCondition(frames, lambda idx: np.random.default_rng(len(idx)).integers(0, 255, (len(idx), size, size, 3), dtype=np.uint8))
    s = settings_for(VERSIONS[version]["mode"], variant, width=size, height=size, steps=steps, num_frames=frames, fps=fps,
                     windows_per_batch=windows_per_batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    Sampler(models)(image, audio, cond, s, frame_sink=lambda start, chunk: None)
    sync(device)
    seconds = time.perf_counter() - t
    out = {"frames": frames, "steps": steps, "cfg": s.cfg, "windows_per_batch": windows_per_batch, "fps_video": fps, "seconds": round(seconds, 3),
           "frames_per_s": round(frames / seconds, 2)}
    if device.type == "cuda":
        out["peak_vram_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    return out


@torch.no_grad()
def setup_version(version: str, args, device, dtype) -> dict:
    """Models, inputs and FLOP counts of one version (kept for every compile variant)."""
    from echomimic_lib.pipeline.context import base_windows

    size = VERSIONS[version]["size"] if not args.tiny else {"v1": 64, "v2": 96}[version]
    models = make_models(version, "tiny" if args.tiny else "sd15", device, dtype)
    apply_layout(models, args.channels_last)
    den, h = models.denoiser, size // 8
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, 4, 12, h, h, device=device, dtype=dtype, generator=g)
    audio = torch.randn(1, 12, 50, 384, device=device, dtype=dtype, generator=g)
    cond_in = torch.rand(1, VERSIONS[version]["cond"], 1 if version == "v1" else 12, size, size, device=device, dtype=dtype, generator=g)
    st = dict(version=version, size=size, models=models, device=device,
              ref_lat=torch.randn(1, 4, h, h, device=device, dtype=dtype, generator=g),
              img=torch.rand(1, 3, size, size, device=device, dtype=dtype, generator=g) * 2 - 1,
              z=torch.randn(8, 4, h, h, device=device, dtype=dtype, generator=g))
    cond = models.cond_encoder(cond_in)
    st["calls"] = {"cfg": lambda: den(torch.cat([x, x]), 801, audio=audio, cond=cond, reference=st["kv"], uncond_rows=1),
                   "single": lambda: den(x, 801, audio=audio, cond=cond, reference=st["kv"])}
    st["kv"] = den.prepare_reference(models.reference.forward_reference(st["ref_lat"])[0])
    with kernels(device):
        st["flops"] = {k: flops_of(fn) for k, fn in st["calls"].items()}
    once = flops_of(lambda: models.reference.forward_reference(st["ref_lat"])) + flops_of(lambda: models.vae.encode(st["img"]))
    windows = len(base_windows(args.frames, 12, 3))
    st["report"] = {"size": size, "flops_TF": {k: round(v / 1e12, 3) for k, v in st["flops"].items()},
                    "vae_decode_TF_per_frame": round(flops_of(lambda: models.vae.decode(st["z"][:1])) / 1e12, 3),
                    "once_per_video_TF": round(once / 1e12, 3), "windows_per_step": windows, "video_frames": args.frames}
    st["windows"] = windows
    return st


@torch.no_grad()
def measure(st: dict, variant: str, args, peak) -> dict:
    from echomimic_lib.models.unet.compile import compile_regions, uncompile_regions

    models, device, den = st["models"], st["device"], st["models"].denoiser
    uncompile_regions(den)
    if variant != "off":
        compile_regions(den, backend=args.compile_backend, mode="reduce-overhead" if "graphs" in variant else None)
    st["kv"] = den.prepare_reference(models.reference.forward_reference(st["ref_lat"])[0])  # join buffers follow compile
    res = {}
    with kernels(device):
        for k, fn in st["calls"].items():
            first, steady = timed(fn, device, args.repeat)
            t = statistics.median(steady)
            res[f"{k}_call_s"] = round(t, 4)
            res[f"{k}_first_call_s"] = round(first, 3)
            res[f"{k}_mfu"] = round(st["flops"][k] / t / (peak * 1e12), 3) if peak else None
        _, dec = timed(lambda: models.vae.decode(st["z"]), device, max(1, args.repeat // 2))
        _, once = timed(lambda: (models.reference.forward_reference(st["ref_lat"]), models.vae.encode(st["img"])), device, 1)
        res["compile_s"] = round(sum(res[f"{k}_first_call_s"] - res[f"{k}_call_s"] for k in st["calls"]), 2) if variant != "off" else 0.0
        per_dec, per_once = statistics.median(dec) / 8, statistics.median(once) / args.frames
        for mode, m in MODES.items():
            call = res["cfg_call_s" if m["cfg"] > 1 else "single_call_s"]
            res[f"{mode}_s_per_frame"] = round(m["steps"] * st["windows"] * call / args.frames + per_dec + per_once, 4)
        res["vae_decode_s_per_frame"] = round(per_dec, 4)
        res["short_generation"] = short_generation(models, st["version"], st["size"], device)
        if st["version"] == "v1" and args.e2e_frames:  # the acc goal: a 10-second clip at 25 fps, end to end
            short_generation(models, "v1", st["size"], device, frames=24, steps=1, variant="acc", fps=25.0)  # warm
            for wpb in (1, 4):  # 4 context windows per denoiser call: bigger batches, fewer launches (same video)
                res[f"acc_e2e_wpb{wpb}"] = short_generation(models, "v1", st["size"], device, frames=args.e2e_frames, steps=6,
                                                           variant="acc", fps=25.0, windows_per_batch=wpb)
    uncompile_regions(den)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"], help="default fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--tiny", action="store_true", help="tiny widths and sizes: checks the script (CPU)")
    ap.add_argument("--versions", default="v1,v2")
    ap.add_argument("--frames", type=int, default=120, help="video length the per-frame figures are for")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--cuda-graphs", action="store_true", help="also compile with CUDA graphs per region (experimental)")
    ap.add_argument("--channels-last", action="store_true", help="run the denoiser's convolutions channels-last")
    ap.add_argument("--compile-backend", default="inductor", help="aot_eager: trace only (a quick CPU check)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip remaining variants past this many seconds")
    ap.add_argument("--e2e-frames", type=int, default=250, help="V1 acc end-to-end clip (25 fps; 0: none)")
    ap.add_argument("--plan", default=None, help="version:variant pairs in order, e.g. v1:off,v1:on+cuda-graphs "
                    "(default: every version off, then on, then on+cuda-graphs with --cuda-graphs)")
    args = ap.parse_args()
    args.t0 = time.perf_counter()
    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    _register_cpu_sdpa()
    peak = peak_tflops(device, args.peak_tflops)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "dtype": str(dtype),
              "channels_last": args.channels_last,
              "peak_tflops": peak, "torch": torch.__version__, "tiny": args.tiny, "threads": torch.get_num_threads()}
    versions = args.versions.split(",")
    states = {v: setup_version(v, args, device, dtype) for v in versions}
    for v in versions:
        result[v] = states[v]["report"]
    variants = ["off"] + ([] if args.no_compile else ["on"]) + (["on+cuda-graphs"] if args.cuda_graphs else [])
    plan = [p.split(":") for p in args.plan.split(",")] if args.plan else [(v, var) for var in variants for v in versions]
    for v, variant in plan:  # by default every version without compile first: those figures always come back
        if time.perf_counter() - args.t0 > args.budget_s:
            result[v][f"compile_{variant}"] = "skipped (time budget)"
            continue
        log(f"{v} compile {variant} ...")
        try:
            result[v][f"compile_{variant}"] = res = measure(states[v], variant, args, peak)
        except Exception as exc:  # one variant failing (e.g. CUDA graphs) must not lose the others
            result[v][f"compile_{variant}"] = res = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        log(f"  {json.dumps(res)}")
        print(json.dumps({"partial": {v: {f"compile_{variant}": res}}}), flush=True)
    result["total_s"] = round(time.perf_counter() - args.t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
