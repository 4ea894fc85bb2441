"""V1 audio-mode reference preprocessing: face mask and square face crop from a face box.

Rules (V1 ``infer_audio2vid.py``, pinned by the landmark_drawing fixture):

- face box: among detections with probability > 0.8, the largest; corners rounded to integers;
- mask: the box dilated by ``int(mask_dilation * box height)`` rows and ``int(mask_dilation *
  box width)`` columns on each side, filled with 255 (clipped to the image; V1 lets a negative
  start wrap around, which empties the mask; we clip instead);
- crop rectangle: the box dilated by ``int(crop_dilation * height/width)``, clipped to the image;
  V1 pads the *bottom* with the horizontal padding (``reference_quirks=True`` keeps that);
- square: side ``min(w, h)`` of the rectangle, centred on it (integer centre), clipped;
- image and mask are cut to that square and resized (bilinear) to ``width`` x ``height``.

No face: by default a clear error; ``no_face="whole_image"`` uses the whole image resized to
``width`` x ``height`` with an all-ones mask of that size (V1 instead keeps the image at its own
size with a mask of that size, which then does not match the video size).

Box providers for real images: :func:`face_box_from_landmarks` (extent of the face-mesh landmarks,
as the fixture's box) and :class:`FaceBoxDetector` (MediaPipe BlazeFace short-range detector).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import EchoMimicError, NoFaceError
from ._image import as_rgb_uint8
from .mp_models import import_mediapipe, resolve_model


@dataclass
class V1FaceCrop:
    image: np.ndarray                 # (height, width, 3) uint8, same channel order as the input
    mask: np.ndarray                  # (height, width) uint8, 0 / 255 (bilinear edges); tensor = mask / 255
    box: tuple[int, int, int, int] | None          # rounded face box x0, y0, x1, y1 (None: no face)
    crop_rect: tuple[int, int, int, int] | None    # dilated, clipped rectangle
    square: tuple[int, int, int, int] | None       # square actually cut from the image

    def mask_tensor(self):
        """The V1 face-locator input: float32 (1, 1, 1, H, W) in [0, 1]."""
        import torch

        return torch.from_numpy(self.mask.astype(np.float32) / 255.0)[None, None, None]


def select_face_box(boxes, probs, threshold: float = 0.8) -> np.ndarray | None:
    """The largest box (x0, y0, x1, y1) among those with probability > ``threshold``; None if none."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if len(boxes) != len(probs):
        raise EchoMimicError(f"{len(boxes)} face boxes but {len(probs)} probabilities.")
    keep = [b for b, p in zip(boxes, probs) if p > threshold]
    if not keep:
        return None
    return max(keep, key=lambda b: (b[3] - b[1]) * (b[2] - b[0]))  # first of equal areas wins


