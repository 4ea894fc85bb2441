"""Parity runner: V1 face-landmark condition images and the V1 audio-mode face mask / crop.

Everything comes from the manifest: keypoint file and its pixel frame, variants (visualiser options
parsed from their descriptions), frames, output sizes (from each expected file's shape), the
preprocessing image, detector boxes, ratios and output files.
"""
from __future__ import annotations

import re

import numpy as np

from tests.parity_runners._common import assert_equal

_FLAG_RE = re.compile(r"\b(draw_[a-z]+|forehead_edge|upface_only)\s*=\s*(True|False)\b")
_FLAG_TO_PART = {"draw_eye": "eyes", "draw_eyebrow": "brows", "draw_iris": "iris", "draw_mouse": "mouth",
                 "draw_nose": "nose", "draw_pupil": "pupils", "draw_head": "face_oval"}


def visualiser_options(text: str) -> tuple[frozenset, bool]:
    """(parts, forehead_oval) from a V1 visualiser description ("pose-mode", "draw_mouse=True", ...)."""
    flags = {"draw_eye": True, "draw_head": False, "draw_iris": True, "draw_eyebrow": True, "draw_mouse": True,
             "draw_nose": True, "draw_pupil": True, "forehead_edge": False, "upface_only": False}
    low = text.lower()
    if "pose-mode" in low or "pose_mode" in low or "pose mode" in low:
        flags.update(draw_iris=False, draw_mouse=False)
    for name, value in _FLAG_RE.findall(text):
        if name not in flags:
            raise AssertionError(f"unknown visualiser option {name} in '{text}'")
        flags[name] = value == "True"
    if flags["upface_only"]:
        raise AssertionError("upface_only is not supported by this runner")
    parts = frozenset(p for f, p in _FLAG_TO_PART.items() if flags[f])
    if flags["forehead_edge"]:
        parts = parts | {"face_oval"}
    return parts, flags["forehead_edge"]


def read_png_rgb(path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, f"cannot read {path}"
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def _frame_key(tensors: dict, frame: int) -> str:
    for key in tensors:
        m = re.search(r"(\d+)$", key)
        if m and int(m.group(1)) == int(frame):
            return key
    raise AssertionError(f"no keypoint tensor for frame {frame} (keys {sorted(tensors)})")


def _run_drawing(case) -> None:
    from echomimic_lib.landmarks.drawing import draw_landmarks

    m = case.manifest
    kp_file = next(name for name in m["inputs"] if name.endswith(".safetensors"))
    desc = m["inputs"][kp_file].get("description", "")
    px = re.search(r"(\d+)-px", desc)
    src = int(px.group(1)) if px else 512
    tensors = case.tensors(kp_file)
    checked = 0
    for fname, info in m["files"].items():
        if not isinstance(info, dict) or "variant" not in info:
            continue
        variant = info["variant"]
        parts, forehead = visualiser_options(variant + " " + m["variants"].get(variant, ""))
        h, w = int(info["shape"][0]), int(info["shape"][1])
        k = np.array(tensors[_frame_key(tensors, info["frame"])], dtype=np.float64)
        k[:, 0] *= w / src  # keypoints are given in src-px coordinates; V1 divides by the output size
        k[:, 1] *= h / src
        got = draw_landmarks(k, (w, h), parts=parts, normed=False, forehead_oval=forehead)
        expected = read_png_rgb(case.path(fname))
        assert_equal(fname, got, expected)
        if "nonzero_pixels" in info:
            assert int(got.any(axis=-1).sum()) == int(info["nonzero_pixels"]), fname
        checked += 1
    assert checked > 0, "no drawing variants in the manifest"


def _run_preprocessing(case) -> None:
    import cv2

    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.landmarks.preprocess import select_face_box, v1_face_mask_and_crop

    p = case.manifest.get("v1_audio_preprocessing")
    if not p:
        return
    img = cv2.imread(str(case.path(p["image"])), cv2.IMREAD_COLOR)  # BGR, as the reference reads it
    assert img is not None, p["image"]
    if "image_size_hw" in p:
        assert list(img.shape[:2]) == list(p["image_size_hw"])
    box = select_face_box(p["detector_boxes_xyxy"], p["detector_probs"])
    assert box is not None, "no detector box above the threshold"
    r = v1_face_mask_and_crop(img, box, int(p["width"]), int(p["height"]), float(p["facemusk_dilation_ratio"]),
                              float(p["facecrop_dilation_ratio"]))
    if "crop_rect_xyxy" in p:
        assert_equal("crop_rect_xyxy", np.array(r.crop_rect), np.array(p["crop_rect_xyxy"]))
    for name in p["outputs"]:
        expected = read_png_rgb(case.path(name))
        if "mask" in name:
            assert_equal(name, r.mask, expected)
        else:
            assert_equal(name, r.image[:, :, ::-1], expected)  # our crop is BGR like the input; PNG is RGB
    nf = p.get("no_face_case")
    if nf:  # our documented behaviour: an error by default, or the whole image at the output size
        try:
            v1_face_mask_and_crop(img, None, int(p["width"]), int(p["height"]))
        except EchoMimicError:
            pass
        else:
            raise AssertionError("no face: expected a clear error by default")
        whole = v1_face_mask_and_crop(img, None, int(p["width"]), int(p["height"]), no_face="whole_image")
        assert whole.image.shape == (int(p["height"]), int(p["width"]), 3)
        assert whole.mask.shape == (int(p["height"]), int(p["width"]))
        if nf.get("mask_all_ones", True):
            assert (whole.mask == 255).all()


def run(case) -> None:
    _run_drawing(case)
    _run_preprocessing(case)
