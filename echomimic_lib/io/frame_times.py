"""A video's frame count and frame timestamps (PyAV): how many frames it has, and whether they come at the constant
rate its readers assume. Where a variable frame rate video's timestamps (a phone's recording, a screen recording that
paused) stray from that rate by more than :data:`VFR_DRIFT`, its readers (the driving videos, ``dub``'s source,
``evaluate`` and its real videos) place its frames by their timestamps (:mod:`.retime`) and say so."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import EchoMimicError
from .streams import open_media as _open, video_stream

log = logging.getLogger(__name__)

VFR_DRIFT = 0.1  # seconds: motion (or lips) that far from their sound are seen to be out of sync
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
