"""Keypoint tracks over time: the One-Euro filter, run both ways, and short dropouts filled in.

Detectors (MediaPipe face landmarks, DWPose hands) look at each frame alone, so a still face or hand shakes by a
pixel or two from frame to frame and a finger the detector is unsure of blinks in and out. Drawn into the
condition frames, that shake becomes the generated video's jitter. The One-Euro filter (Casiez, Roussel and
Vogel, CHI 2012) is a low-pass filter whose cutoff rises with the speed of the point: a point at rest is smoothed
hard, a point in fast motion (a mouth opening on a plosive, a hand in a beat gesture) is followed with little lag.

Run causally it still lags a little; here it runs forwards and backwards over the whole clip and the two passes are
averaged, so a steady motion comes out with no lag (what a lip-synced condition needs).

Arrays are (F, N, D): F frames, N points, D coordinates (or (F, N): one value per point, e.g. detector scores).
``valid`` (F, N) or (F,) marks the samples the detector actually saw; the filter is not fed the others. It holds
the last filtered value through them and restarts where the point comes back, and their values are passed
through unchanged. :func:`fill_gaps` interpolates a short gap first, so that only long dropouts stay unseen (and,
asked to, holds a short run at the clip's start or end at the nearest seen value).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import EchoMimicError


@dataclass(frozen=True)
class OneEuro:
    """The filter's settings. ``min_cutoff`` (Hz): the cutoff for a point at rest (lower = steadier);
    ``beta`` (seconds per unit of the coordinates): how fast the cutoff rises with speed (higher = less lag in
    fast motion); ``d_cutoff`` (Hz): the cutoff of the speed estimate itself."""

    min_cutoff: float
    beta: float
    d_cutoff: float = 1.0

    def check(self) -> None:
        if not (self.min_cutoff > 0 and math.isfinite(self.min_cutoff)):
            raise EchoMimicError(f"the One-Euro min_cutoff must be a positive number of Hz, got {self.min_cutoff}.")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise EchoMimicError(f"the One-Euro beta must be 0 or more, got {self.beta}.")
        if not (self.d_cutoff > 0 and math.isfinite(self.d_cutoff)):
            raise EchoMimicError(f"the One-Euro d_cutoff must be a positive number of Hz, got {self.d_cutoff}.")


def _alpha(cutoff, fps: float):
    """Smoothing factor of a first-order low-pass at ``cutoff`` Hz sampled at ``fps``."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau * fps)


def _shape(x, valid):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim not in (2, 3):
        raise EchoMimicError(f"keypoint tracks must be (frames, points) or (frames, points, coords), got shape {x.shape}.")
    if valid is None:
        ok = np.isfinite(x).all(axis=2) if x.ndim == 3 else np.isfinite(x)
    else:
        ok = np.asarray(valid, dtype=bool)
        if ok.ndim == 1:
            ok = np.repeat(ok[:, None], x.shape[1], axis=1)
        if ok.shape != x.shape[:2]:
            raise EchoMimicError(f"valid has shape {ok.shape}, the tracks {x.shape}: expected ({x.shape[0]}, {x.shape[1]}).")
        ok = ok & (np.isfinite(x).all(axis=2) if x.ndim == 3 else np.isfinite(x))
    return (x if x.ndim == 3 else x[:, :, None]), ok


def _pass(x: np.ndarray, ok: np.ndarray, fps: float, f: OneEuro) -> np.ndarray:
    """One causal pass over (F, N, D) tracks."""
    out = x.copy()
    n, d = x.shape[1], x.shape[2]
    xh, dh = np.zeros((n, d)), np.zeros((n, d))
    live = np.zeros(n, dtype=bool)  # the point was seen in the previous frame
    a_d = float(_alpha(f.d_cutoff, fps))
    for t in range(len(x)):
        seen = ok[t]
        start = seen & ~live  # first frame of a run: the filter starts at the sample itself
        xh[start], dh[start] = x[t, start], 0.0
        go = seen & live
        if go.any():
            dx = (x[t, go] - xh[go]) * fps
            dh[go] = a_d * dx + (1.0 - a_d) * dh[go]
            a = _alpha(f.min_cutoff + f.beta * np.linalg.norm(dh[go], axis=1), fps)[:, None]
            xh[go] = a * x[t, go] + (1.0 - a) * xh[go]
        out[t, seen] = xh[seen]
        live = seen
    return out


