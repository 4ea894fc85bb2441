"""CPU benchmark: face-landmark extraction, motion sync (aligner) and drawing, in frames per second.

Usage:  .venv/bin/python bench/bench_landmarks.py [--frames 96] [--sync-frames 240] [--video PATH] [--models-dir DIR]
Defaults use the shared test media (../shared/data). Prints one line per stage and the peak RSS.
"""
from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echomimic_lib.landmarks.drawing import draw_landmark_sequence  # noqa: E402
from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor  # noqa: E402
from echomimic_lib.landmarks.motion_sync import motion_sync  # noqa: E402
from echomimic_lib.io.video_io import read_video  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def _line(label: str, n: int, seconds: float) -> None:
    print(f"{label:<52} {n / seconds:8.1f} frames/s  ({n} frames in {seconds:.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=96, help="driving frames to run the landmarker on")
    ap.add_argument("--sync-frames", type=int, default=240, help="frames for the aligner / drawing runs")
    ap.add_argument("--video", type=Path, default=DATA / "video" / "driving_a.mp4")
    ap.add_argument("--image", type=Path, default=DATA / "images" / "portrait_a.png")
    ap.add_argument("--models-dir", type=Path, default=DATA / "mediapipe")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import cv2

    clip = read_video(args.video, max_frames=args.frames, with_audio=False)
    ref = np.ascontiguousarray(cv2.resize(cv2.imread(str(args.image))[:, :, ::-1], (512, 512)))
    h, w = clip.frames.shape[1:3]
    with FaceLandmarkExtractor(models_dir=args.models_dir) as ex:
        ex.extract(clip.frames[:2])  # warm-up
        t = time.perf_counter()
        seq = ex.extract(clip.frames, policy="interpolate")
        t_ext = time.perf_counter() - t
        reference = ex.extract(ref)
    _line(f"extraction ({w}x{h}, FaceLandmarker + mesh)", len(seq), t_ext)

    reps = int(np.ceil(args.sync_frames / len(seq)))
    idx = np.tile(np.arange(len(seq)), reps)[: args.sync_frames]
    drv = seq.take(idx)
    for mode in ("reference", "paper"):
        t = time.perf_counter()
        px = motion_sync(drv.lmks, drv.lmks3d, drv.trans_mat, reference.lmks[0], reference.lmks3d[0],
                         reference.trans_mat[0], mode=mode)
        _line(f"aligner (motion sync, {mode} mode)", len(px), time.perf_counter() - t)
    t = time.perf_counter()
    draw_landmark_sequence(px, (512, 512), parts="pose", coord_size=(512, 512))
    _line("drawing (pose parts, 512x512)", len(px), time.perf_counter() - t)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
