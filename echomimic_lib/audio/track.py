"""What the speech checks and the whisper features need of a whole track, gathered in one pass that holds one
decoded piece (and at most one 60 s log-mel block) at a time: how long it is, its peak, its non-finite samples,
and the maximum its log-mel floors at (:class:`~echomimic_lib.audio.mel.LogMelPeak`). Each is the number a whole
decode gives (the same downmix, the same resampler stream, the same log-mel blocks), so a job that keeps only the
start of a long recording (``--length``) checks and encodes it as if it had held all of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mel import LogMelPeak
from .resample import StreamResampler
from .waveform import RawAudio


@dataclass
class TrackSummary:
    sample_rate: int
    samples: int  # per channel
    peak: float  # max |sample| over every channel (NaN samples left out)
    bad: int  # NaN / Inf samples
    first_bad: int | None  # the time index of the first one in the lowest channel that has one (as read_raw_audio says)
    mel_peak: float | None  # the 16 kHz mono log-mel's maximum (None: a clip too short for one)


@dataclass
class SpeechStart(RawAudio):
    """The start of a longer recording that ``read_speech`` (:mod:`echomimic_lib.jobs.speech_input`) kept for
    ``--length``: ``samples`` hold the first :func:`~echomimic_lib.audio.features.seconds_for_frames`; ``whole_samples``
    (per channel) and ``mel_peak`` (the log-mel maximum, for ``encode_audio(..., mel_peak=)``) are the whole track's."""

    whole_samples: int = 0
    mel_peak: float | None = None


class TrackSummariser:
    """:class:`TrackSummary` of a track given piece by piece (:meth:`add` each decoded ``(C, k)`` float32 piece in
    order, then :meth:`summary`): one piece held at a time, so a reader that keeps the start of a track can summarise
    the whole of it in the same decode pass (:func:`echomimic_lib.jobs.speech_input.read_speech`)."""

    def __init__(self, sample_rate: int):
        self.sr, self.n, self.peak, self.bad, self.firsts = int(sample_rate), 0, 0.0, 0, {}
        self.resample, self.mel = StreamResampler(sample_rate), LogMelPeak()

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x).astype(np.float32, copy=False)  # (C, k); never written to (a kept piece stays as decoded)
        finite = np.isfinite(x)
        if not finite.all():
            self.bad += int((~finite).sum())
            for c, t in np.argwhere(~finite):
                self.firsts.setdefault(int(c), self.n + int(t))
            x = np.where(finite, x, 0.0).astype(np.float32)
        if x.size:
            self.peak = max(self.peak, float(np.abs(x).max()))
        self.mel.add(self.resample(x[0] if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float32)))
        self.n += x.shape[1]

    def summary(self) -> TrackSummary:
        self.mel.add(self.resample(np.zeros(0, np.float32), last=True))
        firsts = self.firsts
        return TrackSummary(self.sr, self.n, self.peak, self.bad, firsts[min(firsts)] if firsts else None,
                            self.mel.value())


def summarise_track(blocks) -> TrackSummary:
    """``blocks``: ``(sample rate, PyAV frame)`` pairs in order (:func:`echomimic_lib.io.video_io.audio_blocks`)."""
    summariser = None
    for sr, frame in blocks:
        if summariser is None:
            summariser = TrackSummariser(sr)
        summariser.add(frame.to_ndarray())
    if summariser is None:
        return TrackSummary(0, 0, 0.0, 0, None, None)
    return summariser.summary()
