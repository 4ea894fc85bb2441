"""Parity runner: V1 part-aware motion sync (reference-compatible mode).

Inputs, expected arrays, image size, tolerance and the pose-mode PNGs all come from the manifest.
"""
from __future__ import annotations

import re

from tests.parity_runners._common import assert_close, assert_equal
from tests.parity_runners.landmark_drawing import read_png_rgb, visualiser_options


def _image_size(manifest: dict) -> int:
    text = " ".join(str(v) for v in manifest.get("expected_description", {}).values())
    m = re.search(r"(\d+)\s*x\s*(\d+)", text)
    if m:
        assert m.group(1) == m.group(2), "motion sync projects to a square image"
        return int(m.group(1))
    return 512


def run(case) -> None:
    from echomimic_lib.landmarks.drawing import draw_landmarks
    from echomimic_lib.landmarks.motion_sync import motion_sync

    m = case.manifest
    files = m["files"]
    in_file = next(k for k in files if k.startswith("inputs") and k.endswith(".safetensors"))
    exp_file = next(k for k in files if k.startswith("expected") and k.endswith(".safetensors"))
    x = {k: v.copy() for k, v in case.tensors(in_file).items()}
    expected = case.tensors(exp_file)["projected_landmarks"]
    size = _image_size(m)
    got = motion_sync(
        x["driver_lmks"], x["driver_lmks3d"], x["driver_trans_mat"],
        x["reference_lmks"], x["reference_lmks3d"], x["reference_trans_mat"],
        mode="reference", image_size=size,
    )
    tol = case.tolerance("projected_landmarks_max_abs_px", 1e-6)
    assert_close("projected_landmarks", got, expected, tol)

    pngs = [k for k in files if k.endswith(".png")]
    for name in pngs:
        frame = int(re.search(r"frame(\d+)", name).group(1))
        parts, forehead = visualiser_options(name + " " + str(files[name]))
        img = draw_landmarks(got[frame], (size, size), parts=parts, normed=False, forehead_oval=forehead)
        assert_equal(name, img, read_png_rgb(case.path(name)))
