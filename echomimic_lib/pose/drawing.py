"""V2 hand-pose condition images, drawn exactly like the reference, at any output size.

What the V2 model sees (reproduced bit for bit at the canvas size the poses were made for, 768 x 768):

1. The draw area of a frame is ``imh x imw`` (from ``draw_pose_params``). Drawing happens on a black canvas
   scaled so that its short side is 800 px (``canvas_short_side``).
2. Hands only. For every hand, the 20 edges 0-1-2-3-4, 0-5-..-8, 0-9-..-12, 0-13-..-16, 0-17-..-20 are drawn
   as 2-px lines; edge ``e`` has the colour HSV(e/20, 1, 1) x int(score_a * score_b * 255) (values above 255
   saturate). An edge is skipped when any endpoint pixel coordinate int(x * canvas_w), int(y * canvas_h) is
   <= 0.01 (i.e. 0 or negative). Then each keypoint with both pixel coordinates >= 1 becomes a filled circle of
   radius 4 with channel values (0, 0, int(score * 255)).
3. The canvas is resized to ``imw x imh`` (bilinear), its channels reversed (the reference treats the canvas
   as BGR and converts to RGB, so keypoints come out red) and pasted into a black output image at
   ``[row_begin:row_end, col_begin:col_end]``.

Any output size: the draw_pose_params refer to the sequence's ``canvas_size``; for another output size they
are mapped with ``fit`` (``stretch`` = scale x and y independently, the same as resizing an image of the
canvas size to W x H, which is what the V2 pipeline does to the reference image; ``contain`` = uniform
scale + centred black bars; ``cover`` = uniform scale + centred crop). Use :func:`echomimic_lib.pose.align.fit_image`
with the same ``fit`` on the reference image so both stay aligned. The 800-px canvas keeps lines and dots at
the same thickness relative to the image at every size.

Everything is lazy per frame: :func:`draw_hands` renders one frame, :func:`draw_hands_batch` a window, so
memory stays flat for long videos. :func:`draw_preview` draws body/face too -- **for previews only; the V2
model is never fed body or face**.
"""
from __future__ import annotations

from typing import Iterable

from .._lazy import cv2
import numpy as np

from ..errors import EchoMimicError
from .sequence import PoseSequence, check_draw_pose_params

# 5 fingers x 4 edges: 0-1-2-3-4, 0-5-6-7-8, 0-9-10-11-12, 0-13-14-15-16, 0-17-18-19-20
HAND_EDGES = tuple((j - 1 if j % 4 != 1 else 0, j) for j in range(1, 21))
CANVAS_SHORT_SIDE = 800
FITS = ("stretch", "contain", "cover")
_EPS = 0.01


def _hsv_full(h: float) -> np.ndarray:
    """HSV(h, 1, 1) -> RGB floats, with the usual sector formulas (p = 0, q = 1 - f, t = 1 - (1 - f))."""
    i = int(h * 6.0)
    f = h * 6.0 - i
    p, q, t, v = 0.0, 1.0 - f, 1.0 - (1.0 - f), 1.0
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6], dtype=np.float64)


_EDGE_COLOURS = tuple(_hsv_full(e / float(len(HAND_EDGES))) for e in range(len(HAND_EDGES)))


_XY_SHIFT = 16


def thick_line(canvas: np.ndarray, p0: tuple[int, int], p1: tuple[int, int], colour) -> None:
    """A 2-px line exactly as OpenCV <= 4.12 draws ``cv2.line(..., thickness=2)``: a filled quadrilateral in
    16-bit fixed point plus a radius-1 disc at each end. OpenCV 4.13+ first clips the segment to the image
    (opencv PR #27366), which changes a few pixels of edges that leave the canvas; the reference condition
    images were made with OpenCV 4.10, so the old geometry is rebuilt here with ``cv2.fillConvexPoly``."""
    if max(abs(p0[0]), abs(p0[1]), abs(p1[0]), abs(p1[1])) >= 1 << 14:  # fixed point would overflow int32
        cv2.line(canvas, p0, p1, colour, thickness=2)
        return
    one = 1 << _XY_SHIFT
    x0, y0, x1, y1 = p0[0] << _XY_SHIFT, p0[1] << _XY_SHIFT, p1[0] << _XY_SHIFT, p1[1] << _XY_SHIFT
    dx, dy = (x0 - x1) / one, (y1 - y0) / one
    r = dx * dx + dy * dy
    if abs(r) > np.finfo(np.float64).eps:
        r = one / np.sqrt(r)  # half thickness (1 px) in fixed point
        ox, oy = int(np.rint(dy * r)), int(np.rint(dx * r))
        quad = np.array([[x0 + ox, y0 + oy], [x0 - ox, y0 - oy], [x1 - ox, y1 - oy], [x1 + ox, y1 + oy]], dtype=np.int32)
        cv2.fillConvexPoly(canvas, quad, colour, cv2.LINE_8, _XY_SHIFT)
    cv2.circle(canvas, p0, 1, colour, -1)
    cv2.circle(canvas, p1, 1, colour, -1)


