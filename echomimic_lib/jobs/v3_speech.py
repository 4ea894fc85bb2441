"""EchoMimicV3's speech (``echomimic animate --version v3 --audio``), read in one decode pass without holding the
whole track: the start the video can use is kept (at most ``cap`` frames, and 2 s more of sound to mux), the rest goes
by a piece at a time for the checks :func:`~echomimic_lib.jobs.speech_input.read_speech` makes, the track's length
and the loudness of the whole 16 kHz clip (:class:`~echomimic_lib.audio.loudness.LoudnessMeter`, the official
rule: measured over the whole clip). :meth:`V3Speech.prepared` is then, bit for bit, what
``prepare_samples(resample_16k(mono, rate), frames)`` makes of the whole track (tests/test_speech_one_pass.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FPS, RATE = 25, 16000  # (audio.wav2vec's, without importing torch here)


@dataclass
class V3Speech:
    wav: np.ndarray        # (C, T) the start of the track at its own rate (all of it when shorter)
    sample_rate: int
    samples: int           # per channel, the whole track's
    head_16k: np.ndarray   # the first samples of the whole track's 16 kHz mono (``resample_16k``), float32
    samples_16k: int       # the whole 16 kHz mono's length
    lufs: float | None     # the whole 16 kHz mono's integrated loudness (None: under one 400 ms block)

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    def prepared(self, frames: int) -> np.ndarray:
        """``prepare_samples(resample_16k(mono, rate), frames)`` of the whole track: its loudness normalised to
        -23 LUFS (unchanged past +-100 LUFS or under 400 ms), then its first ``int(frames / 25 * 16000)`` samples."""
        from ..audio.loudness import TARGET_LUFS

        cut = int(frames / FPS * RATE)
        if cut > len(self.head_16k) and len(self.head_16k) < self.samples_16k:
            raise ValueError(f"V3 speech: {frames} frames need {cut} samples at 16 kHz; {len(self.head_16k)} were kept")
        if self.lufs is None or abs(self.lufs) > 100:
            return self.head_16k[:cut]
        return np.power(10.0, (TARGET_LUFS - self.lufs) / 20.0) * self.head_16k[:cut]


class _Sixteen:
    """The 16 kHz mono stream: its first ``keep`` samples kept, all of it measured for loudness."""

    def __init__(self, keep: int):
        from ..audio.loudness import LoudnessMeter

        self.keep, self.head, self.kept, self.meter = keep, [], 0, LoudnessMeter(RATE)

    def __call__(self, wave: np.ndarray) -> None:
        if self.kept < self.keep and len(wave):
            part = wave[: self.keep - self.kept].copy()
            self.head.append(part)
            self.kept += len(part)
        if len(wave):
            self.meter.add(wave)


def read_v3_speech(path, cap: int) -> V3Speech:
    """The speech of a V3 video of at most ``cap`` frames (25 fps), checked as ``read_speech(path)`` checks it (the
    same errors, in the same order), holding its start and one decoded piece at a time, not the whole track."""
    from ..audio.loudness import BLOCK_S
    from ..audio.track import LazyTrackSummariser
    from ..io.audio_file import read_audio
    from .speech_input import check_speech_file, check_whole_speech

    p = check_speech_file(path)
    sixteen = _Sixteen(int(cap / FPS * RATE))
    rest = LazyTrackSummariser(mel=False, on_16k=sixteen)
    wav, sr = read_audio(p, duration=cap / FPS + 2.0, rest=rest)  # (2 s: a start muxed under the frames and 1 s more)
    if rest.summariser is None:  # the track ended within the start: read_audio passed nothing on, it is all in ``wav``
        rest(sr, wav)
    whole = rest.summary()
    check_whole_speech(p, whole)
    # resample_16k's length rule (librosa's): the stream's samples, padded with zeros to ceil(n * 16000 / rate)
    n16 = int(math.ceil(whole.samples * RATE / sr)) if float(sr) != RATE else whole.samples
    head = np.concatenate(sixteen.head) if sixteen.head else np.zeros(0, np.float32)
    want = min(sixteen.keep, n16)
    head = np.pad(head, (0, max(0, want - len(head))))[:want]
    lufs = sixteen.meter.loudness(n16) if n16 >= BLOCK_S * RATE else None
    return V3Speech(wav, sr, whole.samples, head, n16, lufs)


__all__ = ["V3Speech", "read_v3_speech"]
