"""Weight-free audio-visual sync: mouth opening from face landmarks against the audio's energy envelope.

- Mouth opening: mean gap of five upper/lower inner-lip point pairs, divided by the eye-corner distance
  (so it does not change with the face size or the distance to the camera).
- Audio energy: log RMS of the 16 kHz mono waveform in a window of one video frame, every 5 ms, normalised
  to its loudest window and floored at -60 dB.
- Video frame ``i`` is taken at ``i / fps`` (its presentation time, the time EchoMimic's audio features use).
  For each candidate offset ``tau`` in ``[-max_offset, +max_offset]`` (5 ms steps) the Pearson correlation of
  ``mouth[i]`` with ``energy(i / fps + tau)`` is computed over the frames whose shifted time lies inside the
  audio. The best ``tau`` is the offset: **positive means the audio is late** (a sound comes after the mouth
  movement that made it), negative that it is early. The correlation at that offset is the sync strength
  (about 0.3-0.5 for real speech with matching landmarks; near 0 when mouth and audio are unrelated).
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


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = float(np.sqrt((x ** 2).sum() * (y ** 2).sum()))
    return float((x * y).sum() / den) if den > 1e-12 else float("nan")


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
    curve = np.full(len(lags), np.nan)
    min_overlap = max(MIN_FRAMES, len(mouth) // 2)
    for k, tau in enumerate(lags):
        tt = t + tau
        ok = (tt >= 0) & (tt <= env_t[-1])
        if ok.sum() >= min_overlap:
            curve[k] = _pearson(mouth[ok], np.interp(tt[ok], env_t, env))
    energy = np.interp(t, env_t, env, right=FLOOR_DB)
    lags_ms = np.round(lags * 1000, 6)
    if np.all(np.isnan(curve)):
        return SyncResult(None, None, lags_ms, curve, mouth, energy, fps)
    best = int(np.nanargmax(curve))
    return SyncResult(float(lags_ms[best]), float(curve[best]), lags_ms, curve, mouth, energy, fps)
