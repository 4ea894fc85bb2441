"""Training speed with and without the VAE latent cache (``data.cache_latents``, trainer/data/latent_cache.py), side by
side in one run.

A synthetic prepared dataset (textured frames stored as JPEG, like ``prepare`` writes them) and a random VAE
(``--vae sd15``: the sd-vae-ft-mse architecture; ``tiny``) are written to a temporary folder; the cache is built
once (its time is reported apart). Each mode then runs in a fresh subprocess (so its peak memory is its own):

- ``vae``: the dataset decodes the JPEG frames, the training step encodes them with the VAE (the default);
- ``cache``: the dataset reads the stored posteriors, the step samples from them (no frame decoded, no encode).

A step = data loading (``num_workers`` 0, in the timed loop) + the loss + backward + AdamW on the phase's trained
parameters, with random networks of ``--size`` (stage 1: reference, denoiser, encoder; stage 2: motion modules on
``--frames`` frames). Memory: CUDA peak on GPU, else the peak RSS during the steps above the RSS after building (polled every 2 ms).

    .venv/bin/python bench/bench_latent_cache.py --size tiny --vae sd15 --res 128 --phase stage2 --frames 8 --steps 6
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_dataset(root: Path, clips: int, frames: int, size: int) -> Path:
    import numpy as np

    from trainer.data.store import ClipWriter

    rng = np.random.default_rng(0)
    rows = []
    for c in range(clips):
        cid = f"spk{c}__clip"
        w = ClipWriter(root / "shard-00000" / cid)
        base = rng.integers(0, 255, (size // 8, size // 8 + frames, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        for f in range(frames):
            w.add_frame(np.ascontiguousarray(base[:, 8 * f : 8 * f + size]))
        w.finish({"id": cid, "fps": 24.0, "kind": "headshot", "size": size},
                 {"landmarks": np.tile(rng.uniform(0.3, 0.7, (1, 478, 3)).astype(np.float32), (frames, 1, 1)),
                  "face_boxes": np.tile(np.float32([[0.3, 0.3, 0.7, 0.7]]), (frames, 1)),
                  "audio16k": np.zeros(int(frames / 24 * 16000), np.float32),
                  "whisper": np.zeros((int(frames / 24 * 50) + 2, 5, 384), np.float16)})
        rows.append({"id": cid, "path": f"shard-00000/{cid}", "shard": 0, "num_frames": frames, "fps": 24.0, "kind": "headshot"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _config(data: Path, args):
    from trainer.config_file import load_config

    phase = ["phases.stage1.frames=1"] if args.phase == "stage1" else [f"phases.stage2.frames={args.frames}"]
    return load_config(None, ["model.init=random", "model.arch=tiny", "model.motion_init=random", f"data.roots=[{data}]",
                              f"data.width={args.res}", f"data.height={args.res}", "validation.every=0", "data.num_workers=0",
                              f"optim.batch_size={args.batch}", "loss.spatial.weight=0", "data.audio_aug.noise_prob=0",
                              "data.audio_aug.gain_prob=0", "data.audio_aug.shift_prob=0", *phase], preset=f"v1_{args.phase}")


def run_mode(mode: str, work: Path, args) -> dict:
    import torch
    from diffusers import AutoencoderKL

    from echomimic_lib.config import PRESETS as ARCH
    from echomimic_lib.models.unet import ConditionEncoder, EchoUNet
    from trainer.data.dataset import build_pools, make_loader
    from trainer.data.latent_cache import cache_key
    from trainer.losses import training_scheduler
    from trainer.net import AudioAttentionControl, TrainingNet, bypass_motion, set_trainable
    from trainer.step import LossFns, compute_losses

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cfg = _config(work / "data", args)
    phase = cfg.phases[0]
    temporal = phase.kind == "temporal"
    arch = ARCH[args.size]
    net = TrainingNet(EchoUNet(arch, "reference"), EchoUNet(arch, "denoiser", motion=temporal),
                      ConditionEncoder(3, arch.cond_out_channels, arch.cond_block_channels)).to(dev)
    vae = AutoencoderKL.from_pretrained(str(work / "vae")).to(dev).requires_grad_(False).eval()
    params = set_trainable(net, phase.train, phase.audio)
    bypass_motion(net.denoiser, not temporal and net.denoiser.has_motion)
    ctrl = AudioAttentionControl(net.denoiser)
    opt = torch.optim.AdamW(params, lr=1e-5)
    sched = training_scheduler(cfg)
    pools = build_pools(cfg)
    key = cache_key(work / "vae", args.res, args.res, vae.dtype)
    modes = ("vae", "cache") if mode == "both" else (mode,)
    its = {m: iter(make_loader(cfg, pools, 0, 0, None, num_workers=0, latent_key=key if m == "cache" else None)) for m in modes}
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sampler = _RssPeak() if dev.type != "cuda" else None  # ru_maxrss would include the VAE loading's peak
    times, encodes = {m: [] for m in modes}, {m: 0 for m in modes}
    for i in range(args.steps):
        for m in modes:  # "both": the modes alternate step by step, so a load change on the machine hits both alike
            t0 = time.perf_counter()
            batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in next(its[m]).items()}
            encodes[m] += "latent_mean" not in batch
            out = compute_losses(net, vae, sched, batch, torch.Generator().manual_seed(i), cfg, LossFns(), ctrl)
            out.total.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[m].append(time.perf_counter() - t0)
    peak = sampler.stop() if sampler is not None else None
    res = {"mode": mode, "size": args.size, "vae_size": args.vae, "res": args.res, "phase": args.phase, "frames": phase.frames,
           "batch": args.batch, "device": args.device, "threads": args.threads, "steps": args.steps}
    for m in modes:
        steady = sorted(times[m][1:] or times[m])
        step_s = steady[len(steady) // 2]  # median after the first step
        res[m] = {"vae_encoded_batches": encodes[m], "step_s": round(step_s, 4), "steps_per_s": round(1.0 / step_s, 3)}
    if dev.type == "cuda":
        res["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
    else:
        res["peak_rss_above_build_gb"] = round(peak, 3)
    return res


class _RssPeak:
    """The process's resident memory, polled every 2 ms from /proc in a thread: the peak above the RSS at the start."""

    def __init__(self):
        import os
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE") / 1024**3
        self.base = self.peak = self._now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _now(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._now())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(0.0, self.peak - self.base)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=["tiny", "sd15"], help="UNet widths")
    p.add_argument("--vae", default="sd15", choices=["tiny", "sd15"], help="VAE widths (sd15: sd-vae-ft-mse's architecture)")
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--phase", default="stage2", choices=["stage1", "stage2"])
    p.add_argument("--frames", type=int, default=8, help="stage 2 frames per sample")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--clips", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--_mode", help=argparse.SUPPRESS)
    p.add_argument("--_work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._mode:  # child: one mode
        print(json.dumps(run_mode(args._mode, Path(args._work), args)))
        return 0
    import torch
    from diffusers import AutoencoderKL

    from echomimic_lib.tiny import SD_VAE_CONFIG, TINY_VAE_CONFIG, randomize_
    from trainer.data.latent_cache import cache_clips
    from trainer.data.store import read_manifest

    with tempfile.TemporaryDirectory(prefix="bench_latent_cache_") as tmp:
        work = Path(tmp)
        write_dataset(work / "data", args.clips, max(32, args.frames * 2), args.res)
        vae = randomize_(AutoencoderKL(**(SD_VAE_CONFIG if args.vae == "sd15" else TINY_VAE_CONFIG)), 3).eval().requires_grad_(False)
        vae.save_pretrained(str(work / "vae"), safe_serialization=True)
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        counts = cache_clips(read_manifest(work / "data"), vae.to(args.device), work / "vae", args.res, args.res)
        frames = sum(e.num_frames for e in read_manifest(work / "data"))
        results = {"cache_build_s": round(time.perf_counter() - t0, 2), "cached_frames": frames, "cache_key": counts["key"], "modes": []}
        passthrough = [f"--{k}={v}" for k, v in vars(args).items() if k in ("size", "vae", "res", "phase", "frames", "batch", "steps",
                                                                              "clips", "device", "threads")]
        for mode in ("both", "vae", "cache"):  # timing interleaved in one process; peak memory of each mode on its own
            cmd = [sys.executable, __file__, *passthrough, "--_mode", mode, "--_work", str(work)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{mode}: exit status {out.returncode}\n{out.stderr[-3000:]}")
            results["modes"].append(json.loads(out.stdout.strip().splitlines()[-1]))
    both, a, b = results["modes"]
    mem = "peak_gb" if "peak_gb" in a else "peak_rss_above_build_gb"
    results["summary"] = {"steps_per_s_vae": both["vae"]["steps_per_s"], "steps_per_s_cache": both["cache"]["steps_per_s"],
                          "speedup": round(both["vae"]["step_s"] / both["cache"]["step_s"], 2), f"{mem}_vae": a[mem], f"{mem}_cache": b[mem]}
    print(json.dumps(results, indent=1))
    s = results["summary"]
    print(f"\nsteps/s without the cache {s['steps_per_s_vae']}, with it {s['steps_per_s_cache']} (x{s['speedup']}); {mem}: "
          f"{a[mem]} vs {b[mem]}; cache built in {results['cache_build_s']} s for {frames} frames")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
