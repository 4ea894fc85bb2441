"""Video and audio file I/O through PyAV (no ffmpeg binary, no temp files in the user's folders); the audio decoding
itself is :mod:`.audio_file`'s."""
from __future__ import annotations

import logging
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import EchoMimicError
from .orientation import frame_turn, upright_rgb
from . import audio_file
from .audio_length import audio_samples
from .frame_times import count_frames, frame_time_drift, on_the_clock, placed_drift, stream_rate  # noqa: F401  (the names callers import from here)
from .streams import NoVideoStream, open_media as _open, video_stream  # noqa: F401  (the names callers import from here)

log = logging.getLogger(__name__)


@dataclass
class VideoClip:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    fps: float
    audio: np.ndarray | None = None  # (C, T) float32 in [-1, 1]
    sample_rate: int | None = None


def read_video(path: str | Path, max_frames: int | None = None, with_audio: bool = True) -> VideoClip:
    """Decode all video frames (RGB uint8, upright as a player shows them) and, if present, the audio track of a
    media file (the whole video in memory: to go through a long video frame by frame, iterate :class:`VideoFrames`).
    A variable frame rate video's frames (the first ``max_frames`` decoded) are placed by their timestamps on a constant
    clock of its :attr:`~VideoFrames.fps`, as the library's other readers place them (:func:`.frame_times.placed_drift`);
    a constant-rate video's are the frames as stored, one after another."""
    source = VideoFrames(path, max_frames)
    timed = list(source.timed(max_frames))  # (one decode: the timestamps come with the frames)
    frames = [f for _, f in timed]
    if placed_drift(path, source.fps, "The video", "its frames keep its own timing", [t for t, _ in timed]):
        frames = list(islice(on_the_clock(timed, source.fps), max_frames))
    audio, sr = audio_file.read_audio(path) if with_audio and source.has_audio else (None, None)  # known from the header's open
    return VideoClip(np.stack(frames), source.fps, audio, sr)


def displayed_size(container, stream, name: str = "") -> tuple[int, int]:
    """(width, height) of ``stream``'s frames as displayed: its header's size, turned by the first frame's display
    matrix (that frame is decoded; one that cannot be: the header's size, and decoding says later what is wrong)."""
    stored = (stream.codec_context.width, stream.codec_context.height)
    try:
        first = next(iter(container.decode(stream)), None)
    except Exception as exc:
        log.debug("%s: the first frame cannot be decoded (%s)", name, exc)
        first = None
    turn = frame_turn(first, name) if first is not None else None
    return turn.size(*stored) if turn is not None else stored


