"""Audio file decoding through PyAV (no ffmpeg binary): :func:`read_audio` (the whole first audio stream, or a window
of it, with the rest passed on in the same pass) and :func:`audio_blocks` (its decoded pieces in order, one at a time).
Any media file with sound: wav, mp3, flac, m4a, ... or a video's own audio track."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError
from .audio_length import PLANAR_LIMIT, OneFormat, PackedFrame, audio_channels
from .streams import open_media as _open


def _keep(out, done: int, first: int, stop: int | None, chunks: list, arr: np.ndarray | None = None) -> int:
    """Append the part of the resampled frame ``out`` (samples ``done ..``; ``arr``: its ``to_ndarray()`` if the
    caller has it) inside ``first .. stop``; the new count."""
    a, b = done, done + out.samples
    lo, hi = max(a, first), b if stop is None else min(b, stop)
    if hi > lo:
        arr = out.to_ndarray() if arr is None else arr
        chunks.append(arr if (lo, hi) == (a, b) else arr[:, lo - a : hi - a].copy())
    return b


def _pass_on(rest, sr: int, arr: np.ndarray, a: int, first: int, stop: int | None, chunks: list) -> None:
    """``read_audio``'s ``rest`` given the piece ``arr`` (samples ``a ..``): its part before the window, the window
    itself once it is whole (its pieces joined first, so they are let go before the rest of the pass), its part after."""
    b = a + arr.shape[1]
    if a < first:
        rest(sr, arr[:, : min(b, first) - a])
    if stop is None or b < stop:
        return
    if a < stop:  # the window is whole with this piece
        if len(chunks) > 1:
            chunks[:] = [np.concatenate(chunks, axis=1)]
        if chunks:
            rest(sr, chunks[0])
    if b > max(a, stop):
        rest(sr, arr[:, max(a, stop) - a :])


def audio_blocks(path: str | Path):
    """Yield ``(sample rate, frame)`` for each decoded piece of the first audio stream, in order (``frame``: a PyAV
    fltp frame at the stream's own rate; ``frame.to_ndarray()`` is its (C, n) float32): a pass over hours of audio
    holds one piece at a time. Errors as :func:`read_audio`'s."""
    import av

    container = _open(path)
    try:
        if not container.streams.audio:
            raise EchoMimicError(f"{path}: the file has no audio stream; give a recording with sound (wav, mp3, flac, m4a, or a video with audio).")
        stream = container.streams.audio[0]
        sr = int(stream.rate or stream.codec_context.sample_rate)
        channels = audio_channels(stream, path)  # none readable, or past MAX_CHANNELS: refused, naming the fix
        packed = channels >= PLANAR_LIMIT  # (read planar, PyAV crashes the process on these: decoded packed)
        resampler = av.AudioResampler(format="flt" if packed else "fltp", layout=stream.layout.name if stream.layout else None,
                                      rate=sr)
        same = OneFormat(path)  # a rate that changes partway: refused
        try:
            for frame in container.decode(stream):
                same(frame)
                for out in resampler.resample(frame):
                    yield sr, PackedFrame(out, channels) if packed else out
            for out in resampler.resample(None):
                yield sr, PackedFrame(out, channels) if packed else out
        except av.error.FFmpegError as exc:
            raise EchoMimicError(f"{path}: the audio cannot be decoded ({exc}); the file is damaged or truncated. "
                                 "Re-export it (e.g. as wav) and try again.") from exc
    finally:
        container.close()


def read_audio(path: str | Path, start: float = 0.0, duration: float | None = None,
               rest=None) -> tuple[np.ndarray, int]:
    """Decode the first audio stream to float32 (C, T) at its native sample rate.

    ``start`` / ``duration`` (seconds): only samples ``floor(start * sr) ..`` (``ceil(duration * sr)`` of them, fewer
    where the file ends first) are kept, and decoding stops once they are there: a 10 s window of a 2-hour file costs
    the decode of its prefix and the memory of the window only. They equal the same samples of a whole decode (the
    file is decoded from its start, no seek; the resampler only changes the sample format, never the rate).

    ``rest``: called as ``rest(sample rate, piece)`` with the whole track in order, in (C, n) float32 pieces: what lies
    before the window, the window itself as one piece once it is whole (the array returned: never write to it), then
    what lies after it; the file is then decoded to its end in this one pass, so a caller that keeps a window can
    measure the whole track without decoding it twice. A track that ends within the window never passes it on (the
    caller has all of it)."""
    if start < 0 or (duration is not None and duration <= 0):
        raise EchoMimicError(f"read_audio {path}: start {start} s and duration {duration} s: start must be 0 or more and "
                             "the duration more than 0.")
    chunks: list = []
    done, sr, first, stop = 0, None, 0, None  # samples the resampler has given so far
    blocks = audio_blocks(path)
    try:
        for sr, out in blocks:
            if not done:
                first = int(math.floor(start * sr + 1e-9))
                stop = None if duration is None else first + int(math.ceil(duration * sr - 1e-9))
            if rest is not None:  # one array for both: a kept piece is not made twice
                a, arr = done, out.to_ndarray()
                done = _keep(out, done, first, stop, chunks, arr)
                _pass_on(rest, sr, arr, a, first, stop, chunks)
                continue
            done = _keep(out, done, first, stop, chunks)
            if stop is not None and done >= stop:
                break  # the window is complete: the rest of the file is not decoded
    finally:
        blocks.close()
    if not chunks:
        if first and done:
            raise EchoMimicError(f"{path}: the audio is {done / sr:.2f} s long; nothing is left from {start:g} s on.")
        raise EchoMimicError(f"{path}: the audio stream is empty; give a recording with sound.")
    # fltp is float32 already: no third copy (peak about twice the audio)
    audio = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=1)
    del chunks
    return audio.astype(np.float32, copy=False), int(sr)
