"""Speech features for gesture synthesis, at the video frame rate, with numpy only (no model weights).

From the 16 kHz mono waveform the pack already reads (:func:`echomimic_lib.audio.read_raw_audio`):

- ``loudness`` (F,): frame RMS in dB, mapped to 0..1 over the clip's own range (0 = 40 dB below its loud level);
- ``active`` (F,): voice activity (the frame is within 30 dB of the loud level and above -55 dBFS);
- ``pauses``: inactive runs of at least ``min_pause`` seconds, as (start, end) frames; ``pause`` (F,) the same as a mask;
- ``onsets``: frames where the spectral flux (300 Hz - 4 kHz, 10 ms hops) peaks above its local level during speech;
  ``onset_strength`` (F,) the flux per frame;
- ``stresses``: the onsets that carry a stroke: salient (flux x squared loudness just after) relative to the onsets
  around them, at least ``min_stroke_gap`` seconds apart (stronger ones win) -- the targets for gesture strokes;
- ``pitch`` (F,) F0 in Hz by autocorrelation on voiced frames (NaN elsewhere) and ``pitch_motion`` (F,) its
  smoothed absolute change in octaves per second.

Frame i covers [i / fps, (i + 1) / fps); the clip yields floor(seconds x fps) frames like ``echomimic animate``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import EchoMimicError

RATE = 16000
HOP = 160  # 10 ms
WIN = 400  # 25 ms
RANGE_DB = 40.0
ACTIVE_DB = 30.0
FLOOR_DBFS = -55.0
PITCH_WIN = 640  # 40 ms


@dataclass
class SpeechFeatures:
    fps: float
    loudness: np.ndarray
    active: np.ndarray
    pause: np.ndarray
    pauses: list
    onset_strength: np.ndarray
    onsets: np.ndarray
    stresses: np.ndarray
    pitch: np.ndarray
    pitch_motion: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.loudness)

    def crop(self, n: int) -> "SpeechFeatures":
        """The first ``n`` frames (events after them dropped)."""
        pauses = [(a, min(b, n)) for a, b in self.pauses if a < n]
        return SpeechFeatures(self.fps, self.loudness[:n], self.active[:n], self.pause[:n], pauses, self.onset_strength[:n],
                              self.onsets[self.onsets < n], self.stresses[self.stresses < n], self.pitch[:n], self.pitch_motion[:n])


def video_frames(n_samples: int, fps: float) -> int:
    """How many whole video frames ``n_samples`` of 16 kHz hold."""
    return int(np.floor(n_samples / RATE * fps + 1e-9))


def frame_windows(i0: int, i1: int, n_samples: int, fps: float):
    """For video frames ``i0 .. i1-1`` of a track of ``n_samples`` (16 kHz): (each frame's end sample, the start and
    end of its level window (two frames centred on it), the start of its pitch window), int64 arrays, all within the
    track. The same numbers for a frame whichever range it is asked in (the analysis of a whole track, or of a stream)."""
    bounds = np.minimum(np.round(np.arange(i0, i1 + 1) * RATE / fps).astype(np.int64), n_samples)
    centre = (bounds[:-1] + bounds[1:]) // 2
    half = int(round(RATE / fps))
    a, b = np.clip(centre - half, 0, n_samples), np.clip(centre + half, 0, n_samples)
    return bounds[1:], a, b, np.clip(centre - PITCH_WIN // 2, 0, max(0, n_samples - PITCH_WIN))


def true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The (start, end) spans where ``mask`` is True, in order."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _moving_mean(x: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return x
    c = np.cumsum(np.r_[0.0, np.pad(x, (width // 2, width - 1 - width // 2), mode="edge")])
    return (c[width:] - c[:-width]) / width


def spectral_flux(wave: np.ndarray) -> np.ndarray:
    """Half-wave rectified log-magnitude flux per 10 ms hop (300 Hz - 4 kHz)."""
    if len(wave) < WIN + HOP:
        return np.zeros(max(1, len(wave) // HOP))
    n = 1 + (len(wave) - WIN) // HOP
    frames = np.lib.stride_tricks.as_strided(wave, (n, WIN), (wave.strides[0] * HOP, wave.strides[0]))
    flux = np.r_[0.0, np.maximum(np.diff(band_log_magnitude(frames), axis=0), 0).mean(axis=1)]
    # hop h starts at sample h*HOP; centre it on the window
    return np.r_[np.zeros(WIN // (2 * HOP)), flux]


def band_log_magnitude(frames: np.ndarray) -> np.ndarray:
    """(h, WIN) windows -> their log magnitudes from 300 Hz to 4 kHz, a row each (each row its own)."""
    spec = np.abs(np.fft.rfft(frames * np.hanning(WIN), n=512, axis=1))
    freqs = np.fft.rfftfreq(512, 1 / RATE)
    band = (freqs >= 300) & (freqs <= 4000)
    return np.log1p(1000.0 * spec[:, band])


def _pitch(wave: np.ndarray, starts: np.ndarray, active: np.ndarray) -> np.ndarray:
    """F0 per frame (Hz) by normalised autocorrelation of a 40 ms window at the frame centre (``starts``: each frame's
    window start, :func:`frame_windows`); NaN when unvoiced."""
    f0 = np.full(len(active), np.nan)
    idx = np.flatnonzero(active)
    if idx.size == 0 or len(wave) < PITCH_WIN:
        return f0
    f0[idx] = pitch_at(wave, starts[idx])
    return f0


def pitch_at(wave: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """F0 (Hz, NaN when unvoiced) of the ``PITCH_WIN`` samples of ``wave`` from each of ``starts``: each its own."""
    w = PITCH_WIN
    segs = wave[starts[:, None] + np.arange(w)] * np.hanning(w)
    spec = np.fft.rfft(segs, n=2 * w, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :w]
    lo, hi = RATE // 400, RATE // 70
    ac = ac / np.maximum(ac[:, :1], 1e-12)
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    voiced = ac[np.arange(len(starts)), lag] > 0.45
    return np.where(voiced, RATE / lag, np.nan)


def _peaks(x: np.ndarray, radius: int) -> np.ndarray:
    """Indices of strict local maxima within +-radius (first of a plateau)."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    pad = np.pad(x, radius, mode="constant", constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * radius + 1)
    is_max = (x >= win.max(axis=1)) & (x > 0)
    keep = is_max & np.r_[True, x[1:] != x[:-1]]
    return np.flatnonzero(keep)


