"""A variable frame rate video's frames put on a constant clock by their timestamps.

A phone's recording or a screen recording that paused shows its frames at uneven times; read frame after frame at the
header's rate, its motion drifts from the sound. Where the timestamps stray more than
:data:`~echomimic_lib.io.frame_times.VFR_DRIFT` from that rate (:func:`on_clock`), each tick ``n / fps`` of the
reader's rate takes the frame whose timestamp is nearest it (:func:`on_the_clock`): a frame is repeated over a pause
and skipped where frames come faster, and frame ``n`` of the result is the picture shown at ``n / fps`` s. The
timestamps are the ones the single decode gives (the packets, read without decoding, decide whether to retime and how
many ticks there are). A constant rate video is read as before, frame after frame. The clock and the decision are
:mod:`.frame_times`' (:func:`on_the_clock`, :func:`placed_drift`: ``video_io.read_video`` uses them too); this
module is the streaming reader."""
from __future__ import annotations

import copy
import logging
import sys

import numpy as np

from .frame_times import (MAX_TICKS_PER_FRAME, VFR_DRIFT, count_frames, nearest_frames, on_the_clock,  # noqa: F401
                          packet_times, placed_drift, tick_count)  # (the clock's names, imported from here too)
from .video_io import VideoFrames

log = logging.getLogger(__name__)


class ClockedFrames(VideoFrames):
    """A :class:`VideoFrames` whose iteration gives one frame per tick of its :attr:`fps` (the frame whose timestamp is
    nearest the tick, :func:`on_the_clock`), at most ``max_frames`` of them; :attr:`estimated_frames` is the number
    of ticks the packets' timestamps span. Made by :func:`on_clock` from an opened :class:`VideoFrames` (its header is
    not read again); :attr:`drift` is the drift (seconds) that made it. ``decoded``: every decoded frame's timestamp
    (None for none), in the order shown, where a pass has read them (:func:`count_frames`): the tick -> frame map is
    then known (:meth:`frame_numbers`) and no pass counts again."""

    def __init__(self, video: VideoFrames, times, drift: float = 0.0, decoded=None):
        self.__dict__.update(vars(video))
        self.drift = float(drift)
        self._numbers = None if decoded is None else nearest_frames(decoded, self.fps)
        self._ticks = tick_count(times, self.fps) if decoded is None else len(self._numbers)  # (all of them)
        self.estimated_frames = self._ticks if self.max_frames is None else min(self._ticks, self.max_frames)

    def __iter__(self):
        decoded = self.timed()
        n, last = 0, None
        try:
            for frame in on_the_clock(decoded, self.fps):
                if self.max_frames is not None and n >= self.max_frames:
                    return
                yield frame.copy() if frame is last else frame  # (a repeated frame: its own array, as any other)
                n, last = n + 1, frame
        finally:
            decoded.close()

    def frame_numbers(self) -> np.ndarray:
        """Tick n's frame (its number in a plain decode, int64), for every tick (``max_frames`` aside); the first call
        decodes the frames for their timestamps where they were not handed over."""
        if self._numbers is None:
            times: list = []
            count_frames(self.path, sys.maxsize, times)
            self._numbers = nearest_frames(times, self.fps)
            self._ticks = len(self._numbers)
        return self._numbers

    def upto(self, max_frames: int | None) -> "ClockedFrames":
        """The same frames, at most ``max_frames`` of them (the tick map and the keyframe index shared, no file read)."""
        clone = copy.copy(self)
        clone.max_frames = max_frames
        clone.estimated_frames = self._ticks if max_frames is None else min(self._ticks, max_frames)
        return clone

    def frames_from(self, start: int):
        """The ticks ``start``, ``start + 1``, ...: the frames a plain decode gives from tick ``start``'s frame on
        (:meth:`VideoFrames.frames_from`: sought near it where an earlier read of this object has passed it), each
        repeated for its ticks; bit for bit what an iteration gives."""
        numbers = self.frame_numbers()
        end = len(numbers) if self.max_frames is None else min(len(numbers), self.max_frames)
        if not 0 <= start < end:
            return
        plain = VideoFrames.__new__(VideoFrames)  # the frames themselves, up to the last one a tick shows
        plain.__dict__.update(vars(self), max_frames=int(numbers[end - 1]) + 1)
        n, last, decoded = int(start), None, plain.frames_from(int(numbers[start]))
        try:
            for i, frame in enumerate(decoded, int(numbers[start])):
                while n < end and numbers[n] == i:
                    yield frame.copy() if frame is last else frame
                    n, last = n + 1, frame
                if n >= end:
                    return
        finally:
            decoded.close()

    def count(self) -> int:
        """The number of frames an iteration gives (the first call without the timestamps handed over decodes the
        frames for them only)."""
        ticks = len(self.frame_numbers())
        return ticks if self.max_frames is None else min(ticks, self.max_frames)


def on_clock(video: VideoFrames, what: str, effect: str, decoded=None) -> VideoFrames:
    """``video`` as its readers take it: itself where its frames come at a constant rate (within
    :data:`VFR_DRIFT` of :attr:`~VideoFrames.fps`: read frame after frame, as always), else a :class:`ClockedFrames`
    whose frames are placed by their timestamps, with a warning ``"{what} {path} has a variable frame rate: ...
    Its frames were placed by their timestamps ..., so {effect}."`` The packets are read (not decoded) once for it,
    unless ``decoded`` gives every decoded frame's timestamp (a pass that counted them, :func:`count_frames`)."""
    try:
        times = packet_times(video.path) if decoded is None else decoded
    except Exception as exc:  # a damaged file: its reader says what is wrong with it
        log.debug("%s: the frame timestamps cannot be read (%s)", video.path, exc)
        return video
    drift = placed_drift(video.path, video.fps, what, effect, times)
    return ClockedFrames(video, times, drift, decoded) if drift else video
