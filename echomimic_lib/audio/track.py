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
from .resample import StreamResampler, resampled_length
from .waveform import RawAudio


@dataclass
class TrackSummary:
    sample_rate: int
    samples: int  # per channel
    peak: float  # max |sample| over every channel (NaN samples left out)
    bad: int  # NaN / Inf samples
    first_bad: int | None  # the time index of the first one in the lowest channel that has one (as read_raw_audio says)
    mel_peak: float | None  # the 16 kHz mono log-mel's maximum (None: a clip too short for one)

    @property
    def num_samples_16k(self) -> int:
        """As :attr:`RawAudio.num_samples_16k` of the whole track (``frame_count`` takes either)."""
        return resampled_length(self.samples, self.sample_rate)

    def check_finite(self, what) -> None:
        """Refuse a track with NaN / Inf samples in ``read_raw_audio``'s words, as if it had held the whole track."""
        if self.bad:
            from ..errors import EchoMimicError

            raise EchoMimicError(f"{what}: {self.bad} NaN/Inf samples (first at {self.first_bad / self.sample_rate:.3f} s); "
                                 "the audio is corrupt. Clean it (e.g. replace non-finite samples with 0) before encoding.")


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

    def __init__(self, sample_rate: int, mel: bool = True, on_16k=None):
        """``mel`` False: no log-mel maximum (``mel_peak`` None); ``on_16k``: called with each piece of the 16 kHz mono
        stream (the downmix resampled as :meth:`RawAudio.mono_16k` does), in order, the last one at :meth:`summary`."""
        self.sr, self.n, self.peak, self.bad, self.firsts = int(sample_rate), 0, 0.0, 0, {}
        self.resample, self.mel, self.on_16k = StreamResampler(sample_rate), LogMelPeak() if mel else None, on_16k

    def _16k(self, wave: np.ndarray) -> None:
        if self.mel is not None:
            self.mel.add(wave)
        if self.on_16k is not None:
            self.on_16k(wave)

    def add(self, x: np.ndarray) -> None:
        """``x``: the next (C, k) samples (a long one is taken a second at a time: no copy of it); never written to."""
        x = np.asarray(x)
        if x.shape[1] > max(self.sr, 1):
            for i in range(0, x.shape[1], self.sr):
                self._add(x[:, i : i + self.sr])
        else:
            self._add(x)

    def _add(self, x: np.ndarray) -> None:
        x = x.astype(np.float32, copy=False)
        finite = np.isfinite(x)
        if not finite.all():
            self.bad += int((~finite).sum())
            for c, t in np.argwhere(~finite):
                self.firsts.setdefault(int(c), self.n + int(t))
            x = np.where(finite, x, 0.0).astype(np.float32)
        if x.size:
            self.peak = max(self.peak, float(np.abs(x).max()))
        self._16k(self.resample(x[0] if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float32)))
        self.n += x.shape[1]

    def summary(self) -> TrackSummary:
        self._16k(self.resample(np.zeros(0, np.float32), last=True))
        firsts = self.firsts
        return TrackSummary(self.sr, self.n, self.peak, self.bad, firsts[min(firsts)] if firsts else None,
                            None if self.mel is None else self.mel.value())


class LazyTrackSummariser:
    """The one way a reader makes its :class:`TrackSummariser`: called as ``(sample rate, piece)`` with each decoded
    piece in order (``read_audio``'s ``rest``, or :func:`~echomimic_lib.io.audio_file.audio_blocks`' pairs), it makes the
    summariser with ``options`` (:class:`TrackSummariser`'s ``mel``, ``on_16k``) at the first piece, when the rate is
    known, and adds every piece to it."""

    def __init__(self, **options):
        self.options, self.summariser = options, None

    def __call__(self, sr: int, piece: np.ndarray) -> None:
        if self.summariser is None:
            self.summariser = TrackSummariser(sr, **self.options)
        self.summariser.add(piece)

    def summary(self) -> TrackSummary | None:
        """The track's summary; None when no piece came."""
        return None if self.summariser is None else self.summariser.summary()


def summarise_track(blocks, **options) -> TrackSummary:
    """``blocks``: ``(sample rate, PyAV frame)`` pairs in order (:func:`echomimic_lib.io.audio_file.audio_blocks`)."""
    lazy = LazyTrackSummariser(**options)
    for sr, frame in blocks:
        lazy(sr, frame.to_ndarray())
    summary = lazy.summary()
    return TrackSummary(0, 0, 0.0, 0, None, None) if summary is None else summary


def summarise_file(path, each=None, **options) -> TrackSummary:
    """:func:`summarise_track` of a file's first audio stream, with ``read_audio``'s errors (an empty stream too);
    ``each``: also called with every decoded (C, k) piece, in order (never write to it)."""
    from ..errors import EchoMimicError
    from ..io.audio_file import audio_blocks

    lazy = LazyTrackSummariser(**options)
    for sr, frame in audio_blocks(path):
        piece = frame.to_ndarray()
        lazy(sr, piece)
        if each is not None:
            each(piece)
    if lazy.summariser is None or lazy.summariser.n == 0:
        raise EchoMimicError(f"{path}: the audio stream is empty; give a recording with sound.")
    return lazy.summary()


def read_mono_16k(path) -> np.ndarray:
    """``read_raw_audio(path).mono_16k()`` -- the same samples, the same checks and words -- decoded a piece at a time:
    only the 16 kHz mono is held, never the (C, T) track at its own rate (an hour of 96 kHz 6-channel sound is 8 GB;
    its 16 kHz mono 230 MB). Used by the gesture speech analysis (``echomimic poses --audio``)."""
    from pathlib import Path

    from ..errors import EchoMimicError

    if not Path(path).is_file():
        from ..io.os_errors import missing_text

        raise EchoMimicError(f"{path}: {missing_text(path, 'audio file not found')}.")
    pieces: list = []
    summarise_file(path, mel=False, on_16k=pieces.append).check_finite(path)
    return np.concatenate(pieces) if len(pieces) != 1 else pieces[0]
