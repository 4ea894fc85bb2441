"""What ``--stabilize`` does to V2 hand poses, per level, on the released DWPose demo sequences.

Usage:  .venv/bin/python bench/stabilize_poses.py [--pose DIR ...] [--size 768] [--json PATH]
Defaults: ../shared/data/pose/01 and ../shared/data/pose/fight (read in place), JSON to $OUT/stabilize_poses.json
when $OUT is set. Besides the real sequences, "01+dropouts" is 01 with simulated detector dropouts (seeded: each
hand keypoint track loses 1-3 frames, score 0.1, at 2 % of its frames), since the released folders have no
keypoint below the detector's threshold.

Per level (off = the detector's output):
- shake: mean |x[t+1] - 2 x[t] + x[t-1]| of the seen hand keypoints, px at 768 (all frames, and "still": frames
  where the raw wrist moves under 2 px/frame);
- blinks: flips of a hand keypoint's visibility (score > 0.3 and pixel coordinates >= 1, as drawn) between frames;
- fidelity: distance stabilised - raw over the raw seen keypoints, mean and 95th percentile, px at 768 (draw-area
  units x 768);
- flicker: mean |difference| of consecutive drawn condition frames (the pack's drawing at --size, uint8 levels), all
  pairs and "still" pairs (both raw wrists under 2 px/frame);
- motion kept: on fast frames (raw wrist speed above its 90th percentile) the wrist path length stabilised/raw,
  and the peak wrist speed stabilised/raw.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echomimic_lib.pose import draw_hands_batch, load_pose  # noqa: E402
from echomimic_lib.pose.stabilize import REF_PX, SEEN_SCORE, seen_hand_points, stabilize_poses  # noqa: E402
from echomimic_lib.temporal import STABILIZE_LEVELS  # noqa: E402
from echomimic_lib.temporal.keypoints import shake  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pose"
WRISTS = [0, 21]  # of the 42 hand points (left hand 0..20, right hand 21..41)


def with_dropouts(seq, rate: float = 0.02, seed: int = 0):
    """A copy of ``seq`` whose hand keypoints drop out (score 0.1) for 1-3 frames at ``rate`` of their frames."""
    rng = np.random.default_rng(seed)
    out = seq.copy()
    f = len(seq)
    sc = out.hands_score.reshape(f, 42)
    for j in range(42):
        for t in np.flatnonzero(rng.random(f) < rate):
            sc[t : t + int(rng.integers(1, 4)), j] = 0.1
    out.source = f"{seq.source} + simulated dropouts"
    return out


def _flat(seq):
    f = len(seq)
    return seq.hands.reshape(f, 42, 2), seq.hands_score.reshape(f, 42)


def visible(seq, canvas: int = 800) -> np.ndarray:
    """(F, 42): drawn and bright enough to count (score above the threshold, pixel coordinates >= 1)."""
    pts, sc = _flat(seq)
    return (sc > SEEN_SCORE) & (np.floor(pts * canvas) >= 1).all(axis=-1)


def blinks(seq) -> int:
    v = visible(seq)
    return int((v[1:] != v[:-1]).sum())


def wrist_speed(seq) -> np.ndarray:
    """(F-1, 2) wrist speed, px at 768 per frame."""
    pts, _ = _flat(seq)
    return np.linalg.norm(np.diff(pts[:, WRISTS], axis=0), axis=-1) * REF_PX


def flicker(seq, size: int, still: np.ndarray, chunk: int = 32) -> tuple[float, float]:
    """Mean |frame[t+1] - frame[t]| of the drawn condition frames: over all pairs, and over the ``still`` pairs."""
    total, total_still, prev = 0.0, 0.0, None
    for a in range(0, len(seq), chunk):
        frames = draw_hands_batch(seq, range(a, min(a + chunk, len(seq))), (size, size)).astype(np.int16)
        frames = frames if prev is None else np.concatenate([prev, frames])
        diff = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
        first = a - 1 if prev is not None else 0  # pair index of diff[0]
        total += diff.sum()
        total_still += diff[still[first : first + len(diff)]].sum()
        prev = frames[-1:]
    return total / (len(seq) - 1), total_still / max(1, still.sum())


def measure(raw, out, size: int, raw_flicker=None) -> dict:
    pts_r, sc_r = _flat(raw)
    pts_o, _ = _flat(out)
    seen_r = seen_hand_points(pts_r, sc_r)
    seen_o = seen_hand_points(*_flat(out))
    speed_r = wrist_speed(raw)
    still = np.zeros(seen_r.shape, dtype=bool)
    slow = (speed_r < 2.0).all(axis=1)  # both wrists
    still[1:-1] = (slow[1:] & slow[:-1])[:, None]
    fast = speed_r > np.percentile(speed_r, 90)
    d = np.linalg.norm(pts_o - pts_r, axis=-1)[seen_r] * REF_PX
    flick_o = flicker(out, size, slow)
    flick_r = raw_flicker or flicker(raw, size, slow)
    speed_o = wrist_speed(out)
    return {
        "shake_px": shake(pts_o * REF_PX, seen_o),
        "shake_still_px": shake(pts_o * REF_PX, seen_o & still),
        "blinks": blinks(out),
        "fidelity_mean_px": float(d.mean()),
        "fidelity_p95_px": float(np.percentile(d, 95)),
        "fidelity_mean_units": float(d.mean() / REF_PX),
        "fidelity_p95_units": float(np.percentile(d, 95) / REF_PX),
        "flicker": float(flick_o[0]),
        "flicker_still": float(flick_o[1]),
        "flicker_raw": float(flick_r[0]),
        "flicker_still_raw": float(flick_r[1]),
        "fast_path_ratio": float(speed_o[fast].sum() / speed_r[fast].sum()),
        "peak_speed_ratio": float(speed_o.max() / speed_r.max()),
    }


def run(folders: list[Path], size: int) -> dict:
    cases = []
    for folder in folders:
        seq = load_pose(folder)
        cases.append((folder.name, seq))
        if folder.name == "01":
            cases.append(("01+dropouts", with_dropouts(seq)))
    results = {}
    for name, seq in cases:
        off = measure(seq, seq, size)
        raw_flicker = (off["flicker"], off["flicker_still"])
        results[name] = {level: measure(seq, stabilize_poses(seq, level), size, raw_flicker) if level != "off" else off
                         for level in STABILIZE_LEVELS}
    return {"size": size, "fps": {n: s.fps for n, s in cases}, "frames": {n: len(s) for n, s in cases}, "results": results}


def table(report: dict) -> str:
    head = (f"{'sequence':<12} {'level':<7} {'shake px':>9} {'still':>6} {'blinks':>6} {'fid mean':>8} {'fid p95':>8} "
            f"{'flicker':>7} {'still':>6} {'fast path':>9} {'peak spd':>8}")
    lines = [head, "-" * len(head)]
    for name, levels in report["results"].items():
        for level, m in levels.items():
            lines.append(f"{name:<12} {level:<7} {m['shake_px']:9.2f} {m['shake_still_px']:6.2f} {m['blinks']:6d} "
                         f"{m['fidelity_mean_px']:8.2f} {m['fidelity_p95_px']:8.2f} {m['flicker']:7.3f} {m['flicker_still']:6.3f} "
                         f"{m['fast_path_ratio']:9.3f} {m['peak_speed_ratio']:8.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pose", nargs="+", type=Path, default=[DATA / "01", DATA / "fight"], help="pose folders / .npz")
    ap.add_argument("--size", type=int, default=768, help="condition frame size for the flicker measure (default 768)")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here (default: $OUT/stabilize_poses.json)")
    args = ap.parse_args(argv)
    report = run(args.pose, args.size)
    print(table(report))
    path = args.json or (Path(os.environ["OUT"]) / "stabilize_poses.json" if os.environ.get("OUT") else None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
