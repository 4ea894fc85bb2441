"""Drawing a gesture plan: source frames (interpolated between frames), seams blended by inertialization, points
kept where the library's went.

Points are handled as one (F, 128, 2) array: body 0-17, hands 18-59 (row 0, the person's left hand, then the
right), face 60-127. A point stored as (-1, -1) is hidden and is never moved.
"""
from __future__ import annotations

import numpy as np

from ..sequence import PoseSequence

N_POINTS = 18 + 42 + 68
SURE = 0.3  # detection score above which a point is drawn
REST_ACC = 1.8  # rest seams may use this x the blend budget (half the library's 99th percentile)


def points_of(seq: PoseSequence) -> np.ndarray:
    return np.concatenate([seq.body, seq.hands.reshape(len(seq), 42, 2), seq.faces], axis=1)



def _scores(seq: PoseSequence) -> np.ndarray:
    return np.concatenate([seq.body_score, seq.hands_score.reshape(len(seq), 42), seq.faces_score], axis=1)


def _quintic(x0: np.ndarray, v0: np.ndarray, T: float, length: int) -> np.ndarray:
    """Offsets (length, ...) decaying from x0 with velocity v0 to 0 (zero velocity and acceleration) at T frames."""
    t = np.minimum(np.arange(length, dtype=np.float64), T).reshape((-1,) + (1,) * x0.ndim)
    a = -(6 * v0 * T + 12 * x0) / (2 * T**5)
    b = (16 * v0 * T + 30 * x0) / (2 * T**4)
    c = -(12 * v0 * T + 20 * x0) / (2 * T**3)
    return a * t**5 + b * t**4 + c * t**3 + v0 * t + x0


def _rigid_velocity(v: np.ndarray) -> np.ndarray:
    """Per-point velocities (128, 2) where each hand moves with its body wrist and the face with the nose: a blend
    carries no finger jitter of the hand detector into the offsets, and hands stay on their wrists."""
    if len(v) != N_POINTS:
        return v
    out = v.copy()
    out[18:39] = v[7]  # hand row 0 is the person's left hand, on body joint 7 (the left wrist)
    out[39:60] = v[4]
    out[60:] = v[0]
    return out


def _settle(x0: np.ndarray, v0: np.ndarray, T: float, length: int) -> np.ndarray:
    """Offsets that start at x0 with velocity v0 and come to a stop (smoothstep deceleration) at T, then stay."""
    u = (np.minimum(np.arange(length, dtype=np.float64), T) / T).reshape((-1,) + (1,) * x0.ndim)
    return x0 + v0 * T * (u - u**3 + u**4 / 2)


