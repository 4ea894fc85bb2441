"""Benchmark: audio -> whisper-tiny features, in seconds of audio encoded per second of wall time.

    .venv/bin/python bench/bench_audio.py [--seconds 120] [--rate 44100] [--channels 2] [--weights PATH]
                                          [--devices cpu,cuda] [--repeat 2] [--json]

Input: a synthetic clip given as a ComfyUI AUDIO dict ({waveform [1, C, T], sample_rate}). Reports per
device: end-to-end rate (validate + resample + log-mel + encoder, segment by segment), the encoder alone,
and the front end alone (resample + log-mel, CPU); peak RSS and, on CUDA, peak GPU memory. Weights:
``--weights`` (a whisper-tiny checkpoint) or random whisper-tiny weights (same network and cost).
CUDA is benchmarked in float16 (the reference default on GPU) and float32 (TF32 off) when present.
``--json`` writes bench/results/audio.json (git-ignored); nothing else is written.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from echomimic_lib.audio import encode_audio, load_waveform_16k, load_whisper_encoder, log_mel_spectrogram, random_whisper_encoder  # noqa: E402


def _clip(seconds: float, rate: int, channels: int) -> dict:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    voice = sum(np.sin(2 * np.pi * f * t + p) / (k + 1) for k, (f, p) in enumerate(zip([140, 280, 420, 700, 1100, 2400], rng.uniform(0, 6, 6))))
    x = (0.2 * voice * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)
    wav = np.stack([x * (1 - 0.1 * c) for c in range(channels)])
    return {"waveform": torch.from_numpy(wav)[None], "sample_rate": rate}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="clip length (120 s = 4 encoder segments)")
    ap.add_argument("--rate", type=int, default=44100)
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--weights", default=None, help="whisper-tiny checkpoint (default: random weights)")
    ap.add_argument("--devices", default="cpu,cuda", help="comma list; cuda is skipped when unavailable")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs after one warm-up (best is reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--json", action="store_true", help="write bench/results/audio.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    audio = _clip(args.seconds, args.rate, args.channels)
    front = _timed(lambda: log_mel_spectrogram(load_waveform_16k(audio)), "cpu", args.repeat)
    print(f"clip: {args.seconds:.0f} s, {args.rate} Hz, {args.channels} ch (ComfyUI AUDIO dict); torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; weights: {args.weights or 'random whisper-tiny'}")
    print(f"front end (validate + soxr resample + log-mel, CPU): {args.seconds / front:9.1f} s audio / s")
    results = {"seconds": args.seconds, "rate": args.rate, "channels": args.channels, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
               "front_end_audio_s_per_s": args.seconds / front, "runs": []}

    configs = []
    for dev in [d.strip() for d in args.devices.split(",") if d.strip()]:
        if dev.startswith("cuda") and not torch.cuda.is_available():
            print(f"{dev}: not available, skipped")
            continue
        configs += [(dev, torch.float32)] + ([(dev, torch.float16)] if dev.startswith("cuda") else [])
    for dev, dtype in configs:
        if dev.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.cuda.reset_peak_memory_stats()
        enc = load_whisper_encoder(args.weights, dev, dtype) if args.weights else random_whisper_encoder(0, dev, dtype)
        segment = torch.zeros(1, 80, 3000, device=dev)
        t_enc = _timed(lambda: enc(segment), dev, args.repeat)
        t_all = _timed(lambda: encode_audio(audio, enc, device=dev), dev, args.repeat)
        run = {"device": dev, "dtype": str(dtype).replace("torch.", ""), "end_to_end_audio_s_per_s": args.seconds / t_all,
               "encoder_audio_s_per_s": 30.0 / t_enc, "end_to_end_wall_s": t_all}
        extra = ""
        if dev.startswith("cuda"):
            run["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
            extra = f", peak GPU {run['peak_gpu_mib']:.0f} MiB"
        print(f"{dev} {run['dtype']}: end to end {run['end_to_end_audio_s_per_s']:8.1f} s audio / s ({t_all:.2f} s wall); "
              f"encoder alone {run['encoder_audio_s_per_s']:8.1f} s audio / s{extra}")
        results["runs"].append(run)
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {results['peak_rss_mib']:.0f} MiB")
    if args.json:
        out = ROOT / "bench" / "results" / "audio.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
