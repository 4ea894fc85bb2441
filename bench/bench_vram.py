"""Benchmark (issue 14): peak GPU memory of a whole generation and of each stage.

    .venv/bin/python bench/bench_vram.py v1-audio --size 512 --dtype fp16 --frames 24 --json
    .venv/bin/python bench/bench_vram.py v2-halfbody --size 768 --dtype fp16 --frames 240 --lowvram --json
    .venv/bin/python bench/bench_vram.py --goals            # every goal of the issue, one line each

Full-size architecture (SD1.5 UNets with motion modules, SD VAE, whisper-tiny), 12-frame context windows,
CFG where the variant uses it (normal: cfg 2.5). The run is the real code: the Sampler's stages, the
placement the ComfyUI nodes use (only what a stage needs on the device; ``--lowvram``: the denoiser
streamed block by block), the VAE decode chunking.

On a GPU (``--device cuda``, the default when one is present) it measures ``torch.cuda.max_memory_allocated``
per stage. Without one it runs the same code under ``FakeTensorMode`` with the networks on a fake CUDA
device and counts live storages (``echomimic_lib.memory.tracker``: CUDA allocator rounding, the flash /
memory-efficient attention kernels the GPU runs; cuDNN workspaces not modelled). No weights are needed and
almost no memory is used. ``--steps`` defaults to 1: every step holds the same tensors, so the peak does not
depend on it. ``--json`` prints one JSON object as the last line (``peak_gb``, ``stages``; GB = 1e9 bytes).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echomimic_lib.audio import AudioFeatures  # noqa: E402
from echomimic_lib.config import SD15, TINY  # noqa: E402
from echomimic_lib.devices import default_dtype  # noqa: E402
from echomimic_lib.memory import BlockStreamer, Placement, estimate, to_fp8  # noqa: E402
from echomimic_lib.memory.tracker import VramTracker, gpu_attention  # noqa: E402
from echomimic_lib.model_set import EchoMimicModels  # noqa: E402
from echomimic_lib.modes import WEIGHT_SETS, get_mode  # noqa: E402
from echomimic_lib.pipeline import FrameCondition, MaskCondition, Sampler, settings_for  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SD_VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2, norm_num_groups=32,
              sample_size=256)
TINY_VAE = dict(SD_VAE, block_out_channels=[32] * 4, layers_per_block=1, sample_size=64)
OFFICIAL = {"v1-audio": "about 7-8 GB (V1, 512 px; users: works on 8 GB cards with shared memory)",
            "v2-halfbody": "about 13 GB for 5 s at 768 px (maintainers, echomimic_v2#3/#6); >= 18 GB at the defaults"}
GOALS = [  # (label, args, bound GB)
    ("V1 512 px fp16", ["v1-audio", "--size", "512", "--frames", "24"], 6.0),
    ("V2 768 px fp16", ["v2-halfbody", "--size", "768", "--frames", "24"], 8.0),
    ("V2 768 px fp16 low-VRAM", ["v2-halfbody", "--size", "768", "--frames", "24", "--lowvram"], 6.0),
]
GB = 1e9


# ------------------------------------------------------------------------------------------ meters
class FakeMeter:
    """Fake CUDA device: live storages counted by the tracker, weights by the placement backend below."""

    name = "fake cuda (FakeTensorMode on CPU, allocation tracker)"
    device = torch.device("cuda")

    def __init__(self):
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.tracker = None

    @contextlib.contextmanager
    def building(self, dtype):
        with self.mode, torch.device("cuda"), _default_dtype(dtype):
            yield

    @contextlib.contextmanager
    def running(self, modules):
        weights = [t for m in modules.values() for t in list(m.parameters()) + list(m.buffers())]
        self.tracker = VramTracker("cuda", ignore=weights)
        with self.mode, self.tracker, gpu_attention():
            yield

    def stage(self, name):
        self.tracker.set_stage(name)

    def backend(self, modules):
        return _CountingBackend(modules, self.tracker)

    def streamer(self, denoiser):
        def moved(unit, nbytes):
            self.tracker.set_resident(self.tracker.resident + nbytes)

        return BlockStreamer(denoiser, self.device, "cpu", copy=False, on_move=moved)

    def result(self):
        return self.tracker.peak, dict(self.tracker.stage_peaks)


class _CountingBackend:
    """Placement backend for fake tensors: the networks stay put; the bytes of the 'loaded' ones count."""

    def __init__(self, modules, tracker):
        self.modules, self.tracker, self.loaded = modules, tracker, set()

    def is_loaded(self, name):
        return name in self.loaded

    def load(self, names, extra_bytes=0):
        for n in names:
            if n not in self.loaded:
                self.loaded.add(n)
                self.tracker.set_resident(self.tracker.resident + estimate.weight_bytes(self.modules[n]))

    def unload(self, names):
        for n in names:
            if n in self.loaded:
                self.loaded.discard(n)
                self.tracker.set_resident(self.tracker.resident - estimate.weight_bytes(self.modules[n]))

    def reserve(self, nbytes):
        pass


class CudaMeter:
    name = "cuda"

    def __init__(self):
        self.device = torch.device("cuda")
        self.name = torch.cuda.get_device_name(self.device)
        self.stages, self.current = {}, None

    @contextlib.contextmanager
    def building(self, dtype):
        with _default_dtype(dtype):
            yield

    @contextlib.contextmanager
    def running(self, modules):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        self.stage(None)

    def stage(self, name):
        torch.cuda.synchronize()
        if self.current is not None:
            peak = torch.cuda.max_memory_allocated(self.device)
            self.stages[self.current] = max(self.stages.get(self.current, 0), peak)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.current = name

    def backend(self, modules):
        return None  # the library's MoveBackend

    def streamer(self, denoiser):
        return None  # the placement builds a real one

    def result(self):
        return max(self.stages.values()), dict(self.stages)


# ------------------------------------------------------------------------------------------ run
def build(meter, mode, dtype, preset, fp8):
    from diffusers import AutoencoderKL
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from echomimic_lib.audio.whisper import WhisperFeatureEncoder, _tiny_config
    from echomimic_lib.models.unet import ConditionEncoder, EchoUNet

    cfg = {"sd15": SD15, "tiny": TINY}[preset]
    ws = WEIGHT_SETS[mode.weights]
    host = "meta" if isinstance(meter, CudaMeter) else None  # real host tensors, without the seconds of weight init
    with meter.building(dtype), (torch.device(host) if host else contextlib.nullcontext()):
        ref, den = EchoUNet(cfg, "reference").eval(), EchoUNet(cfg, "denoiser").eval()
        enc = ConditionEncoder(ws.cond_channels, cfg.cond_out_channels, cfg.cond_block_channels).eval()
        vae = AutoencoderKL(**(SD_VAE if preset == "sd15" else TINY_VAE)).eval()
    if host:
        for m in (ref, den, enc, vae):
            _zeros_on_host(m)
    with meter.building(dtype):
        with _default_dtype(torch.float32):  # the audio encoder runs in fp32 (model_set loads it so)
            whisper = WhisperFeatureEncoder(WhisperEncoder(_tiny_config()))
        if fp8:
            to_fp8(ref), to_fp8(den)
    return EchoMimicModels(cfg, ws, "normal", ref, den, enc, vae, whisper)


@torch.no_grad()
def _zeros_on_host(module) -> None:
    """A meta-built network on the CPU with zero weights (the motion modules' position table computed): the memory
    a loaded one takes, in a fraction of the time random init needs at full size."""
    from echomimic_lib.models.unet.motion import sinusoid_table

    module.to_empty(device="cpu")
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        t.copy_(sinusoid_table(t.shape[1], t.shape[2])) if name.endswith("pos_encoder.pe") else t.zero_()


_default_dtype = default_dtype  # (bench_vram_v3 imports this name)


def run(args) -> dict:
    mode = get_mode(args.mode)
    dtype = DTYPES[args.dtype]
    meter = CudaMeter() if args.device == "cuda" else FakeMeter()
    t0 = time.time()
    models = build(meter, mode, dtype, args.preset, args.fp8)
    variant = "acc" if args.acc else "normal"
    settings = settings_for(mode.name, variant, width=args.size, height=args.size, num_frames=args.frames, steps=args.steps,
                            deep_cache=args.deep_cache, deep_cache_branch=args.deep_cache_branch)
    fps = float(settings.fps)
    seconds = args.frames / fps + 0.2
    rows = int(seconds * 50) + 2
    audio = AudioFeatures(torch.zeros(rows, 5, 384), int(seconds * 16000))
    assert audio.frame_count(fps) >= args.frames
    size = args.size
    cond = MaskCondition(torch.ones(size, size)) if mode.weights == "v1_audio" else \
        FrameCondition(args.frames, lambda idx: np.zeros((len(idx), size, size, 3), np.uint8))
    image = np.zeros((size, size, 3), np.uint8)
    modules = models.modules()
    with meter.running(modules):
        meter.stage("load")  # weights are read into host memory; nothing is on the device yet
        placement = Placement(models, meter.device, meter.backend(modules), keep_loaded=args.keep_loaded,
                              stream_denoiser=args.lowvram, settings=settings,
                              streamer=meter.streamer(models.denoiser) if args.lowvram else None, on_stage=meter.stage)
        placement.enter("audio")
        segments = max(1, int(np.ceil(seconds / 30)))
        mel = torch.zeros(1, 80, 3000, device=meter.device)
        for _ in range(segments):
            models.audio_encoder(mel)
        result = Sampler(models, placement)(image, audio, cond, settings, frame_sink=lambda s, f: None)
        placement.close()
    peak, stages = meter.result()
    out = {
        "mode": mode.name, "size": size, "dtype": args.dtype, "frames": args.frames, "lowvram": args.lowvram, "fp8": args.fp8,
        "keep_loaded": args.keep_loaded,
        "variant": variant, "cfg": settings.cfg, "steps": settings.steps, "context_frames": settings.context_frames,
        "denoiser_calls": result.unet_calls, "device": meter.name, "peak_gb": round(peak / GB, 3),
        "stages": {k: round(v / GB, 3) for k, v in stages.items()},
        "weights_gb": {k: round(estimate.weight_bytes(m) / GB, 3) for k, m in modules.items()},
        "estimate_gb": {s: round(placement._stage_bytes(s) / GB, 3) for s in ("vae_encode", "reference", "denoise", "decode")},
        "official": OFFICIAL.get(mode.name, ""), "seconds": round(time.time() - t0, 1),
    }
    return out


def goals(args) -> list[dict]:
    """Every goal row, each a child process (all at once where the cores allow: the peaks are per process). With
    ``--computed FILE`` (this command's ``--json`` output on the fake device, e.g. bench/vram_computed.json), each
    measured run is set beside its computed figure; ``ok`` when they agree within 15 %."""
    import os
    from concurrent.futures import ThreadPoolExecutor, as_completed

    jobs = [(label, extra + ["--dtype", "fp16"]) for label, extra, _ in GOALS]
    jobs += [(f"{mode} {size}: {f}", [mode, "--size", str(size), "--frames", str(f), "--dtype", "fp16"])
             for mode, size in (("v1-audio", 512), ("v2-halfbody", 768)) for f in (24, args.long_frames)]
    if args.preset != "sd15":
        jobs = [(label, extra + ["--preset", args.preset]) for label, extra in jobs]
    by_args: dict[tuple, list[str]] = {}  # a goal row and a length row with the same arguments run once
    for label, extra in jobs:
        by_args.setdefault(tuple(extra), []).append(label)
    workers = max(1, min(len(by_args), (os.cpu_count() or 2) // 2))
    threads = str(max(1, (os.cpu_count() or 2) // workers))  # the children share the cores instead of each taking all
    got = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        runs = {pool.submit(_child, [*extra, "--device", args.device, "--threads", threads]): labels for extra, labels in by_args.items()}
        for f in as_completed(runs):  # each run as it ends: a step cut short by its time limit keeps what finished
            try:
                r = f.result()
            except RuntimeError as exc:
                r = {"peak_gb": float("nan"), "stages": {}, "device": args.device, "error": str(exc)[-600:]}
            for label in runs[f]:
                got[label] = r
                print(json.dumps({"partial": {label: r}}), flush=True)
    rows = []
    for label, _, bound in GOALS:
        r = got[label]
        rows.append({"goal": label, "peak_gb": r["peak_gb"], "bound_gb": bound, "ok": r["peak_gb"] <= bound, "device": r["device"]})
    for mode, size in (("v1-audio", 512), ("v2-halfbody", 768)):
        short, long = (got[f"{mode} {size}: {f}"]["peak_gb"] for f in (24, args.long_frames))
        rows.append({"goal": f"{mode} {size} px: {args.long_frames} vs 24 frames", "peak_gb": [short, long], "ratio": round(long / short, 3),
                     "ok": long / short <= 1.10})
    if args.computed:
        computed = json.loads(Path(args.computed).read_text())["runs"]
        for label, _ in jobs:
            c, m = computed[label]["peak_gb"], got[label]["peak_gb"]
            rows.append({"goal": f"measured vs computed: {label}", "peak_gb": [m, c], "ratio": round(m / c, 3),
                         "ok": abs(m / c - 1) <= 0.15, "stages": got[label]["stages"], "stages_computed": computed[label]["stages"]})
    args.runs = {label: {"peak_gb": r["peak_gb"], "stages": r["stages"], "device": r["device"]} for label, r in got.items()}
    return rows


def _child(extra) -> dict:
    proc = subprocess.run([sys.executable, __file__, *extra, "--json"], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"bench_vram {' '.join(extra)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", nargs="?", default="v1-audio", help="v1-audio, v1-landmarks, v1-audio+landmarks, v2-halfbody")
    p.add_argument("--size", type=int, default=None, help="width = height (default: the mode's, 512 V1 / 768 V2)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp16")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--acc", action="store_true", help="the acc variant's settings (cfg 1: no CFG batch)")
    p.add_argument("--lowvram", action="store_true", help="stream the denoiser block by block")
    p.add_argument("--deep-cache", type=int, default=0, help="DeepCache interval (its per-frame store is held from the "
                   "first step; the peak is reached in a full step)")
    p.add_argument("--deep-cache-branch", type=int, default=0)
    p.add_argument("--fp8", action="store_true", help="fp8 e4m3fn weight storage for the UNets")
    p.add_argument("--keep-loaded", action="store_true", help="the loader's keep_loaded: no network leaves the device")
    p.add_argument("--preset", choices=["sd15", "tiny"], default="sd15", help="tiny: the test architecture (quick checks)")
    p.add_argument("--device", choices=["cuda", "fake"], default="cuda" if torch.cuda.is_available() else "fake")
    p.add_argument("--goals", action="store_true", help="run every goal of issue 14 (separate processes)")
    p.add_argument("--report-only", action="store_true", help="with --goals: exit 0 even when a goal is missed (the dry run)")
    p.add_argument("--long-frames", type=int, default=240, help="with --goals: the long run set beside 24 frames (the dry "
                   "run: a few windows, on the fake device every window is a full pass of Python dispatch)")
    p.add_argument("--computed", help="with --goals: the fake-device --goals --json output to set each measured run beside")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of this run (--goals sets it per child)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.goals:
        rows = goals(args)
        for r in rows:
            detail = f" (ratio {r['ratio']})" if "ratio" in r else f" (<= {r['bound_gb']})"
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['goal']}: {r['peak_gb']} GB{detail}")
        print(json.dumps({"goals": rows, "runs": args.runs}))
        return 0 if args.report_only or all(r["ok"] for r in rows) else 1
    args.size = args.size or get_mode(args.mode).size
    res = run(args)
    print(f"{res['mode']} {res['size']} px {res['dtype']} {res['frames']} frames{' low-VRAM' if res['lowvram'] else ''}"
          f"{' fp8' if res['fp8'] else ''}{' keep_loaded' if res['keep_loaded'] else ''} on {res['device']}: peak {res['peak_gb']} GB")
    for k, v in res["stages"].items():
        print(f"  {k:12s} {v:7.3f} GB")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
