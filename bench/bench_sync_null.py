"""How much the landmark lip-sync score (``av_sync_corr``) means, per clip duration.

For each duration D it measures:
- **unrelated**: mouth traces unrelated to the speech -- AR(1) noise with the lag-1 autocorrelation of the real
  V1 pose demo's mouth trace -- scored against windows of D seconds of the shared speech files put end to end
  (26 s, four voices; 0.5 s hop), several traces per window (at least 400 scores): mean, 95th percentile and how often they reach NULL_P95_LEVEL;
- **library null**: the 95th percentile of :func:`sync_null` (the same real mouth against its own audio
  energy, time-reversed and circularly shifted) on the real clip's windows, which is what a report shows;
- **real**: the V1 pose demo's landmark frames against their own clip (in sync), windows of D seconds (hop D/2):
  the mean sync strength, its mean p-value and z-score against the library null, and the share of windows with
  p < 0.05; and the real 10-s mouth against 10-s windows of the other speech files (not its audio).
The shortest duration from which the unrelated 95th percentile stays below NULL_P95_LEVEL is the minimum
(``MIN_SYNC_SECONDS`` in echomimic_lib/evaluate/sync.py is set from it).

Usage:  .venv/bin/python bench/bench_sync_null.py [--traces 8] [--json out.json]
Deterministic (fixed seeds); about a minute on one CPU core.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echomimic_lib.evaluate import load_clip  # noqa: E402
from echomimic_lib.evaluate.inputs import audio_16k  # noqa: E402
from echomimic_lib.evaluate.sync import MIN_SYNC_SECONDS, NULL_P95_LEVEL, av_sync, mouth_opening, sync_null  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SPEECH = ("echomimic_en.wav", "echomimic_zh.wav", "echomimicv2_woman.wav", "pose_demo_clip.wav")
FPS = 24.0
DURATIONS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0)
MIN_SAMPLES = 400


def ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    x = np.empty(n)
    x[0] = rng.normal() / np.sqrt(1 - phi ** 2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + rng.normal()
    return x


def unrelated(speech: np.ndarray, seconds: float, phi: float, traces: int, seed: int) -> np.ndarray:
    """Scores of AR(1) traces against every window of ``seconds`` of ``speech`` (0.5 s hop), at least
    ``traces`` per window and MIN_SAMPLES in all."""
    rng = np.random.default_rng(seed)
    n, span = int(round(seconds * FPS)), int(round(seconds * 16000))
    starts = range(0, len(speech) - span + 1, 8000)
    per = max(traces, -(-MIN_SAMPLES // len(starts)))
    scores = []
    for start in starts:
        for _ in range(per):
            r = av_sync(ar1(rng, n, phi), speech[start:start + span], FPS)
            if r.corr is not None:
                scores.append(r.corr)
    return np.asarray(scores)


def real(mouth: np.ndarray, wave: np.ndarray, seconds: float) -> dict:
    n = int(round(seconds * FPS))
    rows = []
    for f0 in range(0, len(mouth) - n + 1, max(1, n // 2)):
        t0 = int(round(f0 / FPS * 16000))
        seg = wave[t0:t0 + int(round(seconds * 16000))]
        r = av_sync(mouth[f0:f0 + n], seg, FPS)
        null = sync_null(r, seg)
        if null is not None:
            rows.append((null.corr, null.p_value, null.z, null.null_p95))
    a = np.asarray(rows)
    return {"windows": len(a), "corr": float(a[:, 0].mean()), "p": float(a[:, 1].mean()), "z": float(a[:, 2].mean()),
            "significant": float((a[:, 1] < 0.05).mean()), "null_p95": float(a[:, 3].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=8, help="AR(1) traces per audio window")
    ap.add_argument("--json", type=Path, help="write the figures as JSON")
    args = ap.parse_args()
    clip = load_clip(DATA / "v1_pose_pkl", audio=DATA / "audio" / "pose_demo_clip.wav")
    mouth = mouth_opening(clip.landmarks.pixels())
    m = mouth - mouth.mean()
    phi = float((m[1:] * m[:-1]).sum() / (m * m).sum())
    speech = np.concatenate([audio_16k(DATA / "audio" / name) for name in SPEECH])  # 26 s of speech, 4 voices
    print(f"AR(1) phi {phi:.3f} (lag-1 autocorrelation of the real mouth trace), {FPS:g} fps")
    print(f"{'seconds':>7} {'frames':>6} | {'unrelated: n':>12} {'mean':>6} {'p95':>6} {'>=' + str(NULL_P95_LEVEL):>6} | "
          f"{'lib null p95':>12} | {'real: win':>9} {'corr':>6} {'p':>6} {'z':>6} {'p<.05':>6}")
    out, minimum = [], None
    for i, d in enumerate(DURATIONS):
        u = unrelated(speech, d, phi, args.traces, seed=i)
        r = real(mouth, clip.wave16k, d) if d * FPS <= len(mouth) else None
        p95 = float(np.percentile(u, 95))
        row = {"seconds": d, "frames": int(round(d * FPS)), "unrelated_n": len(u), "unrelated_mean": float(u.mean()),
               "unrelated_p95": p95, "unrelated_at_level": float((u >= NULL_P95_LEVEL).mean()), "real": r}
        out.append(row)
        tail = (f"{r['null_p95']:12.3f} | {r['windows']:9d} {r['corr']:6.3f} {r['p']:6.3f} {r['z']:6.2f} {r['significant']:6.0%}"
                if r else f"{'-':>12} | (the real clip lasts {len(mouth) / FPS:g} s)")
        print(f"{d:7.1f} {row['frames']:6d} | {len(u):12d} {u.mean():6.3f} {p95:6.3f} {row['unrelated_at_level']:6.1%} | {tail}")
    for i, row in enumerate(out):
        if all(o["unrelated_p95"] < NULL_P95_LEVEL for o in out[i:]):
            minimum = row["seconds"]
            break
    others = speech[: len(speech) - len(audio_16k(DATA / "audio" / SPEECH[-1]))]  # the other voices, not the clip's own
    mismatched = []
    for start in range(0, len(others) - len(clip.wave16k) + 1, 16000):  # the real mouth against other speech, 10 s
        seg = others[start:start + len(clip.wave16k)]
        null = sync_null(av_sync(mouth, seg, FPS), seg)
        mismatched.append((null.corr, null.p_value, null.z))
    mm = np.asarray(mismatched)
    print(f"the real 10-s mouth against other speech ({len(mm)} windows, 1 s hop): corr {mm[:, 0].mean():.3f} "
          f"(max {mm[:, 0].max():.3f}), mean p {mm[:, 1].mean():.3f}, mean z {mm[:, 2].mean():.2f}, p < 0.05 in "
          f"{(mm[:, 1] < 0.05).mean():.0%}")
    print(f"unrelated 95th percentile below {NULL_P95_LEVEL} from {minimum} s on (library MIN_SYNC_SECONDS = {MIN_SYNC_SECONDS})")
    if args.json:
        args.json.write_text(json.dumps({"phi": phi, "fps": FPS, "level": NULL_P95_LEVEL, "minimum_seconds": minimum,
                                         "rows": out, "mismatched": mm.tolist()}, indent=1))


if __name__ == "__main__":
    main()
