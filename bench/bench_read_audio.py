"""Peak memory and time of ``read_audio`` for a whole long recording and for a short window of it.

    python bench/bench_read_audio.py [--minutes 30] [--codec aac|pcm_s16le] [--json out.json] [--probe]

A synthetic stereo 48 kHz recording of ``--minutes`` (noise, AAC in .m4a by default; pcm_s16le: a .wav) is written to
a temporary folder; each case runs in a fresh Python process, which reports its wall time and its peak resident
memory (``ru_maxrss``) above the process's memory after the imports. ``--probe``: ``probe``'s audio length instead,
old (the whole audio decoded and held, as ``probe`` did before) beside new (:func:`echomimic_lib.io.audio_length.audio_samples`:
a wav's header, else counted frame by frame)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import av, numpy as np
from echomimic_lib.io.video_io import read_audio
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
wav, sr = read_audio({path!r}, start={start}, duration={duration})
dt = time.perf_counter() - t
print(json.dumps({{"seconds": round(dt, 3), "peak_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1),
                  "samples": int(wav.shape[1]), "sr": sr}}))
"""
PROBE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import av, numpy as np
from echomimic_lib.io.video_io import probe, read_audio
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if {old!r}:
    wav, sr = read_audio({path!r})
    seconds = wav.shape[1] / sr
else:
    seconds = probe({path!r})["audio_seconds"]
dt = time.perf_counter() - t
print(json.dumps({{"seconds": round(dt, 3), "peak_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1),
                  "audio_seconds": seconds}}))
"""


def write(path: Path, minutes: float, codec: str) -> None:
    import av
    import numpy as np

    sr, rng = 48000, np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=sr)
        stream.layout = "stereo"
        block = (rng.standard_normal((2, sr)) * 0.1).astype(np.float32)  # one second, repeated
        for _ in range(int(minutes * 60)):
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--codec", default="aac", choices=["aac", "pcm_s16le"])
    ap.add_argument("--json")
    ap.add_argument("--probe", action="store_true", help="probe's audio length: old (whole decode) vs new")
    args = ap.parse_args()
    results = {"minutes": args.minutes, "codec": args.codec, "cases": {}}
    if args.probe:
        return bench_probe(args, results)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("long.m4a" if args.codec == "aac" else "long.wav")
        write(path, args.minutes, args.codec)
        for name, start, duration in (("whole", 0.0, None), ("first 10 s", 0.0, 10.0), ("10 s from 5:00", 300.0, 10.0)):
            code = CASE.format(root=str(ROOT), path=str(path), start=start, duration=duration)
            got = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            results["cases"][name] = got
            print(f"{name:>16}: {got['seconds']:7.3f} s  peak +{got['peak_mib']:7.1f} MiB  ({got['samples']} samples)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def bench_probe(args, results: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("long.m4a" if args.codec == "aac" else "long.wav")
        write(path, args.minutes, args.codec)
        for name, old in (("probe old (whole decode)", True), ("probe new", False)):
            code = PROBE.format(root=str(ROOT), path=str(path), old=old)
            got = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            results["cases"][name] = got
            print(f"{name:>26}: {got['seconds']:7.3f} s  peak +{got['peak_mib']:7.1f} MiB  ({got['audio_seconds']:.6f} s of audio)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