def draw_hands_on_canvas(canvas: np.ndarray, hands: np.ndarray, hands_score: np.ndarray) -> np.ndarray:
    """Draw hands (K, 21, 2) normalised to the canvas, in the reference's canvas channel order (BGR)."""
    ch, cw = canvas.shape[:2]
    for peaks, scores in zip(np.asarray(hands, dtype=np.float64), np.asarray(hands_score, dtype=np.float64)):
        px = [int(x * cw) for x in peaks[:, 0]]
        py = [int(y * ch) for y in peaks[:, 1]]
        for e, (a, b) in enumerate(HAND_EDGES):
            if px[a] > _EPS and py[a] > _EPS and px[b] > _EPS and py[b] > _EPS:
                value = int(scores[a] * scores[b] * 255)
                colour = tuple(float(c) for c in _EDGE_COLOURS[e] * value)
                thick_line(canvas, (px[a], py[a]), (px[b], py[b]), colour)
        for k in range(len(peaks)):
            if px[k] > _EPS and py[k] > _EPS:
                cv2.circle(canvas, (px[k], py[k]), 4, (0, 0, int(scores[k] * 255)), thickness=-1)
    return canvas


def render_hand_area(hands: np.ndarray, hands_score: np.ndarray, imh: int, imw: int, canvas_short_side: int = CANVAS_SHORT_SIDE) -> np.ndarray:
    """The (imh, imw, 3) RGB uint8 drawing of one frame's draw area (before pasting)."""
    if not np.isfinite(hands).all() or not np.isfinite(hands_score).all():
        raise EchoMimicError("hand keypoints contain NaN/Inf; load the poses with on_nan='hide' or fix the file.")
    short = min(imh, imw)
    sr = canvas_short_side / short if short != canvas_short_side else 1
    canvas = np.zeros((int(imh * sr), int(imw * sr), 3), dtype=np.uint8)
    draw_hands_on_canvas(canvas, hands, hands_score)
    return cv2.cvtColor(cv2.resize(canvas, (imw, imh)), cv2.COLOR_BGR2RGB)


def map_draw_params(params, canvas_size: tuple[int, int], size: tuple[int, int], fit: str = "stretch") -> tuple[int, int, int, int, int, int]:
    """draw_pose_params [imh, imw, rb, re, cb, ce] of a ``canvas_size`` (W, H) canvas mapped to an output ``size``
    (W, H). Identity when the sizes agree (the reference case); the box may extend outside the output (``cover``)."""
    if fit not in FITS:
        raise EchoMimicError(f"unknown fit '{fit}'; choose one of {', '.join(FITS)}.")
    imh, imw, rb, re, cb, ce = (int(v) for v in params)
    (cw, chh), (w, h) = canvas_size, size
    if (cw, chh) == (w, h):
        return imh, imw, rb, re, cb, ce
    if fit == "stretch":
        sx, sy, ox, oy = w / cw, h / chh, 0.0, 0.0
    else:
        s = min(w / cw, h / chh) if fit == "contain" else max(w / cw, h / chh)
        sx = sy = s
        ox, oy = (w - cw * s) / 2.0, (h - chh * s) / 2.0
    rb2, re2 = int(round(oy + rb * sy)), int(round(oy + re * sy))
    cb2, ce2 = int(round(ox + cb * sx)), int(round(ox + ce * sx))
    return max(1, re2 - rb2), max(1, ce2 - cb2), rb2, rb2 + max(1, re2 - rb2), cb2, cb2 + max(1, ce2 - cb2)


def _paste(out: np.ndarray, img: np.ndarray, rb: int, cb: int) -> None:
    h, w = out.shape[:2]
    r0, c0 = max(rb, 0), max(cb, 0)
    r1, c1 = min(rb + img.shape[0], h), min(cb + img.shape[1], w)
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = img[r0 - rb : r1 - rb, c0 - cb : c1 - cb]


