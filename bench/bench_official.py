"""Benchmark (issue 16): the project side by side with the official EchoMimic V1 code.

    git clone https://github.com/BadToBest/EchoMimic /tmp/echomimic        # never committed
    .venv/bin/python bench/bench_official.py --official /tmp/echomimic --what unet      # one denoiser call
    .venv/bin/python bench/bench_official.py --official /tmp/echomimic --what pipeline  # whole generation
    .venv/bin/python bench/bench_official.py --official /tmp/echomimic --what stages    # ours, per stage
    .venv/bin/python bench/bench_official.py --official /tmp/echomimic --what load      # model-set load, cold/warm
    .venv/bin/python bench/bench_official.py --official /tmp/echomimic --what memory    # peak RSS of a generation

Both sides get the same full-size random V1 audio weights (written once to ``--models``, ~12 GB, in the
official file layout, fp32 .pth like the release), the same inputs (reference image, face mask, seed,
per-frame whisper chunks), fp32, ``--threads`` CPU threads (default 2). The official code runs as
published on the installed diffusers; ``_official.py`` lists the few import shims it needs.

- ``unet``: one denoiser call (default 128 px, 12 frames, CFG batch) of each side, sharing one copy of the
  weights in one process, in interleaved pairs (the order alternates); CPU time (process_time) and wall.
- ``pipeline``: a whole generation (128 px, 24 frames, CFG 2.5, 2 steps: 3 windows per step, per-frame
  decode on the official side, the project's defaults on ours), interleaved pairs; max abs difference
  of the videos.
- ``load``: a child process per side and run loads its model set the way it ships (ours: ``load_models``;
  official: the model initialisation of ``infer_audio2vid.py``, which also reads the SD1.5 base UNet
  twice), cold (the files are evicted from the page cache first, ``posix_fadvise(DONTNEED)``) and warm.
- ``stages``: one generation of ours (the ``pipeline`` settings) with CPU time, wall time, system time and
  page faults around each stage: reference encode, reference pass + K/V, every denoiser call, decode.
- ``memory``: a child per side loads and runs one generation: peak RSS of the generation (``VmHWM`` reset
  after loading) and of the whole process. Run with nothing else heavy on the machine (~10-15 GB).

Prints one JSON object; ratios are ours / official. Each side's own work is timed: no whisper, no face
detection, no video writing (neither side's).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _official  # noqa: E402
from _models import ROOT, proc_status, reset_peak_rss  # noqa: E402

SEED = 420


def _evict(root: Path) -> None:
    """Drop the weight files from the page cache (a cold start) without root rights."""
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _inputs(size: int, frames: int):
    from echomimic_lib.audio import AudioFeatures

    rows = int(np.ceil(frames * 50 / 24)) + 4
    audio = AudioFeatures(torch.randn(rows, 5, 384, generator=torch.Generator().manual_seed(0)), rows * 320)
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.float32)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    return audio, image, mask


def _ours_models(root: Path):
    from echomimic_lib.model_set import load_models

    return load_models(root, "v1_audio", "normal", with_audio=False)


def _official_sharing(off, models):
    from echomimic_lib.config import SD15_UNET_CONFIG, inference_config_dict

    add = inference_config_dict(models.config)["unet_additional_kwargs"]
    models.denoiser.fuse_projections()  # before sharing, so both sides use the same tensors
    return _official.build_sharing(off, SD15_UNET_CONFIG, add, models.reference.state_dict(), models.denoiser.state_dict(),
                                   models.cond_encoder.state_dict())


def _run_ours(models, audio, image, mask, size, frames, steps, cfg):
    from echomimic_lib.pipeline import MaskCondition, Sampler, settings_for

    s = settings_for("v1-audio", "normal", width=size, height=size, steps=steps, cfg=cfg, num_frames=frames, seed=SEED)
    return Sampler(models)(image, audio, MaskCondition(mask), s).frames  # (F, H, W, 3)


def _run_official(off, vae, ref, den, loc, audio, image, mask, size, frames, steps, cfg):
    from PIL import Image

    from echomimic_lib.config import SCHEDULER_KWARGS

    chunks = audio.chunks(0, frames, 24).numpy()
    pipe = _official.make_pipeline(off, vae, ref, den, loc, chunks, SCHEDULER_KWARGS)
    video = pipe(Image.fromarray(image), None, torch.from_numpy(mask)[None, None, None], size, size, frames, steps, cfg,
                 generator=torch.manual_seed(SEED), context_frames=12, context_overlap=3, fps=24).videos
    return video[0].permute(1, 2, 3, 0)  # (F, H, W, 3)


def _timed(fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - w


def _pairs(fns: dict, repeat: int) -> dict:
    """Interleaved runs (the order alternates each pair); per side cpu/wall lists and the pair ratios."""
    res = {k: {"cpu": [], "wall": []} for k in fns}
    outs = {}
    for r in range(repeat):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in order:
            outs[k], c, w = _timed(fns[k])
            res[k]["cpu"].append(round(c, 2))
            res[k]["wall"].append(round(w, 2))
        print(f"  pair {r}: " + ", ".join(f"{k} cpu {res[k]['cpu'][-1]} s" for k in fns), file=sys.stderr, flush=True)
    ratios = [o / f for o, f in zip(res["ours"]["cpu"], res["official"]["cpu"])]
    wall = [o / f for o, f in zip(res["ours"]["wall"], res["official"]["wall"])]
    res["cpu_ratio_pairs"] = [round(x, 3) for x in ratios]
    res["cpu_ratio_median"] = round(statistics.median(ratios), 3)
    res["wall_ratio_median"] = round(statistics.median(wall), 3)
    return res, outs


def part_unet(args, off) -> dict:
    models = _ours_models(args.models)
    oref, oden, oloc = _official_sharing(off, models)
    h = args.size // 8
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, args.unet_frames, h, h, generator=g)
    a = torch.randn(1, args.unet_frames, 50, 384, generator=g)
    rl = torch.randn(1, 4, h, h, generator=g)
    mask = torch.zeros(1, 1, 1, args.size, args.size)
    mask[..., args.size // 4 : 3 * args.size // 4, args.size // 4 : 3 * args.size // 4] = 1
    den, t = models.denoiser, 966
    with torch.no_grad():
        feat = models.cond_encoder(mask)
        kv = den.prepare_reference(models.reference.forward_reference(rl)[0])
        official, _ = _official.denoiser_call(off, oref, oden, rl, x, a, oloc(mask), t)
        fns = {"ours": lambda: den(torch.cat([x, x]), t, audio=a, cond=feat, reference=kv, uncond_rows=1),
               "official": official}
        fns["ours"](), fns["official"]()  # warm-up
        res, outs = _pairs(fns, args.repeat)
    res["max_abs_diff"] = float((outs["ours"] - outs["official"]).abs().max())
    res["settings"] = {"size": args.size, "frames": args.unet_frames, "batch": "CFG (uncond + cond)", "timestep": t}
    return res


def part_pipeline(args, off) -> dict:
    models = _ours_models(args.models)
    oref, oden, oloc = _official_sharing(off, models)
    audio, image, mask = _inputs(args.size, args.frames)
    run = dict(size=args.size, frames=args.frames, steps=args.steps, cfg=args.cfg)
    fns = {"ours": lambda: _run_ours(models, audio, image, mask, **run),
           "official": lambda: _run_official(off, models.vae, oref, oden, oloc, audio, image, mask, **run)}
    res, outs = _pairs(fns, args.repeat)
    res["video_max_abs_diff"] = float((outs["ours"].float() - outs["official"].float()).abs().max())
    res["video_mean"] = float(outs["official"].float().mean())
    res["settings"] = {**run, "context": "12 frames, overlap 3", "ours": "library defaults (decode 8 frames per VAE call)",
                       "official": "Audio2VideoPipeline (per-frame decode)"}
    return res


def part_stages(args) -> dict:
    import resource

    from echomimic_lib.pipeline import sampler as sm

    models = _ours_models(args.models)
    audio, image, mask = _inputs(args.size, args.frames)
    log = []

    def timed(name, fn):
        def wrapper(*a, **k):
            r0, c0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
            out = fn(*a, **k)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            log.append({"stage": name, "cpu": round(time.process_time() - c0, 2), "wall": round(time.perf_counter() - w0, 2),
                        "sys": round(r1.ru_stime - r0.ru_stime, 2), "faults": r1.ru_minflt - r0.ru_minflt})
            return out
        return wrapper

    den = models.denoiser
    den.forward = timed("denoiser call", den.forward)  # an instance attribute: nn.Module.__call__ finds it
    saved = {name: getattr(sm.Sampler, name) for name in ("encode_reference", "reference_kv", "decode")}
    try:
        for name, fn in saved.items():
            setattr(sm.Sampler, name, timed(name, fn))
        _, c, w = _timed(lambda: _run_ours(models, audio, image, mask, args.size, args.frames, args.steps, args.cfg))
    finally:
        for name, fn in saved.items():
            setattr(sm.Sampler, name, fn)
        del den.forward
    return {"generation_cpu_s": round(c, 2), "generation_wall_s": round(w, 2),
            "stages_cpu_s": round(sum(x["cpu"] for x in log), 2), "stages": log}


CHILD = {"load", "generate"}


def child(args) -> dict:
    """One side, in its own process: load (cold if asked), then optionally one generation."""
    out = {"side": args.side, "cold": args.cold}
    if args.cold:
        _evict(args.models)
    t0c, t0 = time.process_time(), time.perf_counter()
    if args.side == "ours":
        models = _ours_models(args.models)
    else:
        off = _official.import_official(args.official)
        from echomimic_lib.config import SD15, inference_config_dict

        add = inference_config_dict(SD15)["unet_additional_kwargs"]
        vae, ref, den, loc = _official.load_like_infer_script(off, args.models / "v1", args.models / "sd-vae-ft-mse",
                                                              args.models / "sd-image-variations-diffusers", add)
    out["load_wall_s"] = round(time.perf_counter() - t0, 2)
    out["load_cpu_s"] = round(time.process_time() - t0c, 2)
    out["rss_after_load_gb"] = round(proc_status("VmRSS") / 1e9, 3)
    out["peak_rss_load_gb"] = round(proc_status("VmHWM") / 1e9, 3)
    if args.child == "generate":
        audio, image, mask = _inputs(args.size, args.frames)
        run = dict(size=args.size, frames=args.frames, steps=args.steps, cfg=args.cfg)
        reset_peak_rss()
        base = proc_status("VmRSS")
        if args.side == "ours":
            _, c, w = _timed(lambda: _run_ours(models, audio, image, mask, **run))
        else:
            _, c, w = _timed(lambda: _run_official(off, vae, ref, den, loc, audio, image, mask, **run))
        out.update(generate_cpu_s=round(c, 2), generate_wall_s=round(w, 2),
                   peak_rss_generation_gb=round(proc_status("VmHWM") / 1e9, 3),
                   peak_above_loaded_gb=round((proc_status("VmHWM") - base) / 1e9, 3))
    return out


def _spawn(args, what: str, side: str, cold: bool) -> dict:
    cmd = [sys.executable, __file__, "--official", str(args.official), "--models", str(args.models), "--child", what,
           "--side", side, "--threads", str(args.threads), "--size", str(args.size), "--frames", str(args.frames),
           "--steps", str(args.steps), "--cfg", str(args.cfg)] + (["--cold"] if cold else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"child {side} {what} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def part_load(args) -> dict:
    runs = {"ours": {"cold": [], "warm": []}, "official": {"cold": [], "warm": []}}
    for r in range(args.repeat):
        for side in (("ours", "official") if r % 2 == 0 else ("official", "ours")):
            for cold in (True, False):
                o = _spawn(args, "load", side, cold)
                runs[side]["cold" if cold else "warm"].append(o)
                print(f"  {side} {'cold' if cold else 'warm'}: {o['load_wall_s']} s wall", file=sys.stderr, flush=True)
    res = {}
    for side, d in runs.items():
        for kind, lst in d.items():
            res[f"{side}_{kind}_wall_s"] = [o["load_wall_s"] for o in lst]
            res[f"{side}_{kind}_cpu_s"] = [o["load_cpu_s"] for o in lst]
        res[f"{side}_peak_rss_load_gb"] = max(o["peak_rss_load_gb"] for lst in d.values() for o in lst)
    for kind in ("cold", "warm"):
        res[f"{kind}_wall_ratio_median"] = round(statistics.median(
            o / f for o, f in zip(res[f"ours_{kind}_wall_s"], res[f"official_{kind}_wall_s"])), 3)
    return res


def part_memory(args) -> dict:
    res = {side: _spawn(args, "generate", side, False) for side in ("ours", "official")}
    res["generation_peak_ratio"] = round(res["ours"]["peak_rss_generation_gb"] / res["official"]["peak_rss_generation_gb"], 3)
    res["process_peak_ratio"] = round(max(res["ours"]["peak_rss_load_gb"], res["ours"]["peak_rss_generation_gb"])
                                      / max(res["official"]["peak_rss_load_gb"], res["official"]["peak_rss_generation_gb"]), 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", type=Path, required=True, help="a checkout of BadToBest/EchoMimic")
    ap.add_argument("--models", type=Path, default=Path("/tmp/echomimic_bench_models"), help="random full-size weights (written once)")
    ap.add_argument("--what", default="unet", choices=["unet", "pipeline", "stages", "load", "memory", "all"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=24, help="video frames of the pipeline / memory runs")
    ap.add_argument("--unet-frames", type=int, default=12)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--cfg", type=float, default=2.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=sorted(CHILD), help=argparse.SUPPRESS)
    ap.add_argument("--side", choices=["ours", "official"], help=argparse.SUPPRESS)
    ap.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.models = _official.make_model_folder(args.models)
    if args.child:
        print(json.dumps(child(args)))
        return
    off = _official.import_official(args.official)
    out = {"threads": args.threads, "torch": torch.__version__, "official": str(args.official)}
    for what in (["unet", "pipeline", "load", "memory"] if args.what == "all" else [args.what]):
        print(f"{what} ...", file=sys.stderr, flush=True)
        out[what] = {"unet": lambda: part_unet(args, off), "pipeline": lambda: part_pipeline(args, off),
                     "stages": lambda: part_stages(args), "load": lambda: part_load(args),
                     "memory": lambda: part_memory(args)}[what]()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
