"""Paste generated frames back into the original picture (or video frames) with a feathered mask.

A generated frame is the model's view of a :class:`~echomimic_lib.frames.crop.CropGeometry`: its ``placement``
rectangle is resized back onto the ``box`` it came from, then blended with weights ``w`` in [0, 1]:
``out = original + w * (generated - original)``. Where ``w == 0`` the original pixel is copied, bit for
bit; where ``w == 1`` the generated pixel is taken as it is.

The weights are a hard *region* (0/1, source pixels), always cut to the crop box, feathered inward: ``w``
rises from 0 at the region's edge to 1 at ``feather`` pixels inside it (smoothstep of the distance to the
edge). Edges that lie on the picture's border are not feathered (nothing is outside to blend with).
Regions:

- ``"face"``: V1's face region (the face box dilated by 10 %, as the V1 face mask), grown by ``dilation``
  times the face size;
- ``"hull"``: the convex hull of the face landmarks, grown by ``dilation`` times the hull's size
  (per frame in video dubbing);
- ``"crop"``: the whole crop rectangle (V2: the half-body crop with a soft border).

Optional colour matching of the generated region to the original: :mod:`echomimic_lib.frames.color_match`.
"""
from __future__ import annotations

import logging

import numpy as np

from .._lazy import cv2
from .color_match import METHODS as COLOR_METHODS
from .color_match import match_colors
from .crop import CropGeometry
from ..errors import EchoMimicError

log = logging.getLogger(__name__)

REGIONS = ("face", "hull", "crop")


def _uint8_frame(image, what: str) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise EchoMimicError(f"{what}: expected an (H, W, 3) picture, got shape {a.shape}.")
    if a.dtype != np.uint8:
        if a.dtype.kind != "f":
            raise EchoMimicError(f"{what}: pixels must be uint8 or float in [0, 1], got {a.dtype}.")
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return a


