"""An output's sound track: (C, T) audio as stereo (:func:`to_stereo`), and a file's sound muxed a piece at a time
(:class:`SoundFile`) so that a writer never holds a long track (``echomimic poses --audio``'s preview of an hour of
speech holds one decoded piece, not the hour).
"""
from __future__ import annotations

import numpy as np

# FFmpeg's default channel order for each count (WAV, FLAC, AAC decode to it) and the ITU-R BS.775 stereo
# downmix: centre and surrounds at -3 dB into both sides, LFE left out. Rows: (left, right) weights per channel.
_M3 = 0.7071
_DOWNMIX = {
    3: ((1, 0, _M3), (0, 1, _M3)),  # FL FR FC
    4: ((1, 0, _M3, _M3), (0, 1, _M3, _M3)),  # FL FR FC BC
    5: ((1, 0, _M3, _M3, 0), (0, 1, _M3, 0, _M3)),  # FL FR FC BL BR
    6: ((1, 0, _M3, 0, _M3, 0), (0, 1, _M3, 0, 0, _M3)),  # FL FR FC LFE BL BR (5.1)
    7: ((1, 0, _M3, 0, _M3, 0, _M3), (0, 1, _M3, 0, 0, _M3, _M3)),  # FL FR FC LFE BL BR BC (6.1)
    8: ((1, 0, _M3, 0, _M3, 0, _M3, 0), (0, 1, _M3, 0, 0, _M3, 0, _M3)),  # FL FR FC LFE BL BR SL SR (7.1)
}


def _matrix(channels: int) -> np.ndarray:
    return np.asarray(_DOWNMIX.get(channels, (np.full(channels, 1.0 / channels),) * 2), dtype=np.float32)


def to_stereo(audio: np.ndarray) -> np.ndarray:
    """(C, T) audio as the output's sound track: mono and stereo as they are; more channels downmixed to stereo
    (so speech in a centre channel is heard), scaled down only where the mix would clip."""
    if audio.shape[0] <= 2:
        return audio
    mixed = _matrix(audio.shape[0]) @ audio
    peak = float(np.abs(mixed).max(initial=0.0))
    return (mixed / peak if peak > 1.0 else mixed).astype(np.float32)


class MixPeak:
    """The peak of :func:`to_stereo`'s downmix of a track given piece by piece (``add`` each (C, k) piece in order; 0
    for mono and stereo, which are never scaled): what :class:`SoundFile` needs to scale a long track as
    :func:`to_stereo` scales it whole."""

    def __init__(self):
        self.value, self.channels = 0.0, 0

    def add(self, piece: np.ndarray) -> None:
        self.channels = piece.shape[0]
        if piece.shape[0] > 2 and piece.shape[1]:
            self.value = max(self.value, float(np.abs(_matrix(piece.shape[0]) @ piece).max()))


class SoundFile:
    """A file's first audio stream as :class:`~echomimic_lib.io.video_writer.Mp4Writer`'s ``audio``: decoded again, a
    piece at a time, while it is muxed (``open_blocks()``: a new pass of ``(rate, PyAV frame)`` pairs, as
    ``functools.partial(audio_file.audio_blocks, path)`` gives). Mono and stereo give the very samples of
    ``to_stereo(read_audio(path)[0])``; more channels its downmix (each piece mixed alone: equal up to float
    rounding), scaled by ``mix_peak`` (:class:`MixPeak` of the whole track) as :func:`to_stereo` scales it whole."""

    def __init__(self, open_blocks, sample_rate: int, channels: int, samples: int, mix_peak: float = 0.0):
        self.open_blocks, self.sample_rate, self.channels = open_blocks, int(sample_rate), int(channels)
        self.mix_peak = float(mix_peak)
        self.shape = (min(self.channels, 2), int(samples))  # as the sound track's array: mono, or stereo

    def _stereo(self, piece: np.ndarray) -> np.ndarray:
        if piece.shape[0] <= 2:
            return piece
        mixed = _matrix(piece.shape[0]) @ np.ascontiguousarray(piece)
        return (mixed / self.mix_peak if self.mix_peak > 1.0 else mixed).astype(np.float32)

    def blocks(self, n: int, size: int = 1024):
        """``to_stereo(whole)[:, :n]`` in contiguous float32 blocks of ``size`` samples (the last one shorter), in order;
        one decoded piece and one block held at a time."""
        pending, have, done = [], 0, 0
        blocks = self.open_blocks()
        try:
            for _, frame in blocks:
                if done + have >= n:
                    break
                piece = frame.to_ndarray()
                pending.append(piece[:, : n - done - have])
                have += pending[-1].shape[1]
                while have >= size:
                    joined = pending[0] if len(pending) == 1 else np.concatenate(pending, axis=1)
                    yield np.ascontiguousarray(self._stereo(joined[:, :size]), dtype=np.float32)
                    pending, have, done = [joined[:, size:]], have - size, done + size
        finally:
            blocks.close()
        if have:
            joined = np.concatenate(pending, axis=1)
            yield np.ascontiguousarray(self._stereo(joined), dtype=np.float32)


__all__ = ["to_stereo", "MixPeak", "SoundFile"]
