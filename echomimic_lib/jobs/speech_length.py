"""How long a speech file is, from its header (before decoding: hours of audio are gigabytes of samples) and decoded.

A video that follows its audio has at most :data:`MAX_LENGTH` frames, the bound ``--length`` has.
The header's duration refuses a file before decoding only when it is 1.5 times too long (:data:`HEADER_MARGIN`: some
headers estimate); the decoded length is exact.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import EchoMimicError

MAX_LENGTH = 100_000  # frames of a video (``--length``'s bound; a video that follows its audio too)
HEADER_MARGIN = 1.5
MIN_BITS_PER_SECOND = 500  # below any codec FFmpeg decodes speech with (codec2 at 700 bit/s is the lowest)


def header_seconds(path) -> float | None:
    """The first audio stream's duration as the file's header states it (None when it does not, or when it states
    more than the file's bytes can hold at :data:`MIN_BITS_PER_SECOND`: a header that lies, such as an mp3's Xing
    frame count, is no reason to refuse; the decoded length is checked instead)."""
    from ..io.video_io import _open

    c = _open(path)
    try:
        s = c.streams.audio[0] if c.streams.audio else None
        if s is not None and s.duration and s.time_base:
            seconds = float(s.duration * s.time_base)
        else:
            seconds = c.duration / 1e6 if c.duration else None
    finally:
        c.close()
    if seconds and seconds > Path(path).stat().st_size * 8 / MIN_BITS_PER_SECOND:
        return None
    return seconds


def check_video_length(path: Path, seconds: float | None, fps: float, max_frames: int, margin: float = 1.0,
                       whole_clip: bool = False) -> None:
    """Refuse audio whose video (floor(seconds x fps) frames) would be longer than ``max_frames``; ``margin``: only when
    ``margin`` times longer (a header's duration can be an estimate: a VBR mp3 without a Xing header, from its bitrate).
    ``whole_clip``: EchoMimicV3's words (it reads the whole clip whatever ``--length`` is: loudness is measured over it)."""
    if not (seconds and int(seconds * fps) > max_frames * margin):
        return
    if whole_clip:
        raise EchoMimicError(f"--audio {path} lasts {seconds / 60:.0f} min, longer than an EchoMimicV3 video can be "
                             f"({max_frames} frames, {max_frames / fps / 60:.0f} min at {fps:g} fps); V3 measures loudness over "
                             "the whole clip, so --length does not shorten what is read: cut the speech you want to animate "
                             "out of it first (e.g. ffmpeg -i IN -t 60 part.wav).")
    raise EchoMimicError(f"--audio {path} lasts {seconds / 60:.0f} min: {int(seconds * fps)} frames at {fps:g} fps, more "
                             f"than the {max_frames} a video can have; cut it into parts of at most "
                             f"{int(max_frames / fps / 60)} min, or pass --length N to render its first N frames.")


__all__ = ["MAX_LENGTH", "HEADER_MARGIN", "header_seconds", "check_video_length"]
