"""The gesture speech analysis of a 16 kHz mono stream given a piece at a time (:class:`SpeechStream`): what
:func:`~.speech.analyze_waveform` measures of the samples -- each frame's level, the spectral flux of each 10 ms hop,
each frame's F0 -- is measured as the samples go by, holding a few frames of them, so a reader that decodes the
track anyway (``echomimic poses --audio``'s checks) hands the analysis on without a second decode and without the
whole 16 kHz mono in memory; only numbers per frame and per hop are kept. The features are
:func:`~.speech.analyze_waveform`'s of the whole stream, bit for bit (the same sums, in the same order; each FFT row
its own).
"""
from __future__ import annotations

import numpy as np

from ...errors import EchoMimicError
from .speech import (HOP, PITCH_WIN, RATE, WIN, SpeechFeatures, band_log_magnitude, features_from, frame_windows,
                     pitch_at, video_frames)


BATCH = 2 * RATE  # samples measured together (fewer, larger numpy calls; their FFTs a few MB at most)


class SpeechStream:
    """``add`` each 16 kHz mono piece in order (``TrackSummariser``'s ``on_16k``), then :meth:`features`."""

    def __init__(self, fps: float):
        if not (fps > 0 and np.isfinite(fps)):
            raise EchoMimicError(f"speech analysis: fps must be a positive number, got {fps}.")
        self.fps = float(fps)
        self.buf, self.cs, self.b0 = np.zeros(0), np.zeros(1), 0  # samples from b0 on, their running sum of squares
        self.seen = self.frame = self.hop = 0  # samples given; next frame, next hop to measure
        self.pending: list = []  # pieces given since the last measure
        self.waiting = 0
        self.db: list = []
        self.f0: list = []
        self.flux: list = []  # the spectral flux of hops 1 .. hop - 1

    def add(self, piece) -> None:
        x = np.asarray(piece, dtype=np.float64).reshape(-1)
        if not x.size:
            return
        self.pending.append(x)
        self.seen += x.size
        self.waiting += x.size
        if self.waiting >= BATCH:
            self._take()
            self._measure(self.seen, final=False)
            self._trim()

    def _take(self) -> None:
        """The pieces waiting joined to the samples held, with their running sum of squares."""
        if not self.pending:
            return
        x = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        self.pending, self.waiting = [], 0
        self.cs = np.r_[self.cs, np.cumsum(np.r_[self.cs[-1], x * x])[1:]]  # as np.cumsum over the whole: in order
        self.buf = np.r_[self.buf, x]

    def _measure(self, n_samples: int, final: bool) -> None:
        if final:
            i1 = video_frames(n_samples, self.fps)
        else:  # frames whose samples are all here: none of their numbers depends on where the track ends
            i1 = self.frame + int((n_samples - self.b0) * self.fps / RATE) + 2
            end, _, b, start = frame_windows(self.frame, i1, 1 << 62, self.fps)
            need = np.maximum(np.maximum(b, end), start + PITCH_WIN)
            i1 = self.frame + int(np.searchsorted(need, n_samples, side="right"))
        if i1 > self.frame:
            _, a, b, start = frame_windows(self.frame, i1, n_samples, self.fps)
            cs = self.cs
            self.db.append(10 * np.log10((cs[b - self.b0] - cs[a - self.b0]) / np.maximum(b - a, 1) + 1e-12))
            self.f0.append(pitch_at(self.buf, start - self.b0) if n_samples >= PITCH_WIN else np.full(i1 - self.frame, np.nan))
            self.frame = i1
        h1 = (n_samples - WIN) // HOP + 1 if n_samples >= WIN else 0  # hops whose window is all here
        h0 = max(self.hop - 2, 0)  # the two hops before again: every batch has two differences or more, as the whole
        if h1 > self.hop and (final or h1 - h0 >= 3):  # track has (numpy sums one row on its own in another order)
            o = h0 * HOP - self.b0
            logm = band_log_magnitude(np.lib.stride_tricks.sliding_window_view(self.buf[o:], WIN)[: (h1 - h0 - 1) * HOP + 1 : HOP])
            self.flux.append(np.maximum(np.diff(logm, axis=0), 0).mean(axis=1)[max(self.hop - h0 - 1, 0) :])
            self.hop = h1

    def _trim(self) -> None:
        """Let go of the samples no frame or hop still to measure needs (the last PITCH_WIN stay for the end's clip)."""
        _, a, _, start = frame_windows(self.frame, self.frame + 1, 1 << 62, self.fps)
        keep = min(int(a[0]), int(start[0]), max(self.hop - 2, 0) * HOP, self.seen - PITCH_WIN) - self.b0
        if keep > 0:
            self.buf, self.cs, self.b0 = self.buf[keep:], self.cs[keep:], self.b0 + keep

    def features(self, min_pause: float = 0.5, min_stroke_gap: float = 0.4, stress_ratio: float = 0.3) -> SpeechFeatures:
        """:func:`~.speech.analyze_waveform` of everything added, with its errors."""
        n = video_frames(self.seen, self.fps)
        if n == 0:
            raise EchoMimicError(f"speech analysis: the clip is shorter than one video frame at {self.fps:g} fps.")
        self._take()
        self._measure(self.seen, final=True)
        db, f0 = np.concatenate(self.db)[:n], np.concatenate(self.f0)[:n]
        if self.seen < WIN + HOP:
            flux = np.zeros(max(1, self.seen // HOP))
        else:
            flux = np.concatenate([np.zeros(WIN // (2 * HOP) + 1)] + self.flux)
        return features_from(self.fps, n, db, flux, lambda active: np.where(active, f0, np.nan), min_pause,
                             min_stroke_gap, stress_ratio)
