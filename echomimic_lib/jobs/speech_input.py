"""The speech of a job (``--audio``): probed cheaply first (:func:`probe_speech`), then read and checked
(:func:`read_speech`: decodable, finite, long enough, audible, not longer than a video can be), and the video's
frame count that follows from it (:func:`frame_count`). Shared by animate, dub, poses, batch and V3's plan.
"""
from __future__ import annotations

import logging
import math
import stat
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError

log = logging.getLogger(__name__)


def probe_speech(path, flag: str = "--audio") -> None:
    """The cheap part of :func:`read_speech` (PyAV only: no torch, no model): the file exists and opens as media.
    Commands call it first, so a file that is not audio at all is refused before the heavy libraries load (the
    rest -- a sound track, its length, silence -- is checked with the other inputs, in their usual order)."""
    from ..io.video_io import _open

    p = check_speech_file(path, flag)
    fix = "give a speech recording (wav, mp3, flac, m4a, or a video with sound)."
    if p.stat().st_size == 0:
        raise EchoMimicError(f"{flag} {p}: the file is empty (0 bytes); {fix}")
    try:
        c = _open(p)
    except EchoMimicError as exc:  # the option named (the message starts with the path)
        raise EchoMimicError(f"{flag} {exc}" if str(exc).startswith(str(p)) else f"{flag}: {exc}") from None
    try:
        s = c.streams.audio[0] if c.streams.audio else None
        if s is None:
            raise EchoMimicError(f"{flag} {p}: the file has no audio stream; give a recording with sound (wav, mp3, flac, "
                                 "m4a, or a video with audio).")
        check_rate(p, (s.codec_context.sample_rate or s.rate or 0) if s is not None else 0, flag)  # (the header's)
    finally:
        c.close()


def check_rate(p, rate, flag: str = "--audio") -> None:
    """Refuse a sound track whose sample rate is past what an output video's sound is made from
    (:data:`~echomimic_lib.io.video_writer.MAX_SAMPLE_RATE`) or under any speech's
    (:data:`~echomimic_lib.audio.waveform.MIN_SPEECH_RATE`: resampling it to 16 kHz would multiply it): said with the other speech checks, not by the writer
    after the weights load."""
    from ..audio.waveform import MIN_SPEECH_RATE
    from ..io.video_writer import MAX_SAMPLE_RATE

    if rate and 0 < rate < MIN_SPEECH_RATE:
        raise EchoMimicError(f"{flag} {p}: its sample rate is {rate:g} Hz, under the {MIN_SPEECH_RATE} Hz any speech "
                             "recording has (a damaged or mislabelled header); resample it first, e.g. `ffmpeg -i "
                             f"\"{Path(p).name}\" -ar 16000 speech.wav`, or give the recording it came from.")
    if rate and int(rate) > MAX_SAMPLE_RATE:
        raise EchoMimicError(f"{flag} {p}: its sample rate is {int(rate)} Hz, past the {MAX_SAMPLE_RATE} Hz an output "
                             "video's sound is made from (no recorder records faster: a damaged or mislabelled header); "
                             f"resample it first, e.g. `ffmpeg -i \"{Path(p).name}\" -ar 48000 speech.wav`.")