def analyze_speech(audio, fps: float = 24.0, sample_rate=None, min_pause: float = 0.5, min_stroke_gap: float = 0.4,
                   stress_ratio: float = 0.3) -> SpeechFeatures:
    """Speech features of a clip (path, ComfyUI AUDIO dict, tensor/array with ``sample_rate``) at ``fps``.

    ``min_pause``: shortest silence (s) that counts as a pause (rest posture). ``min_stroke_gap``: shortest time (s)
    between two stresses. ``stress_ratio``: an onset is a stress when its salience is at least this times the
    strongest onset's within +-1 s."""
    from ...audio import read_raw_audio

    if not (fps > 0 and np.isfinite(fps)):
        raise EchoMimicError(f"speech analysis: fps must be a positive number, got {fps}.")
    if isinstance(audio, (str, Path)):  # a file: decoded a piece at a time, only its 16 kHz mono held (the same samples)
        from ...audio.track import read_mono_16k

        wave = read_mono_16k(audio).astype(np.float64)
    else:
        wave = read_raw_audio(audio, sample_rate).mono_16k().astype(np.float64)
    return analyze_waveform(wave, fps, min_pause, min_stroke_gap, stress_ratio)


def analyze_waveform(wave: np.ndarray, fps: float, min_pause: float = 0.5, min_stroke_gap: float = 0.4,
                     stress_ratio: float = 0.3) -> SpeechFeatures:
    """:func:`analyze_speech` on 16 kHz mono float samples."""
    wave = np.ascontiguousarray(np.asarray(wave, dtype=np.float64).reshape(-1))
    n = video_frames(len(wave), fps)
    if n == 0:
        raise EchoMimicError(f"speech analysis: the clip is shorter than one video frame at {fps:g} fps.")
    csum = np.r_[0.0, np.cumsum(wave * wave)]
    _, a, b, starts = frame_windows(0, n, len(wave), fps)  # level: a window of two frames centred on each frame
    db = 10 * np.log10((csum[b] - csum[a]) / np.maximum(b - a, 1) + 1e-12)
    return features_from(fps, n, db, spectral_flux(wave), lambda active: _pitch(wave, starts, active), min_pause,
                         min_stroke_gap, stress_ratio)


