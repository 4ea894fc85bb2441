"""Weight-free audio-visual sync: mouth opening from face landmarks against the audio's energy envelope.

- Mouth opening: mean gap of five upper/lower inner-lip point pairs, divided by the eye-corner distance
  (so it does not change with the face size or the distance to the camera).
- Audio energy: log RMS of the 16 kHz mono waveform in a window of one video frame, every 5 ms, normalised
  to its loudest window and floored at -60 dB.
- Video frame ``i`` is taken at ``i / fps`` (its presentation time, the time EchoMimic's audio features use).
  For each candidate offset ``tau`` in ``[-max_offset, +max_offset]`` (5 ms steps) the Pearson correlation of
  ``mouth[i]`` with ``energy(i / fps + tau)`` is computed over the frames whose shifted time lies inside the
  audio. The best ``tau`` is the offset: **positive means the audio is late** (a sound comes after the mouth
  movement that made it), negative that it is early. The correlation at that offset is the sync strength.
- The best of 201 correlations is never near 0, even for a mouth unrelated to the speech, and short clips
  score high by chance. :func:`sync_null` gives the score a reference: the same mouth trace against the clip's
  own audio energy **time-reversed and circularly shifted** to ``NULL_COUNT`` evenly spaced starts (same
  loudness distribution and rhythm, no timing relation), scored the same way (best offset). The score is
  reported with its empirical p-value among those nulls, its z-score and the nulls' 95th percentile.
  Below ``MIN_SYNC_SECONDS`` an unrelated mouth reaches the level of real speech too often
  (``bench/bench_sync_null.py``): the score is still computed but flagged as not meaningful.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EchoMimicError
from .face import face_scale

INNER_LIP_PAIRS = ((13, 14), (82, 87), (312, 317), (81, 178), (311, 402))  # upper, lower inner-lip points
SAMPLE_RATE = 16000
HOP_S = 0.005
FLOOR_DB = -60.0
MIN_FRAMES = 8
NULL_COUNT = 200        # time-reversed, circularly shifted copies of the audio energy in the null distribution
# Shortest clip whose sync strength means something: from bench/bench_sync_null.py, the duration from which the
# 95th percentile of an unrelated mouth's score (AR(1) traces against 26 s of real speech) stays below
# NULL_P95_LEVEL, the score of the in-sync V1 pose demo over its 10 s (0.42): 0.39 at 6 s, 0.55 at 4 s, 0.90 at 1 s.
MIN_SYNC_SECONDS = 6.0
NULL_P95_LEVEL = 0.4


@dataclass
class SyncResult:
    offset_ms: float | None        # best offset (positive: audio late); None when undefined
    corr: float | None             # Pearson correlation at that offset
    lags_ms: np.ndarray            # candidate offsets
    curve: np.ndarray              # correlation per candidate offset (NaN where undefined)
    mouth: np.ndarray              # (F,) mouth opening per frame
    energy: np.ndarray             # (F,) audio energy (dB re. loudest window) at each frame's time, unshifted
    fps: float


def mouth_opening(px: np.ndarray) -> np.ndarray:
    """(F,) inner-lip gap in units of the eye-corner distance, from (F, N, 2) pixel landmarks."""
    px = np.asarray(px, dtype=np.float64)[..., :2]
    gap = np.mean([np.linalg.norm(px[:, a] - px[:, b], axis=-1) for a, b in INNER_LIP_PAIRS], axis=0)
    return gap / np.maximum(face_scale(px), 1e-9)


def energy_envelope(wave16k: np.ndarray, window_s: float, hop_s: float = HOP_S) -> np.ndarray:
    """Log RMS (dB re. the loudest window, floored at FLOOR_DB) of windows of ``window_s`` centred at
    ``k * hop_s``, k = 0 .. duration / hop_s."""
    wave = np.asarray(wave16k, dtype=np.float64).reshape(-1)
    n = int(len(wave) / SAMPLE_RATE / hop_s) + 1
    power = np.concatenate([[0.0], np.cumsum(wave ** 2)])
    t = np.arange(n) * hop_s
    lo = np.clip(np.round((t - window_s / 2) * SAMPLE_RATE).astype(np.int64), 0, len(wave))
    hi = np.clip(np.round((t + window_s / 2) * SAMPLE_RATE).astype(np.int64), 0, len(wave))
    rms = np.sqrt((power[hi] - power[lo]) / np.maximum(hi - lo, 1))
    peak = float(rms.max()) if len(rms) else 0.0
    if peak <= 0:
        return np.full(n, FLOOR_DB)
    return np.maximum(20 * np.log10(np.maximum(rms / peak, 1e-12)), FLOOR_DB)


def _curve(mouth: np.ndarray, times: np.ndarray, env_t: np.ndarray, env: np.ndarray, sample=None) -> np.ndarray:
    """Pearson correlation of ``mouth`` with the energy at each row of ``times`` (L, F) (one row per candidate
    offset), over the frames whose time lies inside the audio; NaN for a row with fewer than
    ``max(MIN_FRAMES, F // 2)`` such frames or without variance. ``sample(times)``: the energy at those times
    (default: ``env`` interpolated)."""
    ok = (times >= 0) & (times <= env_t[-1])
    n = ok.sum(axis=1)
    y = np.interp(times, env_t, env) if sample is None else sample(times)
    x = np.broadcast_to(mouth, times.shape)
    nn = np.maximum(n, 1)
    xc = np.where(ok, x - (x * ok).sum(axis=1, keepdims=True) / nn[:, None], 0.0)
    yc = np.where(ok, y - (y * ok).sum(axis=1, keepdims=True) / nn[:, None], 0.0)
    den = np.sqrt((xc ** 2).sum(axis=1) * (yc ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = (xc * yc).sum(axis=1) / den
    curve[(den <= 1e-12) | (n < max(MIN_FRAMES, times.shape[1] // 2))] = np.nan
    return curve


def av_sync(mouth: np.ndarray, wave16k: np.ndarray, fps: float, max_offset_s: float = 0.5, step_s: float = HOP_S) -> SyncResult:
    """Cross-correlate mouth opening (per frame at ``fps``) with the energy of ``wave16k`` (16 kHz mono)."""
    mouth = np.asarray(mouth, dtype=np.float64)
    fps = float(fps)
    if not np.isfinite(fps) or fps <= 0:
        raise EchoMimicError(f"fps must be a positive number, got {fps!r}.")
    if len(mouth) < MIN_FRAMES:
        raise EchoMimicError(f"lip sync needs at least {MIN_FRAMES} frames; the clip has {len(mouth)}.")
    env = energy_envelope(wave16k, 1.0 / fps, step_s)
    env_t = np.arange(len(env)) * step_s
    t = np.arange(len(mouth)) / fps
    steps = int(round(max_offset_s / step_s))
    lags = np.arange(-steps, steps + 1) * step_s
    curve = _curve(mouth, t[None, :] + lags[:, None], env_t, env)
    energy = np.interp(t, env_t, env, right=FLOOR_DB)
    lags_ms = np.round(lags * 1000, 6)
    if np.all(np.isnan(curve)):
        return SyncResult(None, None, lags_ms, curve, mouth, energy, fps)
    best = int(np.nanargmax(curve))
    return SyncResult(float(lags_ms[best]), float(curve[best]), lags_ms, curve, mouth, energy, fps)


@dataclass
class SyncNull:
    """The sync strength against its null distribution (see the module notes)."""

    corr: float                    # the clip's sync strength
    p_value: float                 # (1 + nulls >= corr) / (1 + nulls): chance of scoring this high without sync
    z: float                       # (corr - null mean) / null standard deviation
    null_mean: float
    null_p95: float                # 95th percentile of the nulls
    nulls: int                     # null scores computed
    seconds: float                 # clip duration
    meaningful: bool               # seconds >= MIN_SYNC_SECONDS


def sync_null(result: SyncResult, wave16k: np.ndarray, max_offset_s: float = 0.5, count: int = NULL_COUNT,
              step_s: float = HOP_S, min_seconds: float = MIN_SYNC_SECONDS) -> SyncNull | None:
    """Score ``result``'s mouth trace against ``count`` copies of the clip's audio energy, time-reversed and
    circularly shifted to evenly spaced starts, with the same offset search as :func:`av_sync`; deterministic.
    None when the clip's own score is undefined."""
    if result.corr is None:
        return None
    mouth, fps = result.mouth, result.fps
    env = energy_envelope(wave16k, 1.0 / fps, step_s)
    env_t = np.arange(len(env)) * step_s
    period = len(env) * step_s
    rev = env[::-1].copy()
    t = np.arange(len(mouth)) / fps
    lags = result.lags_ms / 1000.0
    times = t[None, :] + lags[:, None]
    scores = []
    for k in range(count):
        shift = (k + 0.5) * period / count
        curve = _curve(mouth, times, env_t, rev, lambda tt: np.interp((tt + shift) % period, env_t, rev, period=period))
        if not np.all(np.isnan(curve)):
            scores.append(float(np.nanmax(curve)))
    if not scores:
        return None
    null = np.asarray(scores)
    std = float(null.std())
    seconds = len(mouth) / fps
    return SyncNull(result.corr, float((1 + (null >= result.corr).sum()) / (1 + len(null))),
                    float((result.corr - null.mean()) / std) if std > 1e-12 else float("nan"), float(null.mean()),
                    float(np.percentile(null, 95)), len(null), seconds, seconds >= min_seconds)