class VideoFrames:
    """The video frames of a media file, decoded one at a time while they are iterated (RGB uint8 (H, W, 3)), so
    memory holds about one frame whatever the video's length; at most ``max_frames`` (None: all). Frames are upright
    as a player shows them: a phone's portrait clip, stored sideways with a display matrix, is turned
    (:mod:`echomimic_lib.io.orientation`); cover art (an audio file's picture) is no video stream.

    Opening reads only the stream's header: :attr:`fps` (the rate :func:`read_video` reports), :attr:`has_audio` and
    :attr:`estimated_frames`, the container's frame count (else duration x fps; 0 when it says neither), capped at
    ``max_frames``: a figure for a progress bar, not a promise. :attr:`size` (width, height as displayed) decodes
    the first frame once, to learn the display matrix. Each iteration decodes
    from the start; the file is closed when the iteration ends or its generator is closed. A file that is no
    video, has no frames or cannot be decoded raises :class:`EchoMimicError` naming it. :meth:`frames_from` reads
    from a given frame on, seeking to a keyframe that an earlier read of this object recorded in :attr:`index`."""

    def __init__(self, path: str | Path, max_frames: int | None = None):
        self.path, self.max_frames = path, max_frames
        container = _open(path)
        try:
            vs = video_stream(container, path)
            self.has_audio = bool(container.streams.audio)  # read here: no caller opens the file again to ask
            self.fps = stream_rate(container, vs, path)  # the header's, unless it names none or none a video has
            self._stored, self._size = (vs.codec_context.width, vs.codec_context.height), None
            estimate = int(vs.frames or 0)
            if not estimate and vs.duration and vs.time_base:
                estimate = int(round(float(vs.duration * vs.time_base) * self.fps))
            elif not estimate and container.duration:
                estimate = int(round(container.duration / 1_000_000 * self.fps))  # av.time_base: microseconds
        finally:
            container.close()
        self.estimated_frames = estimate if max_frames is None else min(estimate, max_frames)
        self.index = FrameIndex()

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames as displayed (a sideways-stored portrait clip: its portrait size)."""
        if self._size is None:
            container = _open(self.path)
            try:
                self._size = displayed_size(container, video_stream(container, self.path), str(self.path))
            finally:
                container.close()
        return self._size

    def __iter__(self):
        return self._frames(self.max_frames)

    def timed(self, limit: int | None = None):
        """``(seconds, frame)`` pairs as an iteration would give the frames (all of them, or the first ``limit``):
        each with its timestamp in seconds (None for a frame without one). :mod:`echomimic_lib.io.retime` places a
        variable frame rate video's frames by them."""
        return self._frames(limit, timed=True)

    def _frames(self, limit: int | None, timed: bool = False):
        import av

        container = _open(self.path)
        n = 0
        try:
            stream = video_stream(container, self.path)
            base = stream.time_base
            for frame in container.decode(stream):
                image = upright_rgb(frame, str(self.path))
                if timed:
                    image = (float(frame.pts * base) if frame.pts is not None and base else None, image)
                yield image
                n += 1
                if limit is not None and n >= limit:
                    break
        except av.error.FFmpegError as exc:
            raise EchoMimicError(f"{self.path}: the video cannot be decoded after {n} frames ({exc}); the file is damaged "
                                 "or truncated. Re-export it and try again.") from exc
        finally:
            container.close()
        if not n:
            raise EchoMimicError(f"{self.path}: the video has no frames.")

    def frames_from(self, start: int) -> Iterator[np.ndarray]:
        """Frames ``start``, ``start + 1``, ... (numbered as an iteration from the start numbers them; up to
        ``max_frames``), the same arrays, bit for bit. Where an earlier read of this object has passed ``start``, the
        file is sought to the nearest recorded keyframe at or before it and decoded from there, each frame matched to
        its number by its timestamp; where a seek fails or lands elsewhere (no timestamps, no index, a codec that
        cannot seek), or a timestamp after it differs from the one recorded, it decodes from the start instead."""
        import av

        try:
            for frame in self._decoded_from(int(start)):
                yield upright_rgb(frame, str(self.path))
        except av.error.FFmpegError as exc:
            raise EchoMimicError(f"{self.path}: the video cannot be decoded ({exc}); the file is damaged or "
                                 "truncated. Re-export it and try again.") from exc

    def _decoded_from(self, start: int):
        """The decoded frames ``start``, ... (PyAV frames): after a seek while the timestamps match, else from the start."""
        import av

        index, n, end = self.index, 0, self.max_frames
        container = _open(self.path)
        try:
            landed = _seek_near(container, index, start) if 0 < start and index.seekable else None
            if landed is False:  # sought, but not near frame start: from the start of a file opened anew
                container.close()
                container = _open(self.path)
            elif landed is not None:
                frames, n, first = landed
                try:
                    for frame in chain([first], frames):
                        if end is not None and n >= end:
                            return
                        if frame is not first:
                            index.decoded += 1
                        if n < len(index.pts) and frame.pts != index.pts[n]:
                            log.debug("%s: frame %d has timestamp %s after a seek, %s from the start; decoding from "
                                      "the start", self.path, n, frame.pts, index.pts[n])
                            break
                        index.add(n, frame)
                        if n >= start:
                            yield frame
                        n += 1
                    else:
                        if n >= len(index.pts):
                            return
                        log.debug("%s: the video ended at frame %d after a seek; decoding from the start", self.path, n)
                except av.error.FFmpegError as exc:
                    log.debug("%s: decoding after a seek failed at frame %d (%s); decoding from the start", self.path,
                              n, exc)
                container.close()
                start, container = max(start, n), _open(self.path)
            n = 0
            for frame in container.decode(video_stream(container, self.path)):
                if end is not None and n >= end:
                    return
                index.decoded += 1
                index.add(n, frame)
                if n >= start:
                    yield frame
                n += 1
        finally:
            container.close()