def features_from(fps: float, n: int, db: np.ndarray, flux: np.ndarray, pitch_of, min_pause: float = 0.5,
                  min_stroke_gap: float = 0.4, stress_ratio: float = 0.3) -> SpeechFeatures:
    """:func:`analyze_waveform`'s features from what it measures of the samples: ``db`` (n,) each frame's level,
    ``flux`` :func:`spectral_flux`, ``pitch_of(active)`` the (n,) F0 of the active frames (NaN elsewhere); the rest is
    per frame (:class:`~.speech_stream.SpeechStream` measures them a piece of the track at a time)."""
    loud_level = float(np.percentile(db, 95))
    loudness = np.clip((db - (loud_level - RANGE_DB)) / RANGE_DB, 0.0, 1.0)
    active = (db > loud_level - ACTIVE_DB) & (db > FLOOR_DBFS)
    pauses = [(s, e) for s, e in true_runs(~active) if (e - s) / fps >= min_pause]
    pause = np.zeros(n, dtype=bool)
    for s, e in pauses:
        pause[s:e] = True
    # onsets: flux peaks at 100 Hz, above the local mean, during speech
    hop_t = np.arange(len(flux)) * HOP / RATE
    frame_of_hop = np.minimum((hop_t * fps).astype(np.int64), n - 1)
    strength = np.zeros(n)
    np.maximum.at(strength, frame_of_hop, flux)
    local = _moving_mean(flux, 50) * 1.5 + 1e-3 * (flux.max() if flux.size else 0)
    cand = [h for h in _peaks(flux, 5) if flux[h] > local[h]]
    onsets = np.unique(np.array([frame_of_hop[h] for h in cand if active[frame_of_hop[h]]], dtype=np.int64))
    # salience: the flux times the squared loudness just after the onset (stressed syllables are louder)
    ahead = max(1, int(round(0.12 * fps)))
    peak = np.array([loudness[o : o + ahead + 1].max() for o in onsets]) if onsets.size else np.zeros(0)
    salience = np.zeros(n)
    salience[onsets] = strength[onsets] * peak**2
    stresses = select_stresses(onsets, salience, fps, min_stroke_gap, stress_ratio)
    f0 = pitch_of(active)
    lf = np.log2(f0)
    d = np.zeros(n)
    both = np.isfinite(lf[1:]) & np.isfinite(lf[:-1])
    d[1:][both] = np.abs(np.diff(lf))[both] * fps
    motion = _moving_mean(np.minimum(d, 8.0), max(1, int(round(0.2 * fps))))
    return SpeechFeatures(float(fps), loudness, active, pause, pauses, strength, onsets, stresses, f0, motion)


def select_stresses(onsets: np.ndarray, strength: np.ndarray, fps: float, min_gap: float, ratio: float) -> np.ndarray:
    """Onsets at least ``ratio`` x the strongest within +-1 s, thinned to ``min_gap`` seconds, strongest first."""
    if onsets.size == 0:
        return onsets
    s = strength[onsets]
    win = max(1, int(round(fps)))
    strong = np.array([s[i] >= ratio * s[np.abs(onsets - o) <= win].max() for i, o in enumerate(onsets)])
    cand = onsets[strong]
    order = np.argsort(-strength[cand], kind="stable")
    gap = min_gap * fps
    kept: list[int] = []
    for i in order:
        o = int(cand[i])
        if all(abs(o - k) >= gap for k in kept):
            kept.append(o)
    return np.array(sorted(kept), dtype=np.int64)


def relative_loudness(speech: SpeechFeatures, smooth_s: float = 1.0, min_spread: float = 0.2, absolute: float = 0.3) -> np.ndarray:
    """(F,) 0..1: how loud each phrase is *for this clip*. The loudness smoothed over about ``smooth_s`` seconds
    (phrases, not syllables) is placed against the clip's speaking frames: 0.5 at their median, +-0.5 per 10th..90th
    percentile spread -- or per ``min_spread`` (0.2 = 8 dB) when the clip varies less, so a steady voice stays
    steady while a clip spoken at one loud level still has its louder and calmer phrases; mixed with ``absolute`` of
    the plain level (loudness / 0.7: a whisper stays calmer than a shout). Silence comes out at 0."""
    loud = np.asarray(speech.loudness, dtype=np.float64)
    if loud.size == 0:
        return loud.copy()
    w = max(3, int(round(2 * smooth_s * speech.fps)))  # a Hann window twice as long: no ripple from syllable rhythm
    k = np.hanning(w + 2)[1:-1]
    smooth = np.convolve(np.pad(loud, (w // 2, w - 1 - w // 2), mode="edge"), k / k.sum(), mode="valid")
    level = np.clip(smooth / 0.7, 0.0, 1.0)
    speaking = smooth[speech.active]
    if speaking.size < 3:  # (next to) no speech: nothing to be loud about
        return np.zeros_like(level)
    lo, mid, hi = np.percentile(speaking, [10, 50, 90])
    rel = np.clip(0.5 + (smooth - mid) / max(hi - lo, min_spread), 0.0, 1.0)
    return np.clip((1.0 - absolute) * rel + absolute * level, 0.0, 1.0) * np.minimum(1.0, level / 0.15)
