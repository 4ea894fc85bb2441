"""What goes into and comes out of DWPose's two ONNX models, as plain numpy (no ONNX Runtime here; the models
themselves are run by :class:`echomimic_lib.pose.dwpose.DWPoseDetector`).

Two ONNX models from Hugging Face ``yzd-v/DWPose``:

- ``yolox_l.onnx`` person detector: input (1, 3, 640, 640) = the frame letterboxed (scaled to fit, top-left,
  padded with 114), BGR, float32 0..255; output (1, A, 5 + classes) raw YOLOX predictions for the A = 8400
  anchors of strides 8/16/32 (objectness and class scores already sigmoid). Decoding: centre =
  (offset + grid cell) * stride, size = exp(log-size) * stride; person score = objectness * class 0;
  score > 0.1, NMS IoU 0.45, keep score > 0.3.
- ``dw-ll_ucoco_384.onnx`` whole-body pose (RTMPose/SimCC): input (1, 3, 384, 288) = each person box scaled by
  1.25, widened/heightened to aspect 288:384, affine-warped, RGB normalised with mean (123.675, 116.28,
  103.53) and std (58.395, 57.12, 57.375); outputs SimCC x (1, 133, 576) and y (1, 133, 768) (split ratio 2):
  keypoint = argmax / 2 in the 288 x 384 input, score = min(max x, max y) (can exceed 1), then mapped back.

The 133 COCO-WholeBody keypoints become the released format: OpenPose-18 body order with an inserted neck
(mean of the shoulders, score 1 when both shoulder scores > 0.3 else 0), 68 face points (24:92 after the
neck insertion), hands 92:113 (left) and 113:134 (right); ``subset`` holds the keypoint index, or -1 where
the score is <= 0.3. All coordinates are normalised by the frame's width/height;
:func:`echomimic_lib.pose.dwpose.extract_pose_sequence` then applies the half-body crop
(:mod:`echomimic_lib.pose.align`) so they are normalised to the crop.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .._lazy import cv2
from ..errors import EchoMimicError

DET_INPUT = (640, 640)  # (W, H)
POSE_INPUT = (288, 384)  # (W, H)
PAD_VALUE = 114
STRIDES = (8, 16, 32)
NMS_IOU, DET_SCORE, PERSON_SCORE = 0.45, 0.1, 0.3
BOX_PADDING = 1.25
SIMCC_SPLIT = 2.0
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
KEYPOINT_THRESHOLD = 0.3
# OpenPose-18 slot <- COCO-WholeBody index (17 = the inserted neck)
OPENPOSE_FROM_COCO = (0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
FACE = slice(23, 91)  # in the 133-point layout (24:92 once the neck is inserted)
LEFT_HAND, RIGHT_HAND = slice(91, 112), slice(112, 133)


# ---------------------------------------------------------------------------------------------- detector
def letterbox(image_rgb: np.ndarray, size: tuple[int, int] = DET_INPUT, bgr: bool = True) -> tuple[np.ndarray, float]:
    """YOLOX input: the image scaled to fit ``size`` (W, H) at the top-left, padded with 114. Returns the
    (1, 3, H, W) float32 tensor and the scale factor."""
    h, w = image_rgb.shape[:2]
    r = min(size[1] / h, size[0] / w)
    nw, nh = int(w * r), int(h * r)
    canvas = np.full((size[1], size[0], 3), PAD_VALUE, dtype=np.uint8)
    resized = cv2.resize(image_rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas[:nh, :nw] = resized[..., ::-1] if bgr else resized
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32), r


def yolox_grid(size: tuple[int, int] = DET_INPUT, strides: Sequence[int] = STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Anchor cells (A, 2) as (x, y) and their strides (A, 1), row-major per stride level."""
    cells, steps = [], []
    for s in strides:
        gy, gx = np.mgrid[0 : size[1] // s, 0 : size[0] // s]
        cells.append(np.stack([gx.ravel(), gy.ravel()], axis=1))
        steps.append(np.full((gx.size, 1), s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(steps).astype(np.float32)


def decode_yolox(raw: np.ndarray, size: tuple[int, int] = DET_INPUT) -> tuple[np.ndarray, np.ndarray]:
    """Raw YOLOX output (1, A, 5 + C) -> boxes (A, 4) xyxy in input pixels and class scores (A, C)."""
    pred = np.asarray(raw, dtype=np.float32).reshape(-1, raw.shape[-1])
    cells, steps = yolox_grid(size)
    if len(pred) != len(cells):
        raise EchoMimicError(
            f"person detector output has {len(pred)} anchors; a {size[0]}x{size[1]} YOLOX model has {len(cells)}. Wrong detector file?"
        )
    xy = (pred[:, :2] + cells) * steps
    wh = np.exp(pred[:, 2:4]) * steps
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
    return boxes, pred[:, 4:5] * pred[:, 5:]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression (areas with the +1 pixel convention of YOLOX)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        if not order:
            break
        rest = np.array(order)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        overlap = w * h / (areas[i] + areas[rest] - w * h)
        order = [int(j) for j, o in zip(rest, overlap) if o <= iou]
    return keep


# ---------------------------------------------------------------------------------------------- pose
def box_to_center_scale(box: np.ndarray, input_size: tuple[int, int] = POSE_INPUT, padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """Centre and (w, h) of the pose crop: the box scaled by ``padding`` and grown to the model's aspect."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    w, h = (x2 - x1) * padding, (y2 - y1) * padding
    aspect = input_size[0] / input_size[1]
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h])


def pose_input(image_rgb: np.ndarray, center: np.ndarray, scale: np.ndarray, input_size: tuple[int, int] = POSE_INPUT) -> np.ndarray:
    """Affine crop around ``center`` covering ``scale`` (w, h), resized to ``input_size``, normalised: (1, 3, H, W)."""
    s = input_size[0] / scale[0]
    mat = np.array([[s, 0, input_size[0] / 2 - s * center[0]], [0, s, input_size[1] / 2 - s * center[1]]], dtype=np.float64)
    crop = cv2.warpAffine(image_rgb, mat, input_size, flags=cv2.INTER_LINEAR)
    x = (crop.astype(np.float32) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split: float = SIMCC_SPLIT) -> tuple[np.ndarray, np.ndarray]:
    """SimCC vectors (K, Wx), (K, Wy) -> keypoints (K, 2) in model-input pixels and scores (K,).
    Score = the smaller of the two peak values; keypoints with score <= 0 are set to -1."""
    xs, ys = np.argmax(simcc_x, axis=-1), np.argmax(simcc_y, axis=-1)
    vals = np.minimum(np.max(simcc_x, axis=-1), np.max(simcc_y, axis=-1)).astype(np.float64)
    locs = np.stack([xs, ys], axis=-1).astype(np.float64) / split
    locs[vals <= 0] = -1.0
    return locs, vals


def wholebody_to_released(kpts: np.ndarray, scores: np.ndarray, image_size: tuple[int, int]) -> dict:
    """(P, 133, 2) pixel keypoints + (P, 133) scores of P people -> released-format dict normalised to the image."""
    w, h = image_size
    p = len(kpts)
    kpts = np.asarray(kpts, np.float64).reshape(p, 133, 2)
    undetected = (kpts == -1.0).all(axis=-1)
    kpts = kpts / np.array([w, h], np.float64)
    kpts[undetected] = -1.0
    scores = np.asarray(scores, np.float64).reshape(p, 133)
    neck = kpts[:, [5, 6]].mean(axis=1, keepdims=True)
    neck_score = ((scores[:, 5] > KEYPOINT_THRESHOLD) & (scores[:, 6] > KEYPOINT_THRESHOLD)).astype(np.float64)[:, None]
    body17 = np.concatenate([kpts[:, :17], neck], axis=1)
    score17 = np.concatenate([scores[:, :17], neck_score], axis=1)
    order = list(OPENPOSE_FROM_COCO)
    body, body_score = body17[:, order], score17[:, order]
    subset = np.where(body_score > KEYPOINT_THRESHOLD, np.arange(18)[None] + 18 * np.arange(p)[:, None], -1).astype(np.float64)
    return {
        "bodies": {"candidate": body.reshape(p * 18, 2), "subset": subset, "score": body_score},
        "hands": np.concatenate([kpts[:, LEFT_HAND], kpts[:, RIGHT_HAND]]),
        "hands_score": np.concatenate([scores[:, LEFT_HAND], scores[:, RIGHT_HAND]]),
        "faces": kpts[:, FACE],
        "faces_score": scores[:, FACE],
        "draw_pose_params": [h, w, 0, h, 0, w],
    }