def square_crop_rect(rect, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Centred square of side min(w, h) inside ``rect`` (x0, y0, x1, y1), clipped to the image."""
    h, w = image_hw
    x0, y0, x1, y1 = (int(v) for v in rect)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    side = min(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    nx0, ny0 = max(0, cx - side // 2), max(0, cy - side // 2)
    nx1, ny1 = min(w, nx0 + side), min(h, ny0 + side)
    if nx1 - nx0 != ny1 - ny0:
        side = min(nx1 - nx0, ny1 - ny0)
        nx1, ny1 = nx0 + side, ny0 + side
    return nx0, ny0, nx1, ny1


def v1_face_mask_and_crop(image, box, width: int = 512, height: int = 512, mask_dilation: float = 0.1,
                          crop_dilation: float = 0.5, reference_quirks: bool = True,
                          no_face: str = "error") -> V1FaceCrop:
    """Face mask + square crop of ``image`` (H, W, 3 uint8) for the face ``box`` (x0, y0, x1, y1)."""
    import cv2

    if no_face not in ("error", "whole_image"):
        raise EchoMimicError("no_face must be 'error' or 'whole_image'.")
    img = as_rgb_uint8(image, "reference image")
    h, w = img.shape[:2]
    if box is None:
        if no_face == "error":
            raise NoFaceError("no face found in the reference image; use a portrait with one visible face, or "
                              "choose no_face='whole_image' to use the whole image with an all-ones mask.")
        out = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
        return V1FaceCrop(out, np.full((height, width), 255, np.uint8), None, None, None)
    x0, y0, x1, y1 = (int(v) for v in np.round(np.asarray(box, dtype=np.float64)[:4]).astype(np.int64))
    if x1 <= x0 or y1 <= y0:
        raise EchoMimicError(f"face box {tuple(box)} is empty; it must be (x0, y0, x1, y1) with x1 > x0, y1 > y0.")
    bh, bw = y1 - y0, x1 - x0
    mask = np.zeros((h, w), np.uint8)
    rp, cp = int(bh * mask_dilation), int(bw * mask_dilation)
    mask[max(0, y0 - rp): max(0, y1 + rp), max(0, x0 - cp): max(0, x1 + cp)] = 255
    rpc, cpc = int(bh * crop_dilation), int(bw * crop_dilation)
    bottom_pad = cpc if reference_quirks else rpc
    rect = (max(0, x0 - cpc), max(0, y0 - rpc), min(x1 + cpc, w), min(y1 + bottom_pad, h))
    sq = square_crop_rect(rect, (h, w))
    if sq[2] <= sq[0] or sq[3] <= sq[1]:
        raise EchoMimicError(f"face box {tuple(box)} lies outside the {w}x{h} image.")
    crop = cv2.resize(img[sq[1]:sq[3], sq[0]:sq[2]], (width, height), interpolation=cv2.INTER_LINEAR)
    mcrop = cv2.resize(mask[sq[1]:sq[3], sq[0]:sq[2]], (width, height), interpolation=cv2.INTER_LINEAR)
    return V1FaceCrop(crop, mcrop, (x0, y0, x1, y1), rect, sq)


# ---------------- box providers ----------------

def face_box_from_landmarks(lmks, image_size: tuple[int, int]) -> np.ndarray:
    """Extent (x0, y0, x1, y1) in pixels of normalised face-mesh landmarks of a (W, H) image."""
    xy = np.asarray(lmks, dtype=np.float64)[:, :2] * np.array(image_size, dtype=np.float64)
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)])


class FaceBoxDetector:
    """MediaPipe BlazeFace (short range) face boxes: ``detect(image) -> (boxes (N, 4) xyxy, scores (N,))``."""

    def __init__(self, model_path=None, models_dir=None, download: bool = False, min_confidence: float = 0.5):
        path = resolve_model("face_detector", model_path, models_dir, download)
        mp, base_options, _, fd = import_mediapipe()
        self._mp = mp
        self._det = fd.FaceDetector.create_from_options(fd.FaceDetectorOptions(
            base_options=base_options(model_asset_path=str(path)), min_detection_confidence=min_confidence))
        self._finalizer = weakref.finalize(self, self._det.close)
        self._finalizer.atexit = False  # MediaPipe's executor is already gone at interpreter exit

    def detect(self, image) -> tuple[np.ndarray, np.ndarray]:
        rgb = as_rgb_uint8(image, "image")
        res = self._det.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb))
        boxes, scores = [], []
        for d in res.detections:
            b = d.bounding_box
            boxes.append([b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height])
            scores.append(max((c.score for c in d.categories), default=0.0))
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64)

    def close(self) -> None:
        if getattr(self, "_det", None) is not None:
            self._finalizer()
            self._det = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def prepare_v1_reference(image, width: int = 512, height: int = 512,
                         box_provider: str | Callable = "landmarks", models_dir=None, model_path=None,
                         download: bool = False, no_face: str = "error", threshold: float = 0.8,
                         **kwargs) -> V1FaceCrop:
    """Reference image -> :class:`V1FaceCrop` (cropped image + mask at ``width`` x ``height``).

    box_provider: ``"landmarks"`` (face-mesh extent, one face required), ``"detector"`` (BlazeFace,
    largest face with score > ``threshold``) or a callable ``image -> (boxes, probs)``.
    Extra keyword arguments go to :func:`v1_face_mask_and_crop`.
    """
    img = as_rgb_uint8(image, "reference image")
    h, w = img.shape[:2]
    if callable(box_provider):
        boxes, probs = box_provider(img)
    elif box_provider == "detector":
        with FaceBoxDetector(model_path, models_dir, download) as det:
            boxes, probs = det.detect(img)
    elif box_provider == "landmarks":
        from .extractor import FaceLandmarkExtractor

        with FaceLandmarkExtractor(model_path, models_dir, download, multiple_faces="largest") as ex:
            faces = ex.detect(img)
        boxes = [face_box_from_landmarks(f["lmks"], (w, h)) for f in faces]
        probs = [1.0] * len(boxes)
    else:
        raise EchoMimicError(f"unknown box_provider '{box_provider}'; use 'landmarks', 'detector' or a callable.")
    box = select_face_box(boxes, probs, threshold) if len(boxes) else None
    return v1_face_mask_and_crop(img, box, width, height, no_face=no_face, **kwargs)
