"""Benchmark (issue 27): peak GPU memory of an EchoMimicV3 flash-pro shot, per stage.

    .venv/bin/python bench/bench_vram_v3.py --size 768 --frames 81 --dtype bf16 --json
    .venv/bin/python bench/bench_vram_v3.py --goals        # the issue's goal: <= 12 GB at 768x768, 81 frames
    .venv/bin/python bench/bench_vram_v3.py --fp8 --json   # the blocks' weights in fp8 (--fp8, the Loader's fp8 switch)

Full-size networks (Wan2.1-Fun 1.3B-InP DiT + flash-pro audio modules, diffusers' Wan 2.1 VAE,
chinese-wav2vec2-base) built on a fake CUDA device under ``FakeTensorMode``; the real pipeline code runs
(``echomimic_lib.pipeline.wan``): condition encode, one sampling step with audio CFG (two transformer
calls; every step holds the same tensors), decode. The text encoder (umT5-xxl) and the CLIP image encoder
stay off the GPU (their outputs are inputs: prompt embeddings, CLIP features). Only the network a stage
needs is counted as resident (load / offload between stages, as ComfyUI's memory manager does). On a GPU
(``--device cuda``) the same run measures ``torch.cuda.max_memory_allocated`` per stage with random weights.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vram import _default_dtype  # noqa: E402  (the V1/V2 meter's default-dtype context)
from echomimic_lib.memory.estimate import weight_bytes  # noqa: E402
from echomimic_lib.memory.tracker import VramTracker, gpu_attention  # noqa: E402
from echomimic_lib.models.wan import AudioProjConfig, WanV3Config, WanV3Transformer  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
GB = 1e9
GOAL = ("V3 flash-pro 768x768, 81 frames, bf16, text encoder off the GPU", 12.0)
TINY = WanV3Config(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32,
                   audio=AudioProjConfig(blocks=3, channels=32, intermediate_dim=32, output_dim=64, context_tokens=4))


def _plain_steps(make_scheduler):
    """The real scheduler (its timesteps), with ``step`` a plain update of the same size: for the fake device."""
    from types import SimpleNamespace

    def make(*args, **kwargs):
        sched = make_scheduler(*args, **kwargs)
        sched.step = lambda out, t, sample, **kw: SimpleNamespace(prev_sample=sample - out.to(sample.dtype))
        return sched

    return make


def run(args) -> dict:
    from diffusers import AutoencoderKLWan

    from echomimic_lib.pipeline.wan import sampler as v3

    fake = args.device == "fake"
    mode = contextlib.nullcontext()
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        mode = FakeTensorMode(allow_non_fake_inputs=True)
    cfg = WanV3Config() if args.preset == "full" else TINY
    dtype = DTYPES[args.dtype]
    with mode, torch.device("cuda"), _default_dtype(dtype):
        model = WanV3Transformer(cfg).eval()
        vae = AutoencoderKLWan(base_dim=96 if args.preset == "full" else 4).eval()
        if args.vae_tiling:  # diffusers' spatial tiling of the Wan VAE (256-px tiles, 64-px overlap)
            vae.enable_tiling()
        if args.fp8:
            from echomimic_lib.models.wan import transformer_to_fp8

            transformer_to_fp8(model)
    nets = {"transformer": model, "vae": vae}
    h = w = args.size
    t_lat = v3.check_frames(args.frames)
    stages, peak = {}, 0
    tracker = VramTracker("cuda", ignore=[t for m in nets.values() for t in list(m.parameters()) + list(m.buffers())]) \
        if fake else None

    def stage(name, resident, fn):
        nonlocal peak
        if fake:
            tracker.set_stage(name)
            tracker.set_resident(sum(weight_bytes(nets[n]) for n in resident))
            fn()
            stages[name] = tracker.stage_peaks[name]
        else:  # only the stage's network on the GPU, as the placement / ComfyUI's manager does
            for n, m in nets.items():
                m.to("cuda" if n in resident else "cpu")
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            stages[name] = torch.cuda.max_memory_allocated()
        peak = max(peak, stages[name])

    state = {}
    with mode, (tracker or contextlib.nullcontext()), gpu_attention(), torch.no_grad():
        def encode():
            video = torch.zeros(1, 3, args.frames, h, w, device="cuda", dtype=dtype)
            state["y"] = torch.cat([torch.zeros(1, 4, t_lat, h // 8, w // 8, device="cuda", dtype=dtype),
                                    vae.encode(video).latent_dist.mode()], dim=1)

        def denoise():
            s = v3.V3Settings(steps=1, teacache="off")
            windows = torch.zeros(1, args.frames, 5, cfg.audio.blocks, cfg.audio.channels, device="cuda", dtype=dtype)
            real = v3.flow_unipc
            if fake:  # diffusers < 0.38's UniPC step makes a tensor of 0-d tensors, which FakeTensorMode refuses; its
                v3.flow_unipc = _plain_steps(real)  # memory is one latent: a plain update stands in for it
            try:
                state["lat"], _ = v3.sample_latents(model, state["y"], torch.zeros(1, 64, cfg.text_dim, device="cuda"),
                                                    torch.zeros(1, 257, cfg.clip_dim, device="cuda"), windows, s,
                                                    noise=torch.zeros(1, 16, t_lat, h // 8, w // 8, device="cuda"))
            finally:
                v3.flow_unipc = real

        def decode():
            vae.decode(state["lat"].to(dtype)).sample.clamp(-1, 1)

        stage("vae_encode", ["vae"], encode)
        stage("denoise", ["transformer"], denoise)
        stage("decode", ["vae"], decode)
    return {"size": args.size, "frames": args.frames, "dtype": args.dtype, "fp8": bool(args.fp8), "vae_tiling": bool(args.vae_tiling), "preset": args.preset,
            "device": args.device,
            "peak_gb": round(peak / GB, 3), "stages": {k: round(v / GB, 3) for k, v in stages.items()},
            "weights_gb": {k: round(weight_bytes(m) / GB, 3) for k, m in nets.items()},
            "off_gpu": ["umT5-xxl text encoder", "CLIP ViT-H/14 image encoder", "wav2vec2 (CPU, 0.38 GB fp32)"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--preset", choices=["full", "tiny"], default="full")
    p.add_argument("--device", choices=["cuda", "fake"], default="cuda" if torch.cuda.is_available() else "fake")
    p.add_argument("--fp8", action="store_true", help="the transformer blocks' weights stored in fp8 (e4m3fn)")
    p.add_argument("--vae-tiling", action="store_true", help="the VAE encodes and decodes in overlapping 256-px tiles")
    p.add_argument("--goals", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    res = run(args)
    print(f"V3 flash-pro {res['size']} px {res['dtype']}{' fp8 weights' if res['fp8'] else ''} {res['frames']} frames on "
          f"{res['device']}: peak {res['peak_gb']} GB (transformer weights {res['weights_gb']['transformer']} GB)")
    for k, v in res["stages"].items():
        print(f"  {k:12s} {v:7.3f} GB")
    if args.goals:
        ok = res["peak_gb"] <= GOAL[1]
        print(f"{'ok  ' if ok else 'FAIL'} {GOAL[0]}: {res['peak_gb']} GB (<= {GOAL[1]})")
        res["goal_ok"] = ok
    if args.json:
        print(json.dumps(res))
    return 0 if res.get("goal_ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
