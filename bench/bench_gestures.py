"""Benchmark: gestures from speech (issue #24) on real speech the tests do not use (they use synthetic audio).

    PYTHONPATH=. .venv/bin/python bench/bench_gestures.py [--library ../shared/data/pose/01 ../shared/data/pose/fight]
        [--audio ../shared/data/audio/*.wav] [--fps 25] [--seeds 8]

For every clip and seed, motion matching beside the baseline (units picked at random from the same library,
played forward and blended the same way, the speech ignored), and prints JSON:

- ``synchrony``: share of gesture strokes (hand-speed peaks) within +-2 frames of a stressed onset (the strong
  onsets the strokes aim at), and ``synchrony_all_onsets`` against every onset; goal: at least 2x the baseline;
- ``energy_corr``: Pearson correlation of 1 s windows (0.25 s hop) of hand speed and loudness; goal >= 0.5;
- ``rest_ratio``: mean hand speed through pauses >= 0.5 s over the speaking-time mean; goal <= 0.25;
- ``seams_within_p99``: share of seams whose joint acceleration (body joints and hand centres, at the junction)
  is within the library's own 99th percentile, and ``seams_within_p99_or_own`` counting a seam as within when it
  does not exceed what its source already does at the frames shown; ``outside_picture_per_frame``: body/hand
  points off the picture per frame (beside the library's own rate: output points never go past the library's range);
- ``excerpts``: the energy correlation (mean of 3 seeds) on ``--excerpts`` random 5-10 s excerpts of the clips
  joined end to end, each at a random gain (0 to -20 dB): how many reach 0.5, the lowest and the median;
- ``pose_fps``: frames synthesized per second on one CPU core, after indexing (speech analysis not included;
  ``speech_fps`` separately), on a 60 s clip made of the speech clips one after the other.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from echomimic_lib.pose.gestures import analyze_speech, load_library, synthesize  # noqa: E402
from echomimic_lib.pose.gestures import metrics as M  # noqa: E402
from echomimic_lib.pose.gestures.speech import analyze_waveform  # noqa: E402
from echomimic_lib.pose.gestures.synth import aligned_sources  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def _one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def measure(lib, sp, seeds, random_units: bool) -> dict:
    p99 = lib.acceleration_percentile(99)
    aligned = aligned_sources(lib, None)
    rows = []
    for seed in range(seeds):
        seq = synthesize(lib, sp, seed=seed, random_units=random_units)
        st = M.strokes(seq)
        seams = seq.report.seams
        acc = M.seam_acceleration(seq, seams)
        own = M.own_acceleration(aligned, seq.report, seams)
        rows.append({
            "synchrony": M.synchrony(st, sp.stresses), "synchrony_all_onsets": M.synchrony(st, sp.onsets),
            "energy_corr": M.energy_correlation(seq, sp), "rest_ratio": M.rest_ratio(seq, sp),
            "seams_within_p99": float((acc <= p99).mean()) if len(acc) else 1.0,
            "seams_within_p99_or_own": float((acc <= np.maximum(p99, own * 1.1)).mean()) if len(acc) else 1.0,
            "outside_picture_per_frame": M.outside_picture(seq) / len(seq), "strokes_per_s": len(st) / (len(seq) / sp.fps),
        })
    return {k: (round(float(np.nanmean([r[k] for r in rows])), 3) if not all(np.isnan(r[k]) for r in rows) else None)
            for k in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", nargs="+", default=[str(SHARED / "pose" / "01"), str(SHARED / "pose" / "fight")])
    ap.add_argument("--audio", nargs="+", default=sorted(str(p) for p in (SHARED / "audio").glob("*.wav")))
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--excerpts", type=int, default=16, help="random excerpts of the joined clips for the energy measure")
    args = ap.parse_args()
    _one_core()
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        lib = load_library(args.library, cache_dir=cache)
        t_index = time.perf_counter() - t
        t = time.perf_counter()
        load_library(args.library, cache_dir=cache)
        t_cached = time.perf_counter() - t
    out = {"library": {"sources": lib.names, "frames": sum(len(s) for s in lib.sources), "units": len(lib),
                       "index_s": round(t_index, 3), "cached_load_s": round(t_cached, 3),
                       "acceleration_p99": round(lib.acceleration_percentile(99), 4),
                       "outside_picture_per_frame": round(sum(M.outside_picture(s) for s in lib.sources)
                                                          / sum(len(s) for s in lib.sources), 3)}, "clips": {}}
    waves = []
    for path in args.audio:
        sp = analyze_speech(path, args.fps)
        from echomimic_lib.audio import read_raw_audio

        waves.append(read_raw_audio(path).mono_16k())
        out["clips"][Path(path).name] = {"seconds": round(sp.num_frames / sp.fps, 2), "stresses": int(len(sp.stresses)),
                                         "onsets": int(len(sp.onsets)), "pauses": len(sp.pauses),
                                         "matched": measure(lib, sp, args.seeds, False), "random": measure(lib, sp, args.seeds, True)}
    clips = list(out["clips"].values())
    mean = lambda side, k: round(float(np.nanmean([c[side][k] for c in clips if c[side][k] is not None])), 3)  # noqa: E731
    out["mean"] = {side: {k: mean(side, k) for k in clips[0][side]} for side in ("matched", "random")}
    long = np.concatenate(waves)
    rng, corr = np.random.default_rng(123), []
    for _ in range(args.excerpts):
        seconds = rng.uniform(5, 10)
        start = int(rng.uniform(0, len(long) / 16000 - seconds) * 16000)
        sp = analyze_waveform(long[start : start + int(seconds * 16000)] * 10 ** rng.uniform(-1, 0), args.fps)
        corr.append(float(np.nanmean([M.energy_correlation(synthesize(lib, sp, seed=s), sp) for s in range(3)])))
    if corr:
        out["excerpts"] = {"n": len(corr), "energy_corr_at_least_0.5": int(sum(c >= 0.5 for c in corr)),
                           "lowest": round(min(corr), 3), "median": round(float(np.median(corr)), 3)}
    long = np.tile(long, int(np.ceil(60 * 16000 / len(long))))[: 60 * 16000]
    t = time.perf_counter()
    sp = analyze_waveform(long, args.fps)
    t_speech = time.perf_counter() - t
    synthesize(lib, sp, seed=0)  # warm
    t = time.perf_counter()
    reps = 3
    for seed in range(reps):
        synthesize(lib, sp, seed=seed)
    t_synth = (time.perf_counter() - t) / reps
    out["speed"] = {"frames": sp.num_frames, "pose_fps": round(sp.num_frames / t_synth, 1),
                    "speech_fps": round(sp.num_frames / t_speech, 1), "one_core": hasattr(os, "sched_setaffinity")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