def inertialize(points: np.ndarray, seams, hidden: np.ndarray, acc_limit, fps: float, min_blend_s: float = 0.16,
                max_blend_s: float = 0.8, settle=None, unsure=None) -> None:
    """Blend each seam in place: position and velocity continuous, the blend's acceleration within ``acc_limit``
    (one number, or one per seam). ``settle`` (one bool per seam): the new segment holds a frame, and the motion
    coming in decelerates to a stop instead of returning to it (peak deceleration 1.5 |v0| / T, from the body joints
    not ``unsure``: a joint the detector was unsure of (not drawn) can jump between frames; the stop takes at most
    ``max_blend_s``)."""
    n = len(points)
    bounds = list(seams) + [n]
    limits = np.broadcast_to(np.asarray(acc_limit, dtype=np.float64), (len(seams),))
    settle = np.zeros(len(seams), bool) if settle is None else np.asarray(settle, bool)
    for j, t in enumerate(seams):
        if t < 2 or t >= n:
            continue
        seg_end = bounds[j + 1]
        prev, prev2, new, new1 = points[t - 1], points[t - 2], points[t].copy(), points[min(t + 1, seg_end - 1)]
        ok = ~(hidden[t - 1] | hidden[t - 2] | hidden[t] | hidden[min(t + 1, seg_end - 1)])
        v_prev = prev - prev2
        v_new = new1 - new if seg_end - t > 1 else np.zeros_like(new)
        x0 = np.where(ok[:, None], prev + v_prev - new, 0.0)  # every point continues exactly where it was heading
        # the velocity gap of the hands as wholes (each hand with its wrist, the face with the nose): the hand
        # detector's finger jitter is not carried on into the blend, so hands stay on their wrists
        v0 = np.where(ok[:, None], _rigid_velocity(v_prev) - _rigid_velocity(v_new), 0.0)
        T = max(2.0, min_blend_s * fps)
        if settle[j]:
            v_in = np.where(ok[:, None], _rigid_velocity(v_prev), 0.0)
            x0 = np.where(ok[:, None], prev + v_in - new, 0.0)
            sure = ok[:18] if unsure is None else ok[:18] & ~unsure[t - 1, :18] & ~unsure[t - 2, :18]
            v_body = np.linalg.norm(v_in[:18][sure], axis=-1)
            T = max(T, 1.5 * float(v_body.max(initial=0.0)) / max(limits[j], 1e-12))
            points[t:seg_end] += _settle(x0, v_in, min(T, max_blend_s * fps), seg_end - t)
            continue
        while True:
            off = _quintic(x0, v0, T, int(np.ceil(T)) + 3)
            acc = np.linalg.norm(off[2:] - 2 * off[1:-1] + off[:-2], axis=-1).max() if len(off) > 2 else 0.0
            if acc <= limits[j] or T >= max_blend_s * fps:
                break
            T *= 1.25
        length = min(int(np.ceil(T)) + 1, seg_end - t)
        points[t : t + length] += _quintic(x0, v0, T, length)


def clamp_box(original: list[PoseSequence], aligned: list[PoseSequence]) -> tuple[np.ndarray, np.ndarray]:
    """Where output points may go: the aligned library's range of visible points, and never past an edge of the
    picture the original library stayed inside."""
    def rng(seqs):
        p = np.concatenate([points_of(s) for s in seqs])
        sc = np.concatenate([np.concatenate([s.body_score, s.hands_score.reshape(len(s), 42), s.faces_score], axis=1) for s in seqs])
        p = p[~(p == -1.0).all(-1) & (sc > 0.3)]
        return p.min(axis=0), p.max(axis=0)

    (olo, ohi), (alo, ahi) = rng(original), rng(aligned)
    lo = np.where(olo >= 0, np.maximum(alo, 0.0), alo)
    hi = np.where(ohi <= 1, np.minimum(ahi, 1.0), ahi)
    if aligned[0] is original[0]:  # no reference: the library's own frame, its own range
        lo, hi = np.maximum(lo, olo), np.minimum(hi, ohi)
    return lo, hi


ARMS = ((3, None), (4, slice(39, 60)), (6, None), (7, slice(18, 39)))  # elbows; wrists with their hand's points
ANCHOR_S = 1.0  # the posture gestures are scaled about: each joint's mean over this window


