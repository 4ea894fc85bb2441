"""V2 keypoint groups, partial-attention masks, headshot padding and the training pose drawings.

Keypoints follow the released V2 / DWPose layout (:class:`echomimic_lib.pose.PoseSequence`): OpenPose-18
body, 68 face points (dlib order: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, lips 48-67), two hands of
21 points. Coordinates are normalised to the frame's draw area; ``canvas_points`` maps them to pixels.

Masks (float32 (H, W) in [0, 1], at image resolution):
- lips: convex hull of the lip points (48-67, or MediaPipe's lip-chain vertices), dilated by
  ``lips_margin`` x the lip width;
- head: convex hull of the face points, the head body points (nose, eyes, ears) and a forehead cap (the
  jaw reflected above the brows, scaled by 0.6), dilated by ``head_margin`` x the face height.
:func:`resize_to_tokens` brings a mask to an attention block's token grid with max-pooling (a token is
inside when any of its pixels is), so small lips still reach the low-resolution blocks.

Headshot padding (Head Partial Attention data): a square headshot is scaled and placed in the half-body
canvas so its face box (68-point extent) lands on ``head_box`` = (centre x, centre y, height) in canvas
fractions -- by default where the released half-body poses have their faces (0.5, 0.23, 0.18 measured on
the V2 demo poses). Canvas pixels not covered by the headshot are padding: ``valid`` mask 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

LIPS_68 = tuple(range(48, 68))
HEAD_BODY = (0, 14, 15, 16, 17)  # nose, eyes, ears
BODY_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13))
HEAD_LIMBS = ((1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
LIMB_COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
                (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
                (170, 0, 255), (255, 0, 255), (255, 0, 170))
# MediaPipe face-mesh index of each dlib-68 point (approximate correspondence, for headshot clips).
MP_TO_68 = (127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
            70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
            168, 197, 5, 4, 75, 97, 2, 326, 305,
            33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
            61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87)
DEFAULT_HEAD_BOX = (0.5, 0.23, 0.18)


@dataclass
class FrameKeypoints:
    """Keypoints of one frame in output-image pixels; missing points are NaN."""

    body: np.ndarray  # (18, 2)
    face: np.ndarray  # (68, 2)
    hands: np.ndarray  # (2, 21, 2)
    hands_score: np.ndarray  # (2, 21)

    def all_points(self) -> np.ndarray:
        return np.concatenate([self.body, self.face, self.hands.reshape(-1, 2)])


def _visible(points: np.ndarray, scores: np.ndarray, thr: float = 0.3) -> np.ndarray:
    return np.isfinite(points).all(-1) & ~(points == -1.0).all(-1) & (np.nan_to_num(scores) > thr)


def keypoints_from_pose(seq, i: int, size: tuple[int, int]) -> FrameKeypoints:
    """Frame ``i`` of a PoseSequence in pixels of an output image of ``size`` = (W, H) (canvas stretched)."""
    from echomimic_lib.pose.drawing import map_draw_params

    w, h = size
    imh, imw, rb, _, cb, _ = map_draw_params(seq.draw_pose_params[i], seq.canvas_size, (w, h), "stretch")

    def px(pts, scores):
        out = np.stack([cb + pts[..., 0] * imw, rb + pts[..., 1] * imh], -1).astype(np.float64)
        out[~_visible(pts, scores)] = np.nan
        return out

    return FrameKeypoints(px(seq.body[i], seq.body_score[i]), px(seq.faces[i], seq.faces_score[i]),
                          px(seq.hands[i], seq.hands_score[i]), np.asarray(seq.hands_score[i], dtype=np.float64))


def keypoints_from_landmarks(lmks: np.ndarray, size: tuple[int, int]) -> FrameKeypoints:
    """Headshot frame: (478, 2|3) normalised face-mesh landmarks -> face-68 points (no body, no hands)."""
    w, h = size
    face = np.asarray(lmks)[list(MP_TO_68), :2] * np.array([w, h], dtype=np.float64)
    return FrameKeypoints(np.full((18, 2), np.nan), face, np.full((2, 21, 2), np.nan), np.zeros((2, 21)))


def _hull_mask(points: np.ndarray, size: tuple[int, int], margin_px: float) -> np.ndarray:
    import cv2

    w, h = size
    pts = points[np.isfinite(points).all(-1)]
    mask = np.zeros((h, w), np.uint8)
    if len(pts) < 3:
        return mask.astype(np.float32)
    hull = cv2.convexHull(np.round(pts).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    r = int(round(margin_px))
    if r > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    return mask.astype(np.float32)


def lips_mask(kp: FrameKeypoints, size: tuple[int, int], margin: float = 0.3) -> np.ndarray:
    lips = kp.face[list(LIPS_68)]
    ok = lips[np.isfinite(lips).all(-1)]
    width = float(np.ptp(ok[:, 0])) if len(ok) else 0.0
    return _hull_mask(lips, size, margin * width)


def head_points(kp: FrameKeypoints) -> np.ndarray:
    face = kp.face[np.isfinite(kp.face).all(-1)]
    pts = [face, kp.body[list(HEAD_BODY)]]
    if len(face):
        brow = kp.face[17:27]
        brow = brow[np.isfinite(brow).all(-1)]
        top = float(brow[:, 1].min()) if len(brow) else float(face[:, 1].min())
        jaw = kp.face[0:17]
        jaw = jaw[np.isfinite(jaw).all(-1)]
        cap = jaw.copy()
        cap[:, 1] = top - 0.6 * (jaw[:, 1] - top)  # forehead / hair cap: the jaw mirrored above the brows
        pts.append(cap)
    allp = np.concatenate(pts) if pts else np.zeros((0, 2))
    return allp[np.isfinite(allp).all(-1)]


def head_mask(kp: FrameKeypoints, size: tuple[int, int], margin: float = 0.1) -> np.ndarray:
    pts = head_points(kp)
    height = float(np.ptp(pts[:, 1])) if len(pts) else 0.0
    return _hull_mask(pts, size, margin * height)


def resize_to_tokens(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) image-resolution masks -> (N, h*w, 1) at an attention block's token grid (max-pooled)."""
    m = F.adaptive_max_pool2d(mask.unsqueeze(1).float(), grid)
    return m.flatten(2).transpose(1, 2)


