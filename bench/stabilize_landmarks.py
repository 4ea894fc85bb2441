"""Benchmark of ``--stabilize`` for the V1 driving landmarks: jitter taken out, lip sync and blinks kept.

Usage:  .venv/bin/python bench/stabilize_landmarks.py [--video PATH] [--model PATH] [--image PATH] [--json OUT]

On the shared driving video (every frame, as ``animate --landmarks VIDEO`` reads it) and per level:
(a) jitter per part (``evaluate.stability.landmark_jitter``, % of the eye distance per frame^2) of the driver's own
landmarks, raw vs stabilised; (b) lip sync: the mouth opening (``evaluate.sync.mouth_opening``) stabilised vs raw:
correlation, lag of the cross-correlation peak (frames), amplitude ratio (std); shake: ``temporal.keypoints.shake`` of the
landmarks, head motion included (px at 512 per frame^2, all 478 points); (c) blinks: depth of the eye-opening
minima, stabilised / raw; (d) fidelity: mean and 95th-percentile displacement of the landmarks, px at 512; (e) flicker
of the drawn conditions (the landmarks mode's parts at 512): mean absolute difference of consecutive frames, for the
driver's own drawing and the motion-synced one (onto the shared portrait, animate's default).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echomimic_lib.evaluate.face import face_scale  # noqa: E402
from echomimic_lib.evaluate.stability import landmark_jitter  # noqa: E402
from echomimic_lib.evaluate.sync import mouth_opening  # noqa: E402
from echomimic_lib.landmarks import draw_landmark_sequence  # noqa: E402
from echomimic_lib.landmarks.conditions import SYNC_SIZE, driver_pixels  # noqa: E402
from echomimic_lib.landmarks.stabilize import stabilize_landmarks  # noqa: E402
from echomimic_lib.temporal import STABILIZE_LEVELS  # noqa: E402
from echomimic_lib.temporal.keypoints import shake  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
EYELID_PAIRS = ((159, 145), (386, 374))  # upper, lower eyelid (right, left eye)
JITTER_PARTS = ("face_oval", "nose", "left_brow", "left_eye", "mouth", "all")


def eye_opening(px: np.ndarray) -> np.ndarray:
    """(F,) mean eyelid gap in units of the eye-corner distance."""
    gap = np.mean([np.linalg.norm(px[:, a, :2] - px[:, b, :2], axis=-1) for a, b in EYELID_PAIRS], axis=0)
    return gap / np.maximum(face_scale(px), 1e-9)


def lag_of_peak(a: np.ndarray, b: np.ndarray, max_lag: int = 6) -> int:
    """The shift of ``b`` against ``a`` (frames) at which their correlation peaks."""
    a, b = a - a.mean(), b - b.mean()
    best = max(range(-max_lag, max_lag + 1), key=lambda k: float(np.dot(a[max(0, k):len(a) + min(0, k)],
                                                                          b[max(0, -k):len(b) - max(0, k)])))
    return int(best)


def blink_depth_ratio(raw: np.ndarray, stab: np.ndarray) -> tuple[float, int]:
    """Blinks = local minima of the raw eye opening below its median by more than half the deepest dip; returns the
    mean of (median - stabilised minimum near it) / (median - raw minimum), and the number of blinks."""
    med = float(np.median(raw))
    thresh = med - 0.5 * (med - raw.min())
    dips = [t for t in range(1, len(raw) - 1) if raw[t] < thresh and raw[t] <= raw[t - 1] and raw[t] <= raw[t + 1]]
    if not dips:
        return float("nan"), 0
    ratios = [(np.median(stab) - stab[max(0, t - 1):t + 2].min()) / (med - raw[t]) for t in dips]
    return float(np.mean(ratios)), len(dips)


def flicker(px: np.ndarray) -> float:
    img = draw_landmark_sequence(px, (SYNC_SIZE, SYNC_SIZE), "landmarks", normed=False,
                                 coord_size=(SYNC_SIZE, SYNC_SIZE)).astype(np.float32)
    return float(np.abs(np.diff(img, axis=0)).mean())


def measure(raw, stab, reference, ex) -> dict:
    pr, ps = raw.pixels((SYNC_SIZE, SYNC_SIZE)), stab.pixels((SYNC_SIZE, SYNC_SIZE))
    jr, js = landmark_jitter(pr), landmark_jitter(ps)
    mr, ms = mouth_opening(pr), mouth_opening(ps)
    depth, blinks = blink_depth_ratio(eye_opening(pr), eye_opening(ps))
    disp = np.linalg.norm(ps - pr, axis=-1)
    sr, ss = driver_pixels(raw, reference, "reference", ex), driver_pixels(stab, reference, "reference", ex)
    return {
        "jitter_raw": {k: jr[k] for k in JITTER_PARTS}, "jitter": {k: js[k] for k in JITTER_PARTS},
        "shake_raw": shake(pr), "shake": shake(ps),
        "synced_jitter_raw": landmark_jitter(sr)["all"], "synced_jitter": landmark_jitter(ss)["all"],
        "mouth_corr": float(np.corrcoef(mr, ms)[0, 1]), "mouth_lag": lag_of_peak(mr, ms),
        "mouth_amplitude": float(ms.std() / mr.std()), "blink_depth": depth, "blinks": blinks,
        "disp_mean_px": float(disp.mean()), "disp_p95_px": float(np.percentile(disp, 95)),
        "flicker_raw": flicker(pr), "flicker": flicker(ps), "synced_flicker_raw": flicker(sr), "synced_flicker": flicker(ss),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=DATA / "video" / "driving_a.mp4")
    ap.add_argument("--model", type=Path, default=DATA / "mediapipe" / "face_landmarker_v2_with_blendshapes.task")
    ap.add_argument("--image", type=Path, default=DATA / "images" / "portrait_a.png", help="reference for motion sync")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "stabilize_landmarks.json")
    ap.add_argument("--cache", type=Path, help="save / reuse the extracted driver sequence (.npz)")
    args = ap.parse_args()

    import cv2

    from echomimic_lib.landmarks.conditions import extract_driving_landmarks
    from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor
    from echomimic_lib.landmarks.io import load_sequence, save_sequence

    reference = cv2.cvtColor(cv2.imread(str(args.image)), cv2.COLOR_BGR2RGB)
    with FaceLandmarkExtractor(model_path=args.model) as ex:
        if args.cache and args.cache.is_file():
            raw = load_sequence(args.cache)
        else:
            raw = extract_driving_landmarks(str(args.video), extractor=ex)
            if args.cache:
                save_sequence(args.cache, raw)
        rows = {lv: measure(raw, stabilize_landmarks(raw, lv), reference, ex) for lv in STABILIZE_LEVELS if lv != "off"}

    print(f"{args.video.name}: {len(raw)} frames at {raw.fps:g} fps, {int(raw.valid.sum())} with a face")
    print("jitter (% eye distance / frame^2), raw -> stabilised:")
    print(f"{'level':<8}" + "".join(f"{p:>18}" for p in JITTER_PARTS) + f"{'synced all':>18}")
    for lv, r in rows.items():
        cells = "".join(f"{r['jitter_raw'][p]:>8.3f} -> {r['jitter'][p]:<6.3f}" for p in JITTER_PARTS)
        print(f"{lv:<8}{cells}{r['synced_jitter_raw']:>8.3f} -> {r['synced_jitter']:<6.3f}")
    print(f"{'level':<8}{'shake px':>16}{'mouth corr':>11}{'lag':>5}{'amp':>7}{'blink depth':>13}{'disp mean/p95 px':>18}"
          f"{'flicker own':>16}{'flicker synced':>18}")
    for lv, r in rows.items():
        print(f"{lv:<8}{r['shake_raw']:>7.3f} -> {r['shake']:<5.3f}{r['mouth_corr']:>11.4f}{r['mouth_lag']:>5d}{r['mouth_amplitude']:>7.3f}"
              f"{r['blink_depth']:>8.3f} ({r['blinks']}){r['disp_mean_px']:>9.2f} / {r['disp_p95_px']:<6.2f}"
              f"{r['flicker_raw']:>8.3f}->{r['flicker']:<6.3f}{r['synced_flicker_raw']:>9.3f}->{r['synced_flicker']:<6.3f}")
    doc = {"video": args.video.name, "frames": len(raw), "fps": raw.fps, "reference": args.image.name, "levels": rows}
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