@dataclass
class FrameIndex:
    """What reading a video in order has shown (:attr:`VideoFrames.index`): frame n's timestamp (``pts[n]``, in the
    stream's time base) and which frames are keyframes, so that a later read can seek near a frame and match the
    frames it decodes by their timestamps. ``seekable`` is False for a stream whose timestamps are missing or not
    increasing (frames cannot be matched); ``decoded`` counts every frame the decoder made, all reads together."""
    pts: array = field(default_factory=lambda: array("q"))
    keys: list = field(default_factory=list)
    seekable: bool = True
    decoded: int = 0

    def add(self, n: int, frame) -> None:
        if n != len(self.pts) or not self.seekable:
            return
        if frame.pts is None or (n and frame.pts <= self.pts[-1]):
            self.seekable = False
            return
        self.pts.append(frame.pts)
        if frame.key_frame:
            self.keys.append(n)

    def key_at(self, pts) -> int | None:
        """The number of the recorded keyframe with timestamp ``pts``, else None."""
        n = bisect_left(self.pts, pts) if pts is not None else len(self.pts)
        if n < len(self.pts) and self.pts[n] == pts:
            k = bisect_left(self.keys, n)
            return n if k < len(self.keys) and self.keys[k] == n else None
        return None


def _seek_near(container, index: FrameIndex, start: int):
    """Seek ``container`` to the recorded keyframe nearest before frame ``start`` (then one or three keyframes earlier
    where it lands after it): (the decoder's frames, n, frame n) with n <= ``start`` a recorded keyframe, the first
    one decoded; None where there is no keyframe but the first to seek to, False where no seek gets there."""
    stream = video_stream(container)
    last = min(start, len(index.pts) - 1)
    pos = bisect_right(index.keys, last) - 1
    if pos < 0 or index.keys[pos] == 0:
        return None
    for p in (pos, pos - 1, pos - 3):
        if p < 0 or index.keys[p] == 0:
            break
        try:
            container.seek(int(index.pts[index.keys[p]]), stream=stream, backward=True, any_frame=False)
            frames = container.decode(stream)
            for frame in frames:
                index.decoded += 1
                if frame.pts is None or frame.pts > index.pts[last]:
                    break
                n = index.key_at(frame.pts)
                if n is not None:
                    return frames, n, frame
        except Exception as exc:  # a container or codec that cannot seek
            log.debug("%s: seeking to frame %d failed (%s); decoding from the start", container.name, start, exc)
            return False
    log.debug("%s: no seek landed at a keyframe at or before frame %d; decoding from the start", container.name, start)
    return False


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
    """Frame count, fps, size (as displayed: see :class:`VideoFrames`) and audio duration of a media file (used by
    tests and the CLI summary); cover art is no video (0 frames). The audio is measured without being held
    (:func:`audio_samples`)."""
    container = _open(path)
    try:
        info = {"frames": 0, "fps": None, "audio_seconds": None, "width": None, "height": None}
        has_audio = bool(container.streams.audio)
        vs = video_stream(container, path, required=False)
        if vs is not None:
            info["fps"] = float(vs.average_rate) if vs.average_rate else None
            size, turn = (vs.codec_context.width, vs.codec_context.height), None
            for frame in container.decode(vs):
                if not info["frames"]:
                    turn = frame_turn(frame, str(path))
                info["frames"] += 1
            info["width"], info["height"] = turn.size(*size) if turn is not None else size
    finally:
        container.close()
    if has_audio:
        samples, sr = audio_samples(path)
        info["audio_seconds"] = samples / sr
    return info