def token_grid(tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid of ``tokens`` tokens in a UNet whose latent is ``latent_hw`` (stride-2 downsamples)."""
    h, w = latent_hw
    for _ in range(8):
        if h * w == tokens:
            return h, w
        h, w = (h + 1) // 2, (w + 1) // 2
    raise ValueError(f"{tokens} tokens do not match any resolution of a {latent_hw} latent")


# ---------------------------------------------------------------------------------------------- headshot padding
@dataclass(frozen=True)
class HeadshotLayout:
    """Where a square headshot of side 1 (normalised) goes in a canvas of ``size`` px: pixel = offset + u * scale."""

    size: int
    scale: float  # canvas pixels per headshot unit (the pasted side length)
    offset: tuple[float, float]

    def to_canvas(self, uv: np.ndarray) -> np.ndarray:
        return np.asarray(uv, dtype=np.float64) * self.scale + np.asarray(self.offset)

    @property
    def pixels(self) -> tuple[int, int, int]:
        """Integer placement used for the pixels: (x offset, y offset, pasted side)."""
        return int(round(self.offset[0])), int(round(self.offset[1])), max(1, int(round(self.scale)))

    def valid_rect(self) -> tuple[int, int, int, int]:
        """Canvas rectangle x0, y0, x1, y1 covered by the headshot (the rest is padding)."""
        ox, oy, side = self.pixels
        return max(0, ox), max(0, oy), min(self.size, ox + side), min(self.size, oy + side)


def headshot_layout(face68: np.ndarray, size: int, head_box=DEFAULT_HEAD_BOX) -> HeadshotLayout:
    """Layout from the headshot's 68 face points (normalised to the headshot, (F, 68, 2) or (68, 2): the median box)."""
    pts = np.asarray(face68, dtype=np.float64).reshape(-1, 68, 2)
    x0, y0 = np.nanmedian(np.nanmin(pts[..., 0], 1)), np.nanmedian(np.nanmin(pts[..., 1], 1))
    x1, y1 = np.nanmedian(np.nanmax(pts[..., 0], 1)), np.nanmedian(np.nanmax(pts[..., 1], 1))
    cx, cy, hh = head_box
    scale = hh * size / max(1e-6, y1 - y0)
    offset = (cx * size - (x0 + x1) / 2 * scale, cy * size - (y0 + y1) / 2 * scale)
    return HeadshotLayout(int(size), float(scale), (float(offset[0]), float(offset[1])))


def pad_headshot(image: np.ndarray, layout: HeadshotLayout) -> tuple[np.ndarray, np.ndarray]:
    """(S, S, 3) headshot -> ((size, size, 3) canvas with black padding, (size, size) float32 valid mask)."""
    import cv2

    n = layout.size
    ox, oy, side = layout.pixels
    img = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA if side < image.shape[0] else cv2.INTER_CUBIC)
    out = np.zeros((n, n, 3), np.uint8)
    valid = np.zeros((n, n), np.float32)
    x0, y0, x1, y1 = layout.valid_rect()
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = img[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        valid[y0:y1, x0:x1] = 1.0
    return out, valid


# ---------------------------------------------------------------------------------------------- drawings
def draw_pose(kp: FrameKeypoints, size: tuple[int, int], parts, hands_image: np.ndarray | None = None) -> np.ndarray:
    """Training condition picture with the chosen keypoint groups (body, head, lips, hands): body/head as
    OpenPose limbs, face points as dots, hands exactly as the V2 inference drawing (``hands_image``)."""
    import cv2

    w, h = size
    parts = set(parts)
    img = hands_image.copy() if ("hands" in parts and hands_image is not None) else np.zeros((h, w, 3), np.uint8)
    th = max(1, round(min(w, h) / 128))

    def ok(p):
        return np.isfinite(p).all()

    limbs = (BODY_LIMBS if "body" in parts else ()) + (HEAD_LIMBS if "head" in parts else ())
    for k, (a, b) in enumerate(limbs):
        pa, pb = kp.body[a], kp.body[b]
        if ok(pa) and ok(pb):
            cv2.line(img, tuple(np.round(pa).astype(int)), tuple(np.round(pb).astype(int)), LIMB_COLOURS[k % len(LIMB_COLOURS)], 2 * th)
    face_idx = (list(range(0, 48)) if "head" in parts else []) + (list(LIPS_68) if "lips" in parts else [])
    for i in face_idx:
        p = kp.face[i]
        if ok(p):
            cv2.circle(img, tuple(np.round(p).astype(int)), th, (255, 255, 255), -1)
    return img


def visualise_masks(image: np.ndarray, masks: dict[str, np.ndarray], latent_hw: tuple[int, int], levels: int = 4) -> np.ndarray:
    """Debug picture: the image with each mask overlaid, and each mask at every attention resolution."""
    import cv2

    h, w = image.shape[:2]
    rows = []
    for name, m in masks.items():
        tiles = [np.clip(image * 0.5 + m[..., None] * np.array([255, 64, 64]) * 0.5, 0, 255).astype(np.uint8)]
        gh, gw = latent_hw
        for _ in range(levels):
            small = resize_to_tokens(torch.from_numpy(m)[None], (gh, gw))[0, :, 0].view(gh, gw).numpy()
            tiles.append(np.repeat(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)[..., None] * 255, 3, -1).astype(np.uint8))
            gh, gw = (gh + 1) // 2, (gw + 1) // 2
        row = np.concatenate(tiles, 1)
        cv2.putText(row, name, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1)
        rows.append(row)
    return np.concatenate(rows, 0)