def draw_hand_frame(
    hands: np.ndarray,
    hands_score: np.ndarray,
    draw_pose_params,
    size: tuple[int, int],
    canvas_size: tuple[int, int] | None = None,
    fit: str = "stretch",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One V2 condition image (H, W, 3) uint8 RGB from raw arrays: hands (K, 21, 2), hands_score (K, 21),
    draw_pose_params of a ``canvas_size`` canvas (default: the output size, as in the reference)."""
    w, h = int(size[0]), int(size[1])
    if w <= 0 or h <= 0:
        raise EchoMimicError(f"output size must be positive, got {size}.")
    check_draw_pose_params(draw_pose_params, canvas_size or (w, h), what="hand drawing")
    imh, imw, rb, _re, cb, _ce = map_draw_params(draw_pose_params, canvas_size or (w, h), (w, h), fit)
    if out is None:
        out = np.zeros((h, w, 3), dtype=np.uint8)
    else:
        out[...] = 0
    _paste(out, render_hand_area(hands, hands_score, imh, imw), rb, cb)
    return out


def draw_hands(seq: PoseSequence, index: int, size: tuple[int, int] = (768, 768), fit: str = "stretch", out: np.ndarray | None = None) -> np.ndarray:
    """The V2 condition image of frame ``index`` at output size (W, H): (H, W, 3) uint8 RGB (model input x 255)."""
    return draw_hand_frame(seq.hands[index], seq.hands_score[index], seq.draw_pose_params[index], size, seq.canvas_size, fit, out)


def draw_hands_batch(seq: PoseSequence, indices: Iterable[int] | None = None, size: tuple[int, int] = (768, 768), fit: str = "stretch") -> np.ndarray:
    """Condition images of several frames (default: all): (F, H, W, 3) uint8 RGB. Draw one context window
    at a time for long videos; identical frames (e.g. after hold-last) are drawn once."""
    idx = list(range(len(seq))) if indices is None else [int(i) for i in indices]
    out = np.zeros((len(idx), int(size[1]), int(size[0]), 3), dtype=np.uint8)
    done: dict[int, int] = {}
    for j, i in enumerate(idx):
        if i in done:
            out[j] = out[done[i]]
            continue
        draw_hands(seq, i, size, fit, out=out[j])
        done[i] = j
    return out


# ---------------------------------------------------------------------------------------------- previews
# OpenPose-18 limbs (0-based) and the usual 18 limb colours (RGB). Preview only.
BODY_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
_BODY_COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170),
    (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)


def draw_preview(
    seq: PoseSequence,
    index: int,
    size: tuple[int, int] = (768, 768),
    fit: str = "stretch",
    body: bool = True,
    face: bool = True,
    hands: bool = True,
    label: bool = True,
) -> np.ndarray:
    """PREVIEW ONLY (not what the model receives): hands as in :func:`draw_hands` plus, optionally, the OpenPose
    body skeleton and face dots, with a 'PREVIEW - not model input' label. (H, W, 3) uint8 RGB."""
    w, h = int(size[0]), int(size[1])
    img = draw_hands(seq, index, size, fit) if hands else np.zeros((h, w, 3), dtype=np.uint8)
    imh, imw, rb, _re, cb, _ce = map_draw_params(seq.draw_pose_params[index], seq.canvas_size, (w, h), fit)
    thick = max(1, round(min(w, h) / 200))

    def px(pt):
        return int(round(cb + pt[0] * imw)), int(round(rb + pt[1] * imh))

    def ok(pt, score, thr=0.3):
        return np.isfinite(pt).all() and score > thr and pt[0] > 0 and pt[1] > 0

    if body:
        kp, sc = seq.body[index], seq.body_score[index]
        for (a, b), colour in zip(BODY_LIMBS, _BODY_COLOURS):
            if ok(kp[a], sc[a]) and ok(kp[b], sc[b]) and seq.body_subset[index][a] >= 0 and seq.body_subset[index][b] >= 0:
                cv2.line(img, px(kp[a]), px(kp[b]), tuple(int(c * 0.6) for c in colour), 2 * thick, cv2.LINE_AA)
        for k in range(18):
            if ok(kp[k], sc[k]) and seq.body_subset[index][k] >= 0:
                cv2.circle(img, px(kp[k]), 2 * thick, _BODY_COLOURS[k], -1, cv2.LINE_AA)
    if face:
        for pt, s in zip(seq.faces[index], seq.faces_score[index]):
            if ok(pt, s):
                cv2.circle(img, px(pt), thick, (255, 255, 255), -1)
    if label:
        scale = max(0.4, min(w, h) / 900)
        origin = (8, int(24 * scale) + 8)
        cv2.putText(img, "PREVIEW - not model input", origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, thick // 2), cv2.LINE_AA)
    return img
