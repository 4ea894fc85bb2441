"""Benchmark (issues 16, 23): every GPU figure of the denoiser in one short run, variant by variant.

    .venv/bin/python bench/gpu_suite.py                        # CUDA: V1 512 px and V2 768 px, fp16, off and on
    .venv/bin/python bench/gpu_suite.py --plan v1:off+graphs,v1:on+graphs,v1:on+graphs+cl+cudnn
    .venv/bin/python bench/gpu_suite.py --device cpu --tiny    # the same script at a tiny size (a check)

A variant is a base and "+"-separated modifiers, run in the order ``--plan`` gives (``version:variant``, comma
separated; default: every version ``off``, then ``on``, plus ``off+graphs`` / ``on+graphs`` with ``--cuda-graphs``):

- ``off``: eager; ``on``: regional ``torch.compile`` of the denoiser's ResNet blocks, spatial transformers and
  motion modules (``compile_regions``, mode None);
- ``graphs``: the whole denoiser call replayed as one CUDA graph (``CudaGraphRunner``, one per variant: the first
  call of a shape runs eagerly, the second captures, the timed calls replay), and ``cuda_graphs=True`` in the
  sampler settings of the generations below. Needs CUDA: reported as skipped elsewhere;
- ``cl``: the denoiser's convolutions channels-last; ``cudnn``: ``torch.backends.cudnn.benchmark`` on;
  ``vae``: ``compile_regions`` on the VAE decoder too (the decode figure and the generations); ``vae-cl``: the VAE
  channels-last; ``attn-flash`` / ``attn-cudnn`` / ``attn-efficient``: the denoiser's attention backend
  ``sdpa-flash`` / ``sdpa-cudnn`` / ``sdpa-efficient`` (that SDPA kernel first; ``bench/gpu_attention.py`` times
  the kernels alone);
- ``prof``: as the variant's last step, ``torch.profiler`` over two calls of each shape (``bench/_kernel_share.py``):
  the GPU's kernel time per call beside the wall time, kernels per call, the share of GEMM / convolution / attention
  / norm / fused / copies, the heaviest kernels (``<shape>_profile``; with ``graphs`` also the eager call,
  ``<shape>_profile_eager``: its wall minus busy time is what the graphs remove);
- ``region-graphs`` (alias ``cuda-graphs``, with ``on`` only): compile mode "reduce-overhead" per region. Known to
  fail (H200, 2026-12-04): "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run":
  blocks of one kind share one graph and the UNet's skip connections still hold an earlier replay's output.
Every setting is put back after its variant.

Per version (V1 512 px face locator, V2 768 px pose encoder, official-size random weights) and variant:
- denoiser call time for the CFG batch (normal: 30 steps, cfg 2.5), the single batch (acc: 6 steps, cfg 1) and,
  where the acc clip runs, 4 windows per call (``single_x4``); FLOPs (``FlopCounterMode``) and MFU against the
  GPU's dense fp16/bf16 peak (a table by device name, or ``--peak-tflops``);
- first-call overhead per batch shape (``compile_s_per_shape``: first call minus a steady one, plus the capture
  call's excess with graphs), its maximum (``compile_s_max_per_shape``: one generation uses one shape) and total;
- VAE decode per frame (8 frames per call; without ``vae`` / ``vae-cl`` also with the VAE channels-last beside it,
  ``vae_decode_cl_s_per_frame``), reference pass + encode (once per video); seconds per video frame for
  a ``--frames`` long video from the call times and the sampler's own windows (12 frames, overlap 3);
- V1 only: the acc clip end to end through the sampler (``--e2e-frames`` at 25 fps, 6 steps, 2 with ``--tiny``, no CFG) at 1 and 4
  windows per call, each after a short warm-up generation of the same shapes; then a short normal generation
  (24 frames, 2 steps; 12 with ``--tiny``): seconds, frames/s, peak VRAM.
The most decision-relevant figures of a variant come first, and each is printed as a ``{"partial": ...}`` JSON
line as soon as it is measured, so a run cut short keeps them; one JSON line with everything at the end.
SDPA is restricted to the flash / memory-efficient / cuDNN kernels on CUDA (no silent math fallback).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time

import numpy as np
import torch

from _gpu_timing import PEAK_TFLOPS, flops_of, kernels, log, peak_tflops, run_header, sync, timed  # noqa: F401 (PEAK_TFLOPS, peak_tflops: tests)
from _kernel_share import kernel_share
from _models import build, random_
from _suite_plan import MODIFIERS, VERSIONS, Variant, parse_plan, parse_variant  # noqa: F401 (parse_variant: tests)
from bench_pipeline import _register_cpu_sdpa  # noqa: F401 (tests register it through this module)

MODES = {"normal": dict(steps=30, cfg=2.5), "acc": dict(steps=6, cfg=1.0)}


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


def short_generation(models, version: str, size: int, device, frames: int = 24, steps: int = 2, variant: str = "normal",
                     fps: float = 24.0, windows_per_batch: int = 1, cuda_graphs: bool = False) -> dict:
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
                     windows_per_batch=windows_per_batch, cuda_graphs=cuda_graphs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    res = Sampler(models)(image, audio, cond, s, frame_sink=lambda start, chunk: None)
    sync(device)
    seconds = time.perf_counter() - t
    out = {"frames": frames, "steps": steps, "cfg": s.cfg, "windows_per_batch": windows_per_batch, "fps_video": fps,
           "unet_calls": res.unet_calls, "seconds": round(seconds, 3), "frames_per_s": round(frames / seconds, 2)}
    if device.type == "cuda":
        out["peak_vram_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    return out


@torch.no_grad()
def setup_version(version: str, args, device, dtype) -> dict:
    """Models, call inputs and FLOP counts of one version (kept for every variant)."""
    from echomimic_lib.pipeline.context import base_windows

    t0 = time.perf_counter()
    size = VERSIONS[version]["size"] if not args.tiny else {"v1": 64, "v2": 96}[version]
    models = make_models(version, "tiny" if args.tiny else "sd15", device, dtype)
    den, h = models.denoiser, size // 8
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, 4, 12, h, h, device=device, dtype=dtype, generator=g)
    audio = torch.randn(1, 12, 50, 384, device=device, dtype=dtype, generator=g)
    cond_in = torch.rand(1, VERSIONS[version]["cond"], 1 if version == "v1" else 12, size, size, device=device, dtype=dtype, generator=g)
    st = dict(version=version, size=size, models=models, device=device, e2e=version == "v1" and args.e2e_frames > 0,
              ref_lat=torch.randn(1, 4, h, h, device=device, dtype=dtype, generator=g),
              img=torch.rand(1, 3, size, size, device=device, dtype=dtype, generator=g) * 2 - 1,
              z=torch.randn(8, 4, h, h, device=device, dtype=dtype, generator=g))
    cond = models.cond_encoder(cond_in)
    st["inputs"] = {"cfg": dict(sample=torch.cat([x, x]), timestep=801, audio=audio, cond=cond, uncond_rows=1),
                    "single": dict(sample=x, timestep=801, audio=audio, cond=cond)}
    if st["e2e"]:  # 4 windows per call, as the sampler batches them (windows_per_batch=4)
        st["inputs"]["single_x4"] = dict(sample=torch.cat([x] * 4), timestep=801, audio=torch.cat([audio] * 4),
                                         cond=cond.expand(4, *cond.shape[1:]))
    st["kv"] = den.prepare_reference(models.reference.forward_reference(st["ref_lat"])[0])
    with kernels(device):
        st["flops"] = {k: flops_of(lambda: call(st, k, den)) for k in st["inputs"]}
    once = flops_of(lambda: models.reference.forward_reference(st["ref_lat"])) + flops_of(lambda: models.vae.encode(st["img"]))
    st["windows"] = len(base_windows(args.frames, 12, 3))
    st["report"] = {"size": size, "flops_TF": {k: round(v / 1e12, 3) for k, v in st["flops"].items()},
                    "vae_decode_TF_per_frame": round(flops_of(lambda: models.vae.decode(st["z"][:1])) / 1e12, 3),
                    "once_per_video_TF": round(once / 1e12, 3), "windows_per_step": st["windows"], "video_frames": args.frames,
                    "setup_s": round(time.perf_counter() - t0, 1)}
    return st


def call(st: dict, key: str, fn):
    """One denoiser call of batch shape ``key`` through ``fn`` (the denoiser or its graph runner)."""
    return fn(reference=st["kv"], **st["inputs"][key])


def configure(stack: contextlib.ExitStack, var: Variant, models, args) -> None:
    """Apply a variant's settings; ``stack`` puts each back (in reverse order) when the variant ends."""
    from echomimic_lib.models.unet.compile import compile_regions, uncompile_regions

    den = models.denoiser
    if var.cudnn:
        stack.callback(setattr, torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
        torch.backends.cudnn.benchmark = True
    if var.channels_last:
        stack.callback(den.set_channels_last, den.channels_last)
        den.set_channels_last(True)
    if var.vae_cl:
        stack.callback(models.vae.to, memory_format=torch.contiguous_format)
        models.vae.to(memory_format=torch.channels_last)
    if var.attention:
        from echomimic_lib.models.unet.attention import Attention

        stack.callback(den.set_attention_backend, next(m.backend for m in den.modules() if isinstance(m, Attention)))
        den.set_attention_backend(var.attention)
    uncompile_regions(den)
    stack.callback(uncompile_regions, den)
    if var.compile:
        compile_regions(den, backend=args.compile_backend, mode="reduce-overhead" if var.region_graphs else None)
    if var.vae:
        stack.callback(uncompile_regions, models.vae.decoder)
        compile_regions(models.vae.decoder, backend=args.compile_backend)


def time_call(st: dict, key: str, runner, args, peak, res: dict) -> None:
    """Steady call time, first-call overhead and MFU of one batch shape (with graphs: through the runner, whose
    second call captures; the replay is checked against the eager call)."""
    den, device = st["models"].denoiser, st["device"]
    fn = runner if runner is not None else den
    warm = 2 if runner is not None else 1
    times = timed(lambda: call(st, key, fn), device, warm + args.repeat)
    t = statistics.median(times[warm:])
    res[f"{key}_call_s"] = round(t, 4)
    res[f"{key}_first_call_s"] = round(times[0], 3)
    res[f"{key}_mfu"] = round(st["flops"][key] / t / (peak * 1e12), 3) if peak else None
    overhead = sum(max(0.0, x - t) for x in times[:warm])
    res.setdefault("compile_s_per_shape", {})[key] = round(overhead, 2)
    if runner is not None:
        res[f"{key}_capture_call_s"] = round(times[1], 3)
        replay, eager = call(st, key, runner), call(st, key, den)
        res[f"{key}_graph_max_abs_vs_eager"] = float((replay.float() - eager.float()).abs().max())
        res["graphs"] = dict(captures=runner.captures, replays=runner.replays, failed=runner.failed)  # failed: eager times


def profile_calls(st: dict, runner, res: dict) -> None:
    """The kernel share of every call shape timed so far (replayed, and eager beside it with graphs). The variant's
    last step: no graph is captured after the profiler has run, and a profiler that fails loses nothing else. No
    warm-up call: time_call has just run each shape through both (the runner, then the eager call it checks against)."""
    den = st["models"].denoiser
    for key in [k for k in st["inputs"] if f"{k}_call_s" in res]:
        for name, fn in [("profile", runner or den)] + ([("profile_eager", den)] if runner is not None else []):
            try:
                res[f"{key}_{name}"] = kernel_share(lambda fn=fn: call(st, key, fn), st["device"], warm=False)
            except Exception as exc:  # noqa: BLE001 - reported in the figures
                res[f"{key}_{name}"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def e2e(st: dict, wpb: int, var: Variant, args) -> dict:
    """The V1 acc clip end to end at ``wpb`` windows per call, after a warm-up generation with the same call
    and decode shapes (a warm-up that compiles reports it in ``warm_s``): more than ``wpb`` full 12-frame windows
    (the sampler pads the last group to ``wpb`` only then), the clip's last decode chunk (8 frames per call)."""
    gen = dict(variant="acc", fps=25.0, windows_per_batch=wpb, cuda_graphs=var.graphs)
    frames = max(24, 9 * wpb + 1)  # windows start every 9 frames (12, overlap 3)
    frames += (args.e2e_frames - frames) % 8
    warm_steps = 1
    if args.e2e_frames <= frames:  # a clip that short (the CPU check's): its own shapes, warmed by its own length (two
        frames, warm_steps = args.e2e_frames, 2  # steps: with graphs, one window's second call is the capture)
    warm = short_generation(st["models"], "v1", st["size"], st["device"], frames=frames, steps=warm_steps, **gen)
    out = short_generation(st["models"], "v1", st["size"], st["device"], frames=args.e2e_frames, steps=2 if args.tiny else 6,
                           **gen)  # --tiny checks the script: 2 steps (the step loop) instead of the acc variant's 6
    out["warm_s"] = warm["seconds"]
    return out


def decode_times(st: dict, args) -> tuple[float, float]:
    """The VAE decode of 8 frames: (first call, steady call) in seconds."""
    dec = timed(lambda: st["models"].vae.decode(st["z"]), st["device"], 1 + max(1, args.repeat // 2))
    return dec[0], statistics.median(dec[1:])


def decode_channels_last(st: dict, args) -> float:
    """Seconds per frame of the VAE decode (8 frames per call) with the VAE channels-last, then put back."""
    vae = st["models"].vae
    vae.to(memory_format=torch.channels_last)
    try:
        return round(decode_times(st, args)[1] / 8, 4)
    finally:
        vae.to(memory_format=torch.contiguous_format)


def summarize(st: dict, res: dict, args) -> None:
    """Derived figures from what is measured so far: seconds per video frame, compile time per shape."""
    per = res.get("vae_decode_s_per_frame", 0.0) + res.get("once_s", 0.0) / args.frames
    for mode, m in MODES.items():
        key = "cfg" if m["cfg"] > 1 else "single"
        if f"{key}_call_s" in res:
            res[f"{mode}_s_per_frame"] = round(m["steps"] * st["windows"] * res[f"{key}_call_s"] / args.frames + per, 4)
    if "single_x4_call_s" in res:
        calls = -(-st["windows"] // 4)
        res["acc_wpb4_s_per_frame"] = round(MODES["acc"]["steps"] * calls * res["single_x4_call_s"] / args.frames + per, 4)
    shapes = res.get("compile_s_per_shape", {})
    if shapes:
        res["compile_s_max_per_shape"] = max(shapes.values())
        res["compile_s"] = round(sum(shapes.values()), 2)


@torch.no_grad()
def measure(st: dict, var: Variant, args, peak, res: dict, emit) -> None:
    """Fill ``res`` with one variant's figures, most decision-relevant first; ``emit()`` after each."""
    models, device, den = st["models"], st["device"], st["models"].denoiser
    with contextlib.ExitStack() as stack:
        stack.enter_context(kernels(device))
        configure(stack, var, models, args)
        st["kv"] = den.prepare_reference(models.reference.forward_reference(st["ref_lat"])[0])  # join buffers follow compile
        runner = None
        if var.graphs:
            from echomimic_lib.models.unet.graphs import CudaGraphRunner

            runner = stack.enter_context(CudaGraphRunner(den))
        first, steady = decode_times(st, args)
        res["vae_decode_s_per_frame"] = round(steady / 8, 4)
        if var.vae:
            res["vae_compile_s"] = round(max(0.0, first - steady), 2)
        elif not var.vae_cl:  # the decode side by side with the VAE channels-last (a few seconds of the budget)
            res["vae_decode_cl_s_per_frame"] = decode_channels_last(st, args)
        res["once_s"] = round(timed(lambda: (models.reference.forward_reference(st["ref_lat"]), models.vae.encode(st["img"])), device, 2)[1], 4)
        steps = [("single", lambda: time_call(st, "single", runner, args, peak, res))]
        if st["e2e"]:  # the acc goal: a 10-second clip at 25 fps, 1 and 4 context windows per denoiser call
            steps += [("acc_e2e_wpb1", lambda: res.__setitem__("acc_e2e_wpb1", e2e(st, 1, var, args))),
                      ("single_x4", lambda: time_call(st, "single_x4", runner, args, peak, res)),
                      ("acc_e2e_wpb4", lambda: res.__setitem__("acc_e2e_wpb4", e2e(st, 4, var, args)))]
        steps += [("cfg", lambda: time_call(st, "cfg", runner, args, peak, res)),
                  ("short_generation", lambda: res.__setitem__("short_generation", short_generation(
                      models, st["version"], st["size"], device, frames=12 if args.tiny else 24, cuda_graphs=var.graphs)))]
        if var.profile:
            steps.append(("profile", lambda: profile_calls(st, runner, res)))
        for name, run in steps:
            log(f"  {st['version']} {var.name}: {name} ...")
            run()
            summarize(st, res, args)
            emit()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"], help="default fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--tiny", action="store_true", help="tiny widths and sizes: checks the script (CPU)")
    ap.add_argument("--versions", default="v1,v2", help="versions of the default plan")
    ap.add_argument("--frames", type=int, default=120, help="video length the per-frame figures are for")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="default plan without the on variants")
    ap.add_argument("--cuda-graphs", action="store_true", help="default plan with off+graphs and on+graphs too")
    ap.add_argument("--compile-backend", default="inductor", help="aot_eager: trace only (a quick CPU check)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip the variants that would start past this many seconds")
    ap.add_argument("--e2e-frames", type=int, default=250, help="V1 acc end-to-end clip (25 fps; 0: none)")
    ap.add_argument("--plan", default=None, help="version:variant pairs in order, e.g. v1:off+graphs,v1:on+graphs+cl+cudnn "
                    f"(variant: off or on, then any of +{', +'.join(MODIFIERS)})")
    args = ap.parse_args()
    args.t0 = time.perf_counter()
    try:
        plan = parse_plan(args.plan, args.versions.split(","), args.no_compile, args.cuda_graphs)
    except ValueError as exc:
        ap.error(str(exc))
    device, dtype, peak, result = run_header(args, "fp16")
    result.update(plan=[f"{v}:{var.name}" for v, var in plan], inductor_cache=os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
    states = {}
    for v, var in plan:
        key = f"compile_{var.name}"
        if var.needs_cuda and device.type != "cuda":
            result.setdefault(v, {})[key] = "skipped (needs CUDA: CUDA graphs)"
            continue
        if time.perf_counter() - args.t0 > args.budget_s:
            result.setdefault(v, {})[key] = "skipped (time budget)"
            continue
        if v not in states:  # a version is set up when the plan first needs it
            log(f"{v} setup ...")
            states[v] = setup_version(v, args, device, dtype)
            result[v] = {**states[v]["report"], **result.get(v, {})}
            print(json.dumps({"partial": {v: {"setup": states[v]["report"]}}}), flush=True)
        log(f"{v} {var.name} ...")
        res = result[v][key] = {}
        emit = lambda: print(json.dumps({"partial": {v: {key: res}}}), flush=True)  # noqa: E731
        try:
            measure(states[v], var, args, peak, res, emit)
        except Exception as exc:  # one variant failing must not lose the others (nor its own figures so far)
            res["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            emit()
        log(f"  {json.dumps(res)}")
    result["total_s"] = round(time.perf_counter() - args.t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
