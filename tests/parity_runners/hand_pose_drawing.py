"""Parity runner for V2 hand-pose condition images (kind ``hand_pose_drawing``).

Everything comes from the manifest: the expected PNGs are the keys of ``files`` (their stems name the
frames in ``pose_inputs.safetensors``: ``<stem>.hands``, ``<stem>.hands_score``, ``<stem>.draw_pose_params``)
and the output size is each PNG's shape. The PNG channel order is the array order fed to the encoder (RGB).
"""
from __future__ import annotations

import cv2
import numpy as np

from echomimic_lib.pose.drawing import draw_hand_frame
from tests.parity_runners._common import ParityCase, assert_close, assert_equal


def _inputs_file(case: ParityCase) -> str:
    for name in case.manifest.get("inputs", {}):
        if name.endswith(".safetensors"):
            return name
    return "pose_inputs.safetensors"


def _tolerance(case: ParityCase) -> float:
    """Max abs tolerance in uint8 steps: a number or {"png": n} in the manifest; a text such as
    "exact match (uint8)" means exact (ParityCase.tolerance only understands numbers and dicts)."""
    tol = case.manifest.get("tolerance_suggestion")
    if isinstance(tol, (int, float, dict)):
        return case.tolerance("png", 0.0)
    return 0.0


def run(case: ParityCase) -> None:
    inputs = case.tensors(_inputs_file(case))
    files = {k: v for k, v in case.manifest["files"].items() if k.lower().endswith(".png")}
    assert files, f"{case.name}: the manifest lists no expected PNG files"
    tol = _tolerance(case)
    for fname, meta in files.items():
        stem = fname.rsplit(".", 1)[0]
        for key in ("hands", "hands_score", "draw_pose_params"):
            assert f"{stem}.{key}" in inputs, f"{case.name}: {stem}.{key} missing from the pose inputs"
        bgr = cv2.imread(str(case.path(fname)), cv2.IMREAD_COLOR)
        assert bgr is not None, f"{case.name}: cannot read {fname}"
        expected = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if "shape" in meta:
            assert list(expected.shape) == list(meta["shape"]), f"{fname}: PNG shape {expected.shape} != manifest {meta['shape']}"
        h, w = expected.shape[:2]
        got = draw_hand_frame(inputs[f"{stem}.hands"], inputs[f"{stem}.hands_score"], inputs[f"{stem}.draw_pose_params"], (w, h))
        assert got.dtype == np.uint8
        if tol > 0:
            assert_close(fname, got, expected, tol)
        else:
            assert_equal(fname, got, expected)