def check_speech_file(path, flag: str = "--audio") -> Path:
    """``path`` as a Path, refused unless it is a regular file, saying what it is instead (from ``stat`` alone: a named
    pipe is never opened, which would wait for a writer)."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # (a link to nothing too)
        mode = None
    except OSError as exc:  # e.g. a folder on the way that may not be read
        raise EchoMimicError(f"{flag} {p}: cannot be read ({exc.strerror or exc}); check the path and its permissions.") from None
    except ValueError:  # a NUL byte (a manifest cell, an API prompt): was "file not found" through is_file()
        raise EchoMimicError(f"{flag} {str(path)!r}: not a file name (it holds a NUL byte); give the speech recording's "
                             "path.") from None
    if mode is not None and stat.S_ISREG(mode):
        return p
    fix = "give a speech recording (wav, mp3, flac, m4a, or a video with sound)."
    if mode is None:
        from ..io.os_errors import missing_text

        what = missing_text(p)
    elif stat.S_ISDIR(mode):
        what = "is a folder"
    elif stat.S_ISFIFO(mode):  # also `<(command)` and /dev/stdin from a pipe: read only once, the speech is read twice
        what = "is a named pipe (FIFO), not a regular file"
        fix = ("the speech is read more than once (checked, then decoded), so save the stream to a file first (e.g. "
               f"`ffmpeg -i \"{p}\" speech.wav`) and give that recording.")
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        what = "is a device, not a regular file"
    else:
        what = "is not a regular file (a socket?)"
    raise EchoMimicError(f"{flag} {p}: {what}; {fix}")


def read_speech(path, fps: float | None = None, length=None, on_16k=None):
    """(samples (C, T) float32, sample rate, RawAudio): decodable, finite, long enough, audible; with ``fps`` and no
    ``length``, short enough for a video of MAX_LENGTH frames (said from the file's header before decoding it).

    With ``fps`` and ``length`` only the start the first ``length`` frames need is kept (a longer track gives a
    :class:`~echomimic_lib.audio.track.SpeechStart`): in the same decode pass the whole track goes by a piece at a time
    for the same checks and the whisper features' log-mel maximum, so those frames' features and sound are the whole track's while a
    60-min 96 kHz 6-channel recording costs its first minute's memory (about 140 MB), not its 8 GB. ``on_16k``: given
    that pass's 16 kHz mono of the whole track a piece at a time (only when a :class:`SpeechStart` is returned)."""
    from ..audio import check_audible, read_raw_audio
    from ..audio.features import MIN_SAMPLES_16K
    from ..io.audio_file import read_audio
    from .speech_length import HEADER_MARGIN, MAX_LENGTH, check_video_length, header_seconds

    p = check_speech_file(path)
    follows = bool(fps) and not length  # the video follows the audio: at most MAX_LENGTH frames, as --length
    if follows:  # hours of audio: refused before they are decoded (about 80 MB a minute of 48 kHz stereo)
        check_video_length(p, header_seconds(p), fps, MAX_LENGTH, HEADER_MARGIN)
    if fps and length:
        wav, sr, start = _read_start(p, fps, length, on_16k)
        if start is not None:
            return wav, sr, start
    else:  # following the audio: never more decoded than the longest video's audio (+1 s shows that it is longer)
        wav, sr = read_audio(p, duration=MAX_LENGTH / fps + 1.0 if follows else None)
    check_rate(p, sr)
    raw = read_raw_audio(wav, sr)
    if follows:
        check_video_length(p, raw.num_samples_16k / 16000.0, fps, MAX_LENGTH)
    if raw.num_samples_16k < MIN_SAMPLES_16K:
        raise EchoMimicError(f"--audio {p}: the audio is too short ({raw.samples.shape[1] / sr * 1000:.0f} ms); at least "
                             f"{MIN_SAMPLES_16K // 16} ms are needed for one video frame.")
    check_audible(raw, f"--audio {p} has no audible sound: pass a recording of speech.")
    return wav, sr, raw


def _read_start(p: Path, fps: float, length: int, on_16k=None):
    """(samples, rate, SpeechStart) of the start the first ``length`` frames need; (samples, rate, None) when the track
    ends within it (it is all there: checked as before). One decode pass: the start is kept while the whole track
    goes through :class:`_PastTheStart` for the checks, its length and the log-mel maximum."""
    from ..audio import check_audible
    from ..audio.features import seconds_for_frames
    from ..audio.track import SpeechStart
    from ..io.audio_file import read_audio

    seconds = seconds_for_frames(length, fps)
    past = _PastTheStart(seconds, on_16k)
    wav, sr = read_audio(p, duration=seconds, rest=past)
    check_rate(p, sr)
    whole = past.summary()
    if whole is None:
        return wav, sr, None  # the whole track: nothing more to know
    whole.check_finite("audio")
    check_audible(np.array([whole.peak], np.float32), f"--audio {p} has no audible sound: pass a recording of speech.")
    return wav, sr, SpeechStart(np.ascontiguousarray(wav), float(sr), whole.samples, whole.mel_peak)  # (no copy)


class _PastTheStart:
    """``read_audio``'s ``rest``: the kept start (once it is whole) and every decoded piece after it, summarised a
    second of samples at a time (:class:`~echomimic_lib.audio.track.LazyTrackSummariser`: no copy of the start). A
    track that ends within the start is never passed on, so never summarised twice."""

    def __init__(self, seconds: float, on_16k=None):
        from ..audio.track import LazyTrackSummariser

        self.seconds, self.rest = seconds, LazyTrackSummariser(**({} if on_16k is None else {"on_16k": on_16k}))

    def __call__(self, sr: int, piece: np.ndarray) -> None:
        self.rest(sr, piece)

    def summary(self):
        """The whole track's :class:`~echomimic_lib.audio.track.TrackSummary`; None when it is no longer than the start."""
        s = self.rest.summariser
        if s is None or s.n <= math.ceil(self.seconds * s.sr - 1e-9):
            return None
        return s.summary()


def check_whole_speech(p: Path, whole) -> None:
    """``read_speech(p)``'s checks of the decoded track, in its order and words, on the whole track's
    :class:`~echomimic_lib.audio.track.TrackSummary` (a reader that never held it): finite, long enough, audible."""
    from ..audio import check_audible
    from ..audio.features import MIN_SAMPLES_16K

    check_rate(p, whole.sample_rate)
    whole.check_finite("audio")
    if whole.num_samples_16k < MIN_SAMPLES_16K:
        raise EchoMimicError(f"--audio {p}: the audio is too short ({whole.samples / whole.sample_rate * 1000:.0f} ms); at "
                             f"least {MIN_SAMPLES_16K // 16} ms are needed for one video frame.")
    check_audible(np.array([whole.peak], np.float32), f"--audio {p} has no audible sound: pass a recording of speech.")


def read_speech_summary(path, each=None, fps: float | None = None, on_16k=None):
    """``read_speech(path, fps)``'s checks and words, in one decode pass that holds one decoded piece, never the track:
    the whole track's :class:`~echomimic_lib.audio.track.TrackSummary` (no log-mel maximum). With ``fps`` the video
    follows the audio: at most MAX_LENGTH frames (said from the header before decoding, else after the pass).
    ``each``: also called with every decoded (C, k) piece; ``on_16k`` with the track's 16 kHz mono, a piece at a time
    (``TrackSummariser``'s). ``frame_count`` takes the summary as it takes a RawAudio."""
    from ..audio.track import summarise_file
    from .speech_length import HEADER_MARGIN, MAX_LENGTH, check_video_length, header_seconds

    p = check_speech_file(path)
    if fps:
        check_video_length(p, header_seconds(p), fps, MAX_LENGTH, HEADER_MARGIN)
    whole = summarise_file(p, each, mel=False, **({} if on_16k is None else {"on_16k": on_16k}))
    if fps:
        check_video_length(p, whole.num_samples_16k / 16000.0, fps, MAX_LENGTH)
    check_whole_speech(p, whole)
    return whole


def frame_count(raw, fps: float, length: int | None, smoke: bool = False) -> int:
    """The video length: the audio's (floor(seconds x fps), at least 1), cut to ``length`` frames if given
    (``smoke``: ``length`` is a smoke run's own first second, not a --length the user gave)."""
    from ..audio import frame_count_for_rows, num_feature_rows, video_frame_count
    from ..audio.mel import num_mel_frames

    n16 = raw.num_samples_16k
    n = min(video_frame_count(n16, fps), frame_count_for_rows(num_feature_rows(num_mel_frames(n16)), fps))
    if smoke and length is not None and length > n:  # (was "--length 24 is beyond the audio": none was given)
        log.info("smoke run: the first %d frames (1 s), or as much as the audio covers: it lasts %.2f s; the video has "
                 "%d frames.", length, n16 / 16000.0, n)
    elif length is not None and length > n:
        log.warning("--length %d is beyond the audio: it lasts %.2f s, %d frames at %g fps; the video has %d frames "
                    "(the length follows the audio).", length, n16 / 16000.0, n, fps, n)
    return n if length is None else min(n, length)


__all__ = ["probe_speech", "read_speech", "read_speech_summary", "frame_count"]