def _moving_mean(x: np.ndarray, ok: np.ndarray, width: int) -> np.ndarray:
    """Centred mean over ``width`` frames of the rows of ``x`` (F, 2) where ``ok``; rows with none keep their value."""
    pad = (width // 2, width - 1 - width // 2)
    w = np.pad(ok.astype(np.float64), pad)
    v = np.pad(np.where(ok[:, None], x, 0.0), (pad, (0, 0)))
    cw, cv = np.r_[0.0, np.cumsum(w)], np.concatenate([np.zeros((1, 2)), np.cumsum(v, axis=0)])
    num, den = cv[width:] - cv[:-width], (cw[width:] - cw[:-width])[:, None]
    return np.where(den > 0, num / np.maximum(den, 1e-12), x)


def scale_gestures(points: np.ndarray, hidden: np.ndarray, gain: np.ndarray, fps: float) -> None:
    """In place: each elbow and wrist moved ``gain`` (F,) times as far from its posture (its mean over ``ANCHOR_S``)
    as it was, each hand carried with its wrist (no new shape: the fingers keep their places on the wrist)."""
    width = max(3, int(round(ANCHOR_S * fps)))
    g = gain[:, None]
    for j, hand in ARMS:
        ok = ~hidden[:, j]
        anchor = _moving_mean(points[:, j], ok, width)
        delta = (g - 1.0) * (points[:, j] - anchor)
        delta = np.where(ok[:, None] & (np.abs(delta) > 1e-12), delta, 0.0)  # a still pose stays exactly still
        points[:, j] += delta
        if hand is not None:
            points[:, hand] += np.where(hidden[:, hand, None], 0.0, delta[:, None, :])


def render(sources: list[PoseSequence], plan, fps: float, acc_limit: float, box, min_blend_s: float = 0.16,
           max_blend_s: float = 0.8, keep: int = 0, gain=None) -> PoseSequence:
    """The planned frames (``plan``: a :class:`GesturePlan`) drawn from the aligned sources, seams blended, points
    kept inside ``box`` (see :func:`clamp_box`) except the first ``keep`` frames (given as they are); ``gain`` (F,):
    how far arms and hands move from their posture per frame (:func:`scale_gestures`; None: as the sources did); the
    plan becomes the sequence's ``report``."""
    n = len(plan.source)
    pts = np.zeros((n, N_POINTS, 2))
    hidden = np.zeros((n, N_POINTS), bool)
    near = np.zeros(n, np.int64)
    unsure = np.zeros((n, N_POINTS), bool)  # points the detector was not sure of (not drawn): left out of the blends
    for s, seq in enumerate(sources):
        m = plan.source == s
        if not m.any():
            continue
        p = plan.position[m]
        i0 = np.clip(np.floor(p).astype(np.int64), 0, len(seq) - 1)
        i1 = np.minimum(i0 + 1, len(seq) - 1)
        w = (p - i0)[:, None, None]
        src = points_of(seq)
        h = (src == -1.0).all(-1)
        a, b = src[i0], src[i1]
        either = h[i0] | h[i1]
        lerp = a * (1 - w) + b * w
        nearest = np.where((w >= 0.5), b, a)
        pts[m] = np.where(either[..., None], nearest, lerp)
        near[m] = np.where(w[:, 0, 0] >= 0.5, i1, i0)
        hidden[m] = (pts[m] == -1.0).all(-1)
        unsure[m] = _scores(seq)[near[m]] <= SURE
    # blends into a rest may use most of the library's acceleration range (they must end early in the pause)
    kinds = {seg[0]: seg[2] for seg in plan.segments}
    limits = [acc_limit * (REST_ACC if kinds.get(t) == "rest" else 1.0) for t in plan.seams]
    holds = [kinds.get(t) in ("rest", "hold") and plan.source[t] == plan.source[t - 1] and plan.position[t] == plan.position[t - 1]
             for t in plan.seams]
    inertialize(pts, plan.seams, hidden, limits, fps, min_blend_s, max_blend_s, holds, unsure)
    if gain is not None and keep < n:
        scale_gestures(pts[keep:], hidden[keep:] | unsure[keep:], np.asarray(gain, np.float64)[keep:n], fps)
    lo, hi = box
    pts[keep:] = np.where(hidden[keep:, :, None], -1.0, np.clip(pts[keep:], lo, hi))
    fields = {}
    for name in ("body_score", "body_subset", "hands_score", "faces_score", "draw_pose_params"):
        arr = np.zeros((n,) + getattr(sources[0], name).shape[1:], dtype=getattr(sources[0], name).dtype)
        for s, seq in enumerate(sources):
            m = plan.source == s
            arr[m] = getattr(seq, name)[near[m]]
        fields[name] = arr
    out = PoseSequence(body=pts[:, :18], hands=pts[:, 18:60].reshape(n, 2, 21, 2), faces=pts[:, 60:], frame_ids=np.arange(n),
                       fps=fps, canvas_size=sources[0].canvas_size, source="gestures from speech", **fields)
    out.report = plan
    return out