def warp_to_source(generated, geometry: CropGeometry) -> np.ndarray:
    """The generated frame's placement resized onto the crop box: uint8 (box height, box width, 3)."""
    gen = _uint8_frame(generated, "generated frame")
    ow, oh = geometry.output_size
    if gen.shape[:2] != (oh, ow):
        raise EchoMimicError(f"the generated frames are {gen.shape[1]}x{gen.shape[0]} but the crop was made for "
                             f"{ow}x{oh}; connect the crop from the Reference Preparation / Face Track that made this "
                             "reference, with the sampler's width and height.")
    px0, py0, px1, py1 = geometry.placement
    bx0, by0, bx1, by1 = geometry.box
    region = gen[py0:py1, px0:px1]
    bw, bh = bx1 - bx0, by1 - by0
    shrink = bw < region.shape[1] or bh < region.shape[0]
    # area averaging when shrinking, bicubic when enlarging (a 512-px crop of a 1200-px face comes back at
    # > 40 dB PSNR, bilinear gives ~39 dB)
    return cv2.resize(region, (bw, bh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def grow_polygon(points, amount: float) -> np.ndarray:
    """Convex hull of ``points`` (N, 2) with every vertex moved ``amount`` pixels away from the centroid."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if len(pts) < 3:
        raise EchoMimicError("a landmark hull needs at least 3 points.")
    hull = cv2.convexHull(pts).reshape(-1, 2).astype(np.float64)
    if amount:
        c = hull.mean(axis=0)
        d = hull - c
        n = np.linalg.norm(d, axis=1, keepdims=True)
        hull = hull + amount * d / np.maximum(n, 1e-6)
    return hull


def check_dilation(dilation) -> None:
    """A mask growth of 0 or more (NaN was "cannot convert float NaN to integer" mid-paste)."""
    if not (np.isfinite(dilation) and dilation >= 0):
        raise EchoMimicError(f"dilation must be >= 0 (a fraction of the face size), got {dilation}.")


def region_mask(geometry: CropGeometry, region: str = "face", hull=None, dilation: float = 0.0,
                face_box=None) -> np.ndarray:
    """Hard region uint8 (H, W) in {0, 1} of the original, cut to the crop box. ``hull`` / ``face_box``
    override the geometry's own (per-frame regions in a video)."""
    if region not in REGIONS:
        raise EchoMimicError(f"unknown paste-back region '{region}'; choose one of {', '.join(REGIONS)}.")
    check_dilation(dilation)
    w, h = geometry.source_size
    bx0, by0, bx1, by1 = geometry.box
    mask = np.zeros((h, w), np.uint8)
    if region == "crop":
        mask[by0:by1, bx0:bx1] = 1
        return mask
    if region == "hull":
        pts = hull if hull is not None else geometry.face_hull
        if pts is None:
            raise EchoMimicError("paste-back region 'hull' needs face landmarks: this crop has none (a picture prepared "
                                 "without landmarks); use region 'face' or 'crop'.")
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        ext = pts.max(axis=0) - pts.min(axis=0)
        poly = grow_polygon(pts, dilation * float(np.sqrt(max(ext[0] * ext[1], 1.0))))
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    else:
        face = face_box if face_box is not None else geometry.face_box
        fx0, fy0, fx1, fy1 = (int(round(v)) for v in (face if face is not None else geometry.box))
        gx, gy = int(round(dilation * (fx1 - fx0))), int(round(dilation * (fy1 - fy0)))
        mask[max(0, fy0 - gy):max(0, fy1 + gy), max(0, fx0 - gx):max(0, fx1 + gx)] = 1
    cut = np.zeros_like(mask)
    cut[by0:by1, bx0:bx1] = mask[by0:by1, bx0:bx1]
    return cut


def feather_box(mask: np.ndarray, geometry: CropGeometry, feather: float) -> np.ndarray:
    """Weights float32 (box height, box width) in [0, 1] from a hard region, feathered inward by ``feather`` px."""
    bx0, by0, bx1, by1 = geometry.box
    sub = np.ascontiguousarray(mask[by0:by1, bx0:bx1], dtype=np.uint8)
    if feather <= 0:
        return sub.astype(np.float32)
    w, h = geometry.source_size
    # a zero ring on the box sides that lie inside the picture: the region fades out there, not at the border
    pads = (int(by0 > 0), int(by1 < h), int(bx0 > 0), int(bx1 < w))
    padded = cv2.copyMakeBorder(sub, *pads, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    dist = dist[pads[0]:pads[0] + sub.shape[0], pads[2]:pads[2] + sub.shape[1]]
    t = np.clip(dist / float(feather), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32) * sub


def blend(original, patch: np.ndarray, weights: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """Blend ``patch`` (the warped generation) into a copy of ``original`` inside the crop box."""
    out = np.array(_uint8_frame(original, "original picture"), copy=True)
    bx0, by0, bx1, by1 = geometry.box
    region = out[by0:by1, bx0:bx1]
    on = weights > 0
    if on.any():
        base = region.astype(np.float32)
        mixed = base + weights[..., None] * (patch.astype(np.float32) - base)
        region[on] = np.clip(np.round(mixed[on]), 0, 255).astype(np.uint8)
    return out


class PasteBack:
    """Paste-back settings; call :meth:`frame` once per output frame.

    region / dilation / feather: see the module docstring; color: ``"off"`` (default), ``"lab"`` (mean/std in
    CIE Lab) or ``"histogram"`` (per-channel histogram matching), computed inside the region only.
    """

    def __init__(self, geometry: CropGeometry, region: str = "face", feather: float = 16.0, dilation: float = 0.0,
                 color: str = "off"):
        if region not in REGIONS:
            raise EchoMimicError(f"unknown paste-back region '{region}'; choose one of {', '.join(REGIONS)}.")
        if color not in COLOR_METHODS:
            raise EchoMimicError(f"unknown colour matching '{color}'; choose one of {', '.join(COLOR_METHODS)}.")
        if not (np.isfinite(feather) and feather >= 0):
            raise EchoMimicError(f"feather must be >= 0 pixels, got {feather}.")
        check_dilation(dilation)  # (region_mask checks it too, at the first frame)
        self.geometry, self.region, self.feather, self.dilation, self.color = geometry, region, float(feather), float(dilation), color
        self._static = None

    def weights(self, hull=None, face_box=None) -> np.ndarray:
        """Weights inside the crop box; cached unless a per-frame ``hull`` / ``face_box`` is given."""
        static = hull is None and face_box is None
        if static and self._static is not None:
            return self._static
        mask = region_mask(self.geometry, self.region, hull, self.dilation, face_box)
        w = feather_box(mask, self.geometry, self.feather)
        if static:
            self._static = w
        return w

    def frame(self, generated, original, hull=None, face_box=None) -> np.ndarray:
        """One full-size uint8 frame: ``generated`` (output size) pasted onto ``original`` (source size)."""
        orig = _uint8_frame(original, "original picture")
        sw, sh = self.geometry.source_size
        if orig.shape[:2] != (sh, sw):
            raise EchoMimicError(f"the original picture is {orig.shape[1]}x{orig.shape[0]} but the crop was made from a "
                                 f"{sw}x{sh} picture; connect the picture (or video frames) the crop came from.")
        patch = warp_to_source(generated, self.geometry)
        weights = self.weights(hull, face_box)
        if self.color != "off":
            bx0, by0, bx1, by1 = self.geometry.box
            patch = match_colors(patch, orig[by0:by1, bx0:bx1], weights > 0, self.color)
        return blend(orig, patch, weights, self.geometry)

    def full_weights(self, hull=None, face_box=None) -> np.ndarray:
        """The blend weights over the whole original, float32 (H, W) (for previews and MASK outputs)."""
        sw, sh = self.geometry.source_size
        out = np.zeros((sh, sw), np.float32)
        bx0, by0, bx1, by1 = self.geometry.box
        out[by0:by1, bx0:bx1] = self.weights(hull, face_box)
        return out


def paste_back(generated, original, geometry: CropGeometry, region: str = "face", feather: float = 16.0,
               dilation: float = 0.0, color: str = "off", hull=None) -> np.ndarray:
    """Paste generated frames (N, h, w, 3) or one (h, w, 3) onto one original picture; uint8 at the original size."""
    gen = np.asarray(generated)
    paster = PasteBack(geometry, region, feather, dilation, color)
    if gen.ndim == 3:
        return paster.frame(gen, original, hull)
    return np.stack([paster.frame(g, original, hull) for g in gen])


def outline(image: np.ndarray, weights: np.ndarray, colour=(255, 64, 64)) -> np.ndarray:
    """A preview: the picture with the region's edge (weights > 0) drawn in ``colour``."""
    img = np.array(_uint8_frame(image, "preview"), copy=True)
    contours, _ = cv2.findContours((weights > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, colour, max(1, round(max(img.shape[:2]) / 400)))
    return img
