"""The length of a media file's audio without holding the audio (``probe``): a PCM wav's from its header, when the
file holds every sample the header declares and FFmpeg reads the same count; any other file's by decoding it frame by
frame, each frame let go once counted. The count is ``read_audio(path)[0].shape[1]`` (tests/test_io_memory_4.py)."""
from __future__ import annotations

from pathlib import Path

from ..errors import EchoMimicError
from .streams import open_media


def _riff_samples(path) -> int | None:
    """Whole sample frames in a RIFF wav's ``data`` chunk, when the file holds all of it (else None)."""
    import struct

    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != b"RIFF" or (f.read(4), f.read(4))[1] != b"WAVE":
            return None
        align = None
        for _ in range(64):  # a wav has a handful of chunks before its data
            head = f.read(8)
            if len(head) < 8:
                return None
            cid, n = head[:4], struct.unpack("<I", head[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(n + (n & 1))
                align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif cid == b"data":
                return n // align if align and n != 0xFFFFFFFF and f.tell() + n <= size else None
            else:
                f.seek(n + (n & 1), 1)
    return None


def _header_samples(container, stream, path) -> int | None:
    """A PCM wav's sample count from its header, when the file holds every sample it declares and FFmpeg reads the
    same count (a truncated file, or any other codec or container: None, the samples are counted by decoding)."""
    cc = stream.codec_context
    if container.format.name != "wav" or not cc.name.startswith("pcm_") or stream.start_time not in (None, 0):
        return None
    if not stream.duration or stream.time_base * (stream.rate or 0) != 1:
        return None
    samples = _riff_samples(path)
    return samples if samples == stream.duration else None


class OneFormat:
    """Refuses an audio stream whose sample rate or channel count changes partway (two recordings joined as one stream,
    an ADTS/mp3 capture): its samples are not one recording at one rate (PyAV's resampler passes the later frames
    through unconverted), so its length and sound would be wrong. Call it with every decoded frame."""

    def __init__(self, path):
        self.path, self.first, self.seconds = path, None, 0.0

    def __call__(self, frame) -> None:
        now = (frame.sample_rate, frame.layout.nb_channels if frame.layout else 0)
        if self.first is None:
            self.first = now
        elif now != self.first:
            said = [f"{r} Hz {'mono' if c == 1 else f'{c} channels'}" for r, c in (self.first, now)]
            raise EchoMimicError(f"{self.path}: the audio changes from {said[0]} to {said[1]} after {self.seconds:.2f} s, "
                                 "so it cannot be read as one recording. Re-export it at one rate (e.g. `ffmpeg -i IN -ar "
                                 f"{self.first[0]} -ac {max(1, self.first[1])} OUT.wav`) and try again.")
        self.seconds += frame.samples / (frame.sample_rate or 1)


def audio_samples(path: str | Path) -> tuple[int, int]:
    """(sample count, sample rate) of the first audio stream, as ``read_audio(path)[0].shape[1]`` says, without
    holding the audio: a PCM wav's from its header, else decoded frame by frame, each let go once counted."""
    import av

    container = open_media(path)
    try:
        if not container.streams.audio:
            raise EchoMimicError(f"{path}: the file has no audio stream; give a recording with sound (wav, mp3, flac, m4a, or a video with audio).")
        stream = container.streams.audio[0]
        sr = stream.rate or stream.codec_context.sample_rate
        done = _header_samples(container, stream, path)
        if done is None:
            done, same = 0, OneFormat(path)
            try:
                for frame in container.decode(stream):
                    same(frame)
                    done += frame.samples
            except av.error.FFmpegError as exc:
                raise EchoMimicError(f"{path}: the audio cannot be decoded ({exc}); the file is damaged or truncated. "
                                     "Re-export it (e.g. as wav) and try again.") from exc
    finally:
        container.close()
    if not done:
        raise EchoMimicError(f"{path}: the audio stream is empty; give a recording with sound.")
    return done, int(sr)


MAX_CHANNELS = 64  # past any surround or ambisonic layout; a speech recording has one or two
PLANAR_LIMIT = 8  # FFmpeg's AV_NUM_DATA_POINTERS: PyAV's to_ndarray of a planar frame of this many channels or more
                  # reads past its plane pointers and crashes the process (PyAV 18), so those are decoded packed


def audio_channels(stream, path) -> int:
    """The channel count of the audio ``stream`` of ``path``; an :class:`EchoMimicError` naming the problem and the
    fix when it has none (FFmpeg gives no layout for more than it can read) or more than :data:`MAX_CHANNELS`."""
    layout = stream.layout
    n = layout.nb_channels if layout else stream.codec_context.channels
    if not n or n > MAX_CHANNELS:
        said = f"{n} channels" if n else "no readable channel layout (more channels than FFmpeg reads?)"
        raise EchoMimicError(f"{path}: the audio stream has {said}; at most {MAX_CHANNELS} are read. Mix it down to "
                             f"stereo first (ffmpeg -i {path} -ac 2 speech.wav) and give that file.")
    return n


class PackedFrame:
    """A resampled packed (``flt``) PyAV audio frame of ``channels`` channels, read as a planar one: ``samples`` and
    ``to_ndarray()`` -> (C, n) float32, the same values a ``fltp`` frame gives."""

    def __init__(self, frame, channels: int):
        self.frame, self.channels, self.samples = frame, channels, frame.samples

    def to_ndarray(self):
        import numpy as np

        return np.ascontiguousarray(self.frame.to_ndarray().reshape(self.samples, self.channels).T)
