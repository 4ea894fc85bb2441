"""Video and audio file I/O through PyAV (no ffmpeg binary, no temp files in the user's folders)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError


class NoVideoStream(EchoMimicError):
    """The file is media without a video stream (an audio file, say)."""


@dataclass
class VideoClip:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    fps: float
    audio: np.ndarray | None = None  # (C, T) float32 in [-1, 1]
    sample_rate: int | None = None


def _open(path: str | Path):
    import av

    path = Path(path)
    if not path.is_file():
        raise EchoMimicError(f"{path}: file not found.")
    try:
        return av.open(str(path))
    except Exception as exc:
        raise EchoMimicError(f"{path}: cannot be opened as a media file ({getattr(exc, 'strerror', None) or exc}); it is damaged or "
                             "not audio/video: use a wav, mp3, flac, m4a or mp4 file.") from exc


def read_video(path: str | Path, max_frames: int | None = None, with_audio: bool = True) -> VideoClip:
    """Decode all video frames (RGB uint8) and, if present, the audio track of a media file (the whole video in
    memory: to go through a long video frame by frame, iterate :class:`VideoFrames`)."""
    source = VideoFrames(path, max_frames)
    frames = list(source)
    audio, sr = (read_audio(path) if with_audio else (None, None)) if _has_audio(path) else (None, None)
    return VideoClip(np.stack(frames), source.fps, audio, sr)


class VideoFrames:
    """The video frames of a media file, decoded one at a time while they are iterated (RGB uint8 (H, W, 3)), so
    memory holds about one frame whatever the video's length; at most ``max_frames`` (None: all).

    Opening reads only the stream's header: :attr:`fps` (the rate :func:`read_video` reports), :attr:`size`
    (width, height) and :attr:`estimated_frames`, the container's frame count (else duration x fps; 0 when it
    says neither), capped at ``max_frames``: a figure for a progress bar, not a promise. Each iteration decodes
    from the start; the file is closed when the iteration ends or its generator is closed. A file that is no
    video, has no frames or cannot be decoded raises :class:`EchoMimicError` naming it."""

    def __init__(self, path: str | Path, max_frames: int | None = None):
        self.path, self.max_frames = path, max_frames
        container = _open(path)
        try:
            if not container.streams.video:
                raise NoVideoStream(f"{path}: the file has no video stream.")
            vs = container.streams.video[0]
            self.fps = float(vs.average_rate or vs.guessed_rate or 25)
            self.size = (vs.codec_context.width, vs.codec_context.height)
            estimate = int(vs.frames or 0)
            if not estimate and vs.duration and vs.time_base:
                estimate = int(round(float(vs.duration * vs.time_base) * self.fps))
            elif not estimate and container.duration:
                estimate = int(round(container.duration / 1_000_000 * self.fps))  # av.time_base: microseconds
        finally:
            container.close()
        self.estimated_frames = estimate if max_frames is None else min(estimate, max_frames)

    def __iter__(self):
        import av

        container = _open(self.path)
        n = 0
        try:
            for frame in container.decode(container.streams.video[0]):
                yield frame.to_ndarray(format="rgb24")
                n += 1
                if self.max_frames is not None and n >= self.max_frames:
                    break
        except av.error.FFmpegError as exc:
            raise EchoMimicError(f"{self.path}: the video cannot be decoded after {n} frames ({exc}); the file is damaged "
                                 "or truncated. Re-export it and try again.") from exc
        finally:
            container.close()
        if not n:
            raise EchoMimicError(f"{self.path}: the video has no frames.")


def counted(frames, total: int, progress=None):
    """``frames`` passed on one at a time, with ``progress(done, total)`` after each: the next frame is asked for once
    the consumer is done with this one, so the last call knows the real count (``total``, an estimate, is only shown
    while it is above the frames done)."""
    it = iter(frames)
    done, frame = 0, next(it, _END)
    while frame is not _END:
        yield frame
        done, frame = done + 1, None  # the frame let go before the next one is decoded
        frame = next(it, _END)
        if progress is not None:
            progress(done, done if frame is _END else max(total, done + 1))


_END = object()


def count_frames(path: str | Path, upto: int) -> int:
    """How many video frames the file has, counting no further than ``upto`` (cheap: stops decoding there)."""
    container = _open(path)
    try:
        if not container.streams.video:
            raise NoVideoStream(f"{path}: the file has no video stream.")
        n = 0
        for _ in container.decode(container.streams.video[0]):
            n += 1
            if n >= upto:
                break
        return n
    except EchoMimicError:
        raise
    except Exception as exc:
        raise EchoMimicError(f"{path}: the video cannot be decoded ({exc}); the file is damaged or not a video.") from exc
    finally:
        container.close()


def _has_audio(path) -> bool:
    container = _open(path)
    try:
        return bool(container.streams.audio)
    finally:
        container.close()


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream to float32 (C, T) at its native sample rate."""
    import av

    container = _open(path)
    try:
        if not container.streams.audio:
            raise EchoMimicError(f"{path}: the file has no audio stream; give a recording with sound (wav, mp3, flac, m4a, or a video with audio).")
        stream = container.streams.audio[0]
        sr = stream.rate or stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name if stream.layout else None, rate=sr)
        chunks = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
        except av.error.FFmpegError as exc:
            raise EchoMimicError(f"{path}: the audio cannot be decoded ({exc}); the file is damaged or truncated. "
                                 "Re-export it (e.g. as wav) and try again.") from exc
    finally:
        container.close()
    if not chunks:
        raise EchoMimicError(f"{path}: the audio stream is empty; give a recording with sound.")
    return np.concatenate(chunks, axis=1).astype(np.float32), int(sr)


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    crf: int = 18,
) -> Path:
    """Write RGB frames (F, H, W, 3; uint8 or float in [0, 1]) as H.264 mp4, with AAC audio when given.

    The file is written under a unique temporary name next to its destination and renamed at the end,
    so a failure never leaves a partial file behind; audio (C, T) float is trimmed to the video's
    duration. To stream frames as they are made, use :class:`echomimic_lib.io.video_writer.Mp4Writer`.
    """
    from .video_writer import Mp4Writer

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise EchoMimicError(f"write_video: frames must be (F, H, W, 3), got {frames.shape}.")
    with Mp4Writer(path, fps, audio, sample_rate, crf) as writer:
        writer.write(frames)
        return writer.commit()


def probe(path: str | Path) -> dict:
    """Frame count, fps and audio duration of a media file (used by tests and the CLI summary)."""
    container = _open(path)
    try:
        info = {"frames": 0, "fps": None, "audio_seconds": None, "width": None, "height": None}
        if container.streams.video:
            vs = container.streams.video[0]
            info["fps"] = float(vs.average_rate) if vs.average_rate else None
            info["width"], info["height"] = vs.codec_context.width, vs.codec_context.height
            info["frames"] = sum(1 for _ in container.decode(vs))
    finally:
        container.close()
    if _has_audio(path):
        wav, sr = read_audio(path)
        info["audio_seconds"] = wav.shape[1] / sr
    return info
