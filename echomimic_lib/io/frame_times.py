"""A video's frame count and frame timestamps (PyAV): how many frames it has, and whether they come at the constant
rate its readers assume. Where a variable frame rate video's timestamps (a phone's recording, a screen recording that
paused) stray from that rate by more than :data:`VFR_DRIFT` (:func:`placed_drift`), its readers (the driving videos,
``dub``'s source, ``evaluate`` and its real videos, ``video_io.read_video``) place its frames by their timestamps and say
so: each tick of the rate takes the frame shown nearest it (:func:`on_the_clock`; the reader: :mod:`.retime`)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError
from .streams import open_media as _open, video_stream

log = logging.getLogger(__name__)

VFR_DRIFT = 0.1  # seconds: motion (or lips) that far from their sound are seen to be out of sync
MAX_TICKS_PER_FRAME = 100  # a pause repeats a frame; timestamps that repeat each frame more are damaged
_SAID: set = set()  # (path, rate) of the headers whose rate was replaced, already said in a warning


def count_frames(path: str | Path, upto: int, times: list | None = None) -> int:
    """How many video frames the file has, counting no further than ``upto`` (cheap: stops decoding there). With
    ``times`` (a list), each counted frame's timestamp in seconds is appended to it (None for a frame without one):
    the same pass gives :func:`time_drift` and :mod:`.retime` what they need, and the file is not read again for it."""
    container = _open(path)
    try:
        stream = video_stream(container, path)
        base = stream.time_base
        n = 0
        for frame in container.decode(stream):
            n += 1
            if times is not None:
                times.append(float(frame.pts * base) if frame.pts is not None and base else None)
            if n >= upto:
                break
        return n
    except EchoMimicError:
        raise
    except Exception as exc:
        raise EchoMimicError(f"{path}: the video cannot be decoded ({exc}); the file is damaged or not a video.") from exc
    finally:
        container.close()


def time_drift(times, fps: float) -> tuple[float, int]:
    """(seconds, frame): how far frame timestamps (seconds, in any order) stray from those of frames read one after
    another at ``fps``, at their worst, and at which frame; (0.0, 0) for fewer than two timestamps or no rate. A
    missing timestamp (None) is left out."""
    times = sorted(t for t in times if t is not None)
    if len(times) < 2 or not fps:
        return 0.0, 0
    worst, at = 0.0, 0
    for n, t in enumerate(times):
        drift = (t - times[0]) - n / fps
        if abs(drift) > abs(worst):
            worst, at = drift, n
    return abs(worst), at


def packet_times(path: str | Path) -> list[float]:
    """The video's frame timestamps in seconds from its first, in the order they are stored (its packets are read, not
    decoded); [] when the stream has no timestamps."""
    container = _open(path)
    try:
        stream = video_stream(container, path)
        base = stream.time_base
        pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size]
    finally:
        container.close()
    if not base:
        return []
    first = min(pts, default=0)
    return [float((t - first) * base) for t in pts]


def frame_time_drift(path: str | Path, fps: float) -> tuple[float, int]:
    """(seconds, frame): how far the video's frame timestamps stray from those of frames read one after another at
    ``fps`` (the readers' constant rate), at its worst, and at which frame; (0.0, 0) when the stream has no timestamps.
    A variable frame rate video (a phone's, a screen recording with pauses) strays; its packets are read, not decoded."""
    return time_drift(packet_times(path), fps)


def warn_variable_rate(path, fps: float, what: str, effect: str, times=None, placed: bool = False) -> float:
    """Log a warning when the frames of the video at ``path`` stray more than :data:`VFR_DRIFT` from a constant
    ``fps`` (``times``: their timestamps, already read by :func:`count_frames` or :func:`packet_times`; else the
    packets are read now): ``"{what} {path} has a variable frame rate: ...; {effect}. Convert ..."``, or with
    ``placed`` (its reader has put the frames on a constant clock by their timestamps, :mod:`.retime`) words that
    say so and ask for nothing. Returns the drift (seconds)."""
    try:
        drift, at = frame_time_drift(path, fps) if times is None else time_drift(times, fps)
    except Exception as exc:  # a damaged file: its reader says what is wrong with it
        log.debug("%s: the frame timestamps cannot be read (%s)", path, exc)
        return 0.0
    if drift > VFR_DRIFT and placed:
        log.warning("%s %s has a variable frame rate: its frame %d is shown %.2f s away from where a constant %g fps puts "
                    "it. Its frames were placed by their timestamps on a constant %g fps clock (one repeated where the "
                    "video pauses, some skipped where they come faster), so %s.", what, path, at, drift, fps, fps, effect)
    elif drift > VFR_DRIFT:
        log.warning("%s %s has a variable frame rate: its frame %d is shown %.2f s away from where a constant %g fps puts "
                    "it; %s by up to that much. Convert the video to a constant frame rate first (ffmpeg -i %s -vf fps=%d "
                    "constant.mp4, or any editor's export) and give that file.", what, path, at, drift, fps, effect,
                    path, max(1, round(fps)))
    return drift


def tick_count(times, fps: float) -> int:
    """How many ticks of ``fps`` the timestamps (seconds, in any order) span: one per ``1 / fps`` from the first to the
    last, both counted (a constant rate video: its frame count); a missing one (None) left out. 0 for none."""
    times = [t for t in times if t is not None]
    if not times:
        return 0
    return int(round((max(times) - min(times)) * float(fps))) + 1


def on_the_clock(timed, fps: float):
    """``timed``: ``(seconds, item)`` pairs in the order shown. Yields one item per tick ``n / fps`` (counted from the
    first item's time) up to the last item's time: the item whose time is nearest the tick (the later one on a tie).
    A time that is missing (None) or goes back (a stream whose clock restarts) is taken as ``1 / fps`` after the one
    before: nothing is lost, those items come one a tick. Items before the first with a time (a first frame without a
    timestamp) come one a tick up to it: the clock starts one tick before that time per such item, not at 0 (a stream
    that starts late would repeat them for its offset). Holds two items at a time."""
    step = 1.0 / float(fps)
    it = iter(timed)
    first = next(it, None)
    if first is None:
        return
    start, item = first  # (start None: not known until an item with a time comes)
    t, n = 0.0, 0
    for when, following in it:
        if start is None and when is not None:
            start = when - (t + step)  # (that item one tick after the ones without a time)
        when = t + step if when is None or when - start < t else when - start
        middle = (t + when) / 2
        while n * step < middle:
            yield item
            n += 1
        t, item = when, following
    while n < int(round(t * float(fps))) + 1:
        yield item
        n += 1


def nearest_frames(times, fps: float) -> np.ndarray:
    """For each tick ``n / fps`` from the first timestamp to the last, the number of the frame (timestamps in seconds,
    in the order shown) that :func:`on_the_clock` puts there: the one shown nearest that time (int64)."""
    return np.fromiter(on_the_clock(zip(times, range(len(times))), fps), dtype=np.int64)


def placed_drift(path, fps: float, what: str, effect: str, times) -> float:
    """Whether a reader places the video's frames by their timestamps (``times``: seconds, None for a frame without
    one, as :func:`packet_times` or :func:`count_frames` give them): the drift (seconds) where they stray more than
    :data:`VFR_DRIFT` from a constant ``fps`` (said in a warning, :func:`warn_variable_rate` with ``placed``), else 0.0:
    a constant rate, or timestamps that would repeat each frame more than :data:`MAX_TICKS_PER_FRAME` times (a few
    frames hours apart: damaged, not pauses; said in a warning, the frames are read as stored)."""
    known = [t for t in times if t is not None]  # (a frame the count found without a timestamp: None)
    ticks = tick_count(known, fps)
    if ticks > MAX_TICKS_PER_FRAME * len(known):  # (a few frames an hour apart: each would be repeated for an hour)
        log.warning("%s %s: the timestamps of its %d frames span %.0f s (%d frames at %g fps, over %d for each frame "
                    "it holds): they are damaged, not pauses, so its frames are read one after another at %g fps.",
                    what, path, len(known), max(known) - min(known), ticks, fps, MAX_TICKS_PER_FRAME, fps)
        return 0.0
    drift = warn_variable_rate(path, fps, what, effect, times, placed=True)  # (said only past VFR_DRIFT)
    return drift if drift > VFR_DRIFT else 0.0


def stream_rate(container, stream, path) -> float:
    """The frame rate the readers take for ``stream`` (of the open ``container``; it may be read through here): its
    header's average rate, else the rate FFmpeg guesses. A header that names no rate, or one no video has (a browser's
    WebM recording says 1000 fps, its time base, and holds 30 frames a second), is replaced by the guessed rate where
    that is a video's, else by the rate the packets' timestamps give (they are read, not decoded), else 25."""
    from ..modes import MAX_SOURCE_FPS

    header = stream.average_rate or stream.guessed_rate
    if header and float(header) <= MAX_SOURCE_FPS:
        return float(header)
    guessed = stream.guessed_rate
    if guessed and float(guessed) <= MAX_SOURCE_FPS:
        rate, how = float(guessed), "FFmpeg's estimate from its timestamps"
    else:
        rate, how = _packet_rate(container, stream), "its frame timestamps"
        if not rate or rate > MAX_SOURCE_FPS:
            rate, how = 25.0, "the usual rate (its timestamps give none)"
    said = f"says {float(header):g} fps" if header else "names no frame rate"
    if (str(path), rate) in _SAID:  # (a file's header is read by every reader of it: said once)
        return rate
    _SAID.add((str(path), rate))
    log.warning("%s: the video's header %s; it is read at %g fps, %s.", path, said, rate, how)
    return rate


def _packet_rate(container, stream) -> float | None:
    """Frames a second by the packets' timestamps: (n - 1) / (last - first), or None."""
    try:
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
    except Exception as exc:
        log.debug("%s: the packets cannot be read (%s)", container.name, exc)
        return None
    if len(pts) < 2 or not stream.time_base or pts[-1] == pts[0]:
        return None
    return float((len(pts) - 1) / ((pts[-1] - pts[0]) * stream.time_base))
