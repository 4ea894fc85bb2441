"""Measures of synthesized gestures against the speech (used by the tests and ``bench/bench_gestures.py``).

- :func:`strokes`: frames where the hand speed peaks (a local maximum within +-0.15 s that rises at least 30 %
  above the slowest frame on each side within 0.4 s, and above a floor of 0.1 shoulder widths / s);
- :func:`synchrony`: the share of strokes within +-``tol`` frames of an event (onset or stress);
- :func:`energy_correlation`: Pearson correlation of windowed hand speed with windowed loudness;
- :func:`rest_ratio`: mean hand speed through pauses over the speaking-time mean;
- :func:`seam_acceleration`: the largest joint acceleration at each seam (the frames next to it), to compare with the library's
  99th percentile (:meth:`GestureLibrary.acceleration_percentile`).
"""
from __future__ import annotations

import numpy as np

from ..sequence import PoseSequence
from .library import joint_acceleration, source_motion
from .speech import SpeechFeatures

STROKE_FLOOR = 0.1


def hand_speed(seq: PoseSequence) -> np.ndarray:
    """Smoothed mean wrist speed per frame in shoulder widths per second."""
    return source_motion(seq).speed


def strokes(seq_or_speed, fps: float | None = None, prominence: float = 1.5, floor: float = STROKE_FLOOR) -> np.ndarray:
    if isinstance(seq_or_speed, PoseSequence):
        speed, fps = hand_speed(seq_or_speed), seq_or_speed.fps
    else:
        speed = np.asarray(seq_or_speed, dtype=np.float64)
    r, side = max(1, int(round(0.15 * fps))), max(2, int(round(0.4 * fps)))
    out = []
    for i in range(len(speed)):
        v = speed[i]
        if v < floor or v < speed[max(0, i - r) : i + r + 1].max() or (i > 0 and speed[i - 1] == v):
            continue
        left, right = speed[max(0, i - side) : i + 1].min(), speed[i : i + side + 1].min()
        if v >= prominence * max(left, right, 1e-9):
            out.append(i)
    return np.array(out, dtype=np.int64)


def synchrony(stroke_frames: np.ndarray, events: np.ndarray, tol: int = 2) -> float:
    """Share of strokes within +-tol frames of an event (NaN when there is no stroke)."""
    s, e = np.asarray(stroke_frames), np.asarray(events)
    if s.size == 0:
        return float("nan")
    if e.size == 0:
        return 0.0
    return float((np.abs(s[:, None] - e[None, :]).min(axis=1) <= tol).mean())


def _windows(x: np.ndarray, win: int, hop: int) -> np.ndarray:
    if len(x) < win:
        return np.array([x.mean()]) if len(x) else np.zeros(0)
    return np.array([x[i : i + win].mean() for i in range(0, len(x) - win + 1, hop)])


def energy_correlation(seq: PoseSequence, speech: SpeechFeatures, win_s: float = 1.0, hop_s: float = 0.25) -> float:
    """Pearson correlation of windowed hand speed with windowed loudness (NaN if either is constant)."""
    win, hop = max(2, int(round(win_s * seq.fps))), max(1, int(round(hop_s * seq.fps)))
    n = min(len(seq), speech.num_frames)
    a, b = _windows(hand_speed(seq)[:n], win, hop), _windows(speech.loudness[:n], win, hop)
    if len(a) < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def rest_ratio(seq: PoseSequence, speech: SpeechFeatures, min_pause: float = 0.5) -> float:
    """Mean hand speed through pauses of at least ``min_pause`` s over the mean while speaking (NaN without pauses)."""
    n = min(len(seq), speech.num_frames)
    speed = hand_speed(seq)[:n]
    pause = np.zeros(n, bool)
    for a, b in speech.pauses:
        if (b - a) / speech.fps >= min_pause:
            pause[a:b] = True
    speaking = speech.active[:n] & ~pause
    if not pause.any() or not speaking.any() or speed[speaking].mean() <= 0:
        return float("nan")
    return float(speed[pause].mean() / speed[speaking].mean())


def seam_acceleration(seq: PoseSequence, seams, after: int = 0) -> np.ndarray:
    """Per seam, the largest joint acceleration (normalised units / frame^2) at the junction: the last frame before
    the seam and the first after it (plus ``after`` more frames; later frames are the unit's own motion)."""
    acc = joint_acceleration(seq)  # row i is centred on frame i + 1
    out = []
    for t in seams:
        rows = acc[max(0, t - 2) : max(0, min(len(acc), t + after))]
        out.append(float(np.nanmax(rows)) if rows.size and np.isfinite(rows).any() else 0.0)
    return np.array(out)


def own_acceleration(sources, plan, seams) -> np.ndarray:
    """Per seam, the largest acceleration the library's own motion has at the source frames shown right after it
    (``sources``: the aligned sources the sequence was made from, ``plan``: its :class:`GesturePlan`): a unit entered
    where its source accelerates hard (a hand turning round at a speed minimum) keeps that acceleration."""
    out = []
    for t in seams:
        seq = sources[int(plan.source[t])]
        acc = joint_acceleration(seq)
        f = int(np.floor(plan.position[t]))
        rows = acc[max(0, f - 1) : max(0, min(len(acc), f + 1))]
        out.append(float(np.nanmax(rows)) if rows.size and np.isfinite(rows).any() else 0.0)
    return np.array(out)


def visible_range(seqs) -> tuple[np.ndarray, np.ndarray]:
    """(min x, min y), (max x, max y) over the visible body/hand points of the sequences."""
    pts = []
    for seq in seqs:
        p = np.concatenate([seq.body, seq.hands.reshape(len(seq), 42, 2)], axis=1)
        sc = np.concatenate([seq.body_score, seq.hands_score.reshape(len(seq), 42)], axis=1)
        pts.append(p[~(p == -1.0).all(-1) & (sc > 0.3)])
    allp = np.concatenate(pts)
    return allp.min(axis=0), allp.max(axis=0)


def outside_picture(seq: PoseSequence) -> int:
    """Number of visible body/hand points outside the draw area [0, 1]."""
    pts = np.concatenate([seq.body, seq.hands.reshape(len(seq), 42, 2)], axis=1)
    sc = np.concatenate([seq.body_score, seq.hands_score.reshape(len(seq), 42)], axis=1)
    vis = ~(pts == -1.0).all(-1) & (sc > 0.3)
    return int((((pts < 0) | (pts > 1)).any(-1) & vis).sum())
