"""Benchmark: loading a released pose folder + drawing V2 hand-pose condition images on CPU.

    .venv/bin/python bench/bench_pose.py [--folder ../shared/data/pose/01] [--size 768] [--frames 1000]

Prints frames/s for loading (.npy folder -> PoseSequence), for saving/loading our .npz, for drawing
condition images (one frame at a time, as the sampler does per window), and the peak RSS.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echomimic_lib.pose import draw_hands_batch, load_pose_npz, load_released_folder, save_pose_npz  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default=str(ROOT.parent / "shared" / "data" / "pose" / "01"))
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--frames", type=int, default=1000, help="frames to draw after ping-pong retiming")
    ap.add_argument("--window", type=int, default=12, help="frames drawn per call (a context window)")
    args = ap.parse_args()

    t = time.perf_counter()
    seq = load_released_folder(args.folder)
    t_load = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = save_pose_npz(seq, Path(tmp) / "seq.npz")
        t_save = time.perf_counter() - t
        t = time.perf_counter()
        load_pose_npz(path)
        t_npz = time.perf_counter() - t
    long = seq.retime(args.frames, "ping-pong")
    size = (args.size, args.size)
    t = time.perf_counter()
    checksum = 0
    for start in range(0, len(long), args.window):
        window = draw_hands_batch(long, range(start, min(start + args.window, len(long))), size)
        checksum += int(window[:, ::97, ::89].sum())
    t_draw = time.perf_counter() - t
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = len(seq)
    print(f"folder: {args.folder} ({n} frames)")
    print(f"load released .npy folder : {n / t_load:8.1f} frames/s ({t_load * 1000:.0f} ms)")
    print(f"save / load our .npz      : {n / t_save:8.1f} / {n / t_npz:.1f} frames/s")
    label = f"draw {args.size}x{args.size} conditions"
    print(f"{label:<26}: {len(long) / t_draw:8.1f} frames/s ({len(long)} frames, windows of {args.window})")
    label = f"load + draw ({n} frames)"
    print(f"{label:<26}: {n / (t_load + t_draw * n / len(long)):8.1f} frames/s")
    print(f"peak RSS                  : {rss_mb:8.1f} MB   (checksum {checksum})")


if __name__ == "__main__":
    main()
