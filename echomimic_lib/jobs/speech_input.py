"""The speech of a job (``--audio``): probed cheaply first (:func:`probe_speech`), then read and checked
(:func:`read_speech`: decodable, finite, long enough, audible, not longer than a video can be), and the video's
frame count that follows from it (:func:`frame_count`). Shared by animate, dub, poses, batch and V3's plan.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import EchoMimicError

log = logging.getLogger(__name__)


def probe_speech(path, flag: str = "--audio") -> None:
    """The cheap part of :func:`read_speech` (PyAV only: no torch, no model): the file exists and opens as media.
    Commands call it first, so a file that is not audio at all is refused before the heavy libraries load (the
    rest -- a sound track, its length, silence -- is checked with the other inputs, in their usual order)."""
    from ..io.video_io import _open

    p = Path(path)
    if not p.is_file():
        raise EchoMimicError(f"{flag} {p}: {'is a folder' if p.is_dir() else 'file not found'}; give a speech recording "
                             "(wav, mp3, flac, m4a, or a video with sound).")
    _open(p).close()


def read_speech(path, fps: float | None = None, length=None):
    """(samples (C, T) float32, sample rate, RawAudio): decodable, finite, long enough, audible; with ``fps`` and no
    ``length``, short enough for a video of MAX_LENGTH frames (said from the file's header before decoding it)."""
    from ..audio import check_audible, read_raw_audio
    from ..audio.features import MIN_SAMPLES_16K
    from ..io.video_io import read_audio
    from .speech_length import HEADER_MARGIN, MAX_LENGTH, check_video_length, header_seconds

    p = Path(path)
    if not p.is_file():
        raise EchoMimicError(f"--audio {p}: {'is a folder' if p.is_dir() else 'file not found'}; give a speech recording "
                             "(wav, mp3, flac, m4a, or a video with sound).")
    follows = bool(fps) and not length  # the video follows the audio: at most MAX_LENGTH frames, as --length
    if follows:  # hours of audio: refused before they are decoded (about 80 MB a minute of 48 kHz stereo)
        check_video_length(p, header_seconds(p), fps, MAX_LENGTH, HEADER_MARGIN)
    wav, sr = read_audio(p)
    raw = read_raw_audio(wav, sr)
    if follows:
        check_video_length(p, raw.num_samples_16k / 16000.0, fps, MAX_LENGTH)
    if raw.num_samples_16k < MIN_SAMPLES_16K:
        raise EchoMimicError(f"--audio {p}: the audio is too short ({raw.samples.shape[1] / sr * 1000:.0f} ms); at least "
                             f"{MIN_SAMPLES_16K // 16} ms are needed for one video frame.")
    check_audible(raw, f"--audio {p} has no audible sound: pass a recording of speech.")
    return wav, sr, raw


def frame_count(raw, fps: float, length: int | None) -> int:
    """The video length: the audio's (floor(seconds x fps), at least 1), cut to ``length`` frames if given."""
    from ..audio import frame_count_for_rows, num_feature_rows, video_frame_count
    from ..audio.mel import num_mel_frames

    n16 = raw.num_samples_16k
    n = min(video_frame_count(n16, fps), frame_count_for_rows(num_feature_rows(num_mel_frames(n16)), fps))
    if length is not None and length > n:
        log.warning("--length %d is beyond the audio: it lasts %.2f s, %d frames at %g fps; the video has %d frames "
                    "(the length follows the audio).", length, n16 / 16000.0, n, fps, n)
    return n if length is None else min(n, length)


__all__ = ["probe_speech", "read_speech", "frame_count"]