def one_euro(x, fps: float, settings: OneEuro, valid=None) -> np.ndarray:
    """The tracks ``x`` ((F, N, D) or (F, N)) filtered forwards and backwards, averaged: no lag for steady
    motion. Samples outside ``valid`` (default: the finite ones) are returned unchanged."""
    settings.check()
    if not (fps > 0 and math.isfinite(fps)):
        raise EchoMimicError(f"keypoint smoothing needs the frame rate, got {fps}.")
    flat = np.asarray(x).ndim == 2
    x3, ok = _shape(x, valid)
    if len(x3) < 3:
        return np.array(x, dtype=np.float64)
    fwd = _pass(x3, ok, fps, settings)
    bwd = _pass(x3[::-1], ok[::-1], fps, settings)[::-1]
    out = np.where(ok[:, :, None], 0.5 * (fwd + bwd), x3)
    return out[:, :, 0] if flat else out


def end_runs(valid, max_gap: int) -> np.ndarray:
    """(F,) or (F, N), as ``valid``: the unseen frames before a point's first seen frame and after its last, where
    that run is at most ``max_gap`` frames long (a detector warming up, a face leaving in the clip's last frames).
    A point never seen has none."""
    ok = np.asarray(valid, dtype=bool)
    ok2 = ok[:, None] if ok.ndim == 1 else ok
    f = len(ok2)
    first = np.argmax(ok2, axis=0)
    last = f - 1 - np.argmax(ok2[::-1], axis=0)
    t = np.arange(f)[:, None]
    out = ok2.any(axis=0) & (((t < first) & (first <= max_gap)) | ((t > last) & (f - 1 - last <= max_gap)))
    return out[:, 0] if ok.ndim == 1 else out


def fill_gaps(x, valid, max_gap: int, ends: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation over each run of at most ``max_gap`` unseen frames that has a seen frame on both sides,
    point by point. With ``ends``, a run of at most ``max_gap`` unseen frames at the clip's start or end
    (:func:`end_runs`) holds the nearest seen value (no extrapolation). Returns the tracks and the new ``valid``
    (F, N); longer gaps (and without ``ends`` the clip's ends) stay as they were."""
    flat = np.asarray(x).ndim == 2
    x3, ok = _shape(x, valid)
    x3, ok = x3.copy(), ok.copy()
    if max_gap < 1:
        return (x3[:, :, 0] if flat else x3), ok
    edge = end_runs(ok, max_gap) if ends else None
    for j in np.flatnonzero(~ok.all(axis=0) & ok.any(axis=0)):
        seen = np.flatnonzero(ok[:, j])
        for a, b in zip(seen[:-1], seen[1:]):
            if 1 < b - a <= max_gap + 1:
                w = (np.arange(a + 1, b) - a)[:, None] / (b - a)
                x3[a + 1 : b, j] = (1.0 - w) * x3[a, j] + w * x3[b, j]
                ok[a + 1 : b, j] = True
        if edge is not None and edge[:, j].any():  # held at the first seen value before it, the last after it
            e = np.flatnonzero(edge[:, j])
            x3[e, j] = x3[np.where(e < seen[0], seen[0], seen[-1]), j]
            ok[e, j] = True
    return (x3[:, :, 0] if flat else x3), ok


def shake(x, valid=None) -> float:
    """Mean length of the second difference ``x[t+1] - 2 x[t] + x[t-1]`` over the points seen in all three frames
    (units of the coordinates per frame^2): what a still point's jitter adds and what smoothing takes away. NaN
    when no point is seen three frames running."""
    x3, ok = _shape(x, valid)
    if len(x3) < 3:
        return float("nan")
    acc = np.linalg.norm(x3[2:] - 2.0 * x3[1:-1] + x3[:-2], axis=2)
    both = ok[2:] & ok[1:-1] & ok[:-2]
    return float(acc[both].mean()) if both.any() else float("nan")
