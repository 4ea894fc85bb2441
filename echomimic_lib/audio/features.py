"""Whisper features of a clip and the per-video-frame chunks EchoMimic feeds the denoiser.

Rows: the whole-clip log-mel is split into 30 s segments (3000 mel frames, the last one zero-padded in
log-mel space); each segment goes through the encoder alone (memory stays bounded for any length)
and keeps ``(segment_end - segment_start) // 2`` rows of 5 x 384 states (50 rows per second).

Chunks: video frame ``i`` at ``fps`` has centre row ``int(i * 50 / fps)`` and takes rows
``centre - 4 ... centre + 5`` clamped to ``[0, N - 1]``, flattened to (50, 384). The reference produces
frames ``i = 0, 1, ...`` up to and including the first ``i`` whose centre is beyond ``N`` (so a clip
yields about ``N * fps / 50 + 2`` chunks, :meth:`AudioFeatures.frame_count`; the last ones repeat the
final row). That count is kept for parity; the *video length* that follows the audio is
:func:`video_frame_count`: ``max(1, floor(seconds * fps))`` frames, never more than the chunks, so the
video never outlasts its sound (0.5 s at 24 fps: 12 frames, not the reference's 14).

Encoding only what is needed (``encode_audio(..., frames=N, fps=...)``): the log-mel is still computed
over the whole clip (its floor depends on the clip's maximum, and it is cheap), but only the 30 s
segments that hold the rows of frames ``0 .. N-1`` go through the encoder. Each segment is encoded
alone in any case, so those rows are bit-identical to a whole-clip encoding. A caller that holds only the clip's
start (:func:`seconds_for_frames` of it) passes the whole clip's log-mel maximum (``mel_peak``, gathered a piece at a
time by :func:`echomimic_lib.audio.track.summarise_track`): the same rows again, bit for bit.

Features are computed once (:func:`encode_audio`) and sliced per context window
(:meth:`AudioFeatures.chunks` / :meth:`AudioFeatures.chunks_at`), never recomputed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import EchoMimicError
from .mel import HOP_LENGTH, SAMPLE_RATE, log_mel_spectrogram, num_mel_frames
from .waveform import RawAudio, read_raw_audio

log = logging.getLogger(__name__)

SEGMENT_FRAMES = 3000  # mel frames per encoder call (30 s)
ROWS_PER_SECOND = 50
CHUNK_OFFSETS = tuple(range(-4, 6))  # rows centre-4 .. centre+5
MIN_SAMPLES_16K = 2 * HOP_LENGTH  # 20 ms: the shortest clip that yields one feature row


def segment_bounds(num_mel: int, segment_frames: int = SEGMENT_FRAMES) -> list[tuple[int, int]]:
    """(start, end) mel-frame ranges of the 30 s segments."""
    return [(s, min(s + segment_frames, num_mel)) for s in range(0, num_mel, segment_frames)]


def num_feature_rows(num_mel: int) -> int:
    return sum((end - start) // 2 for start, end in segment_bounds(num_mel))


def video_frame_count(num_samples_16k: int, fps: float) -> int:
    """Frames of a video that follows a clip of ``num_samples_16k`` samples: ``max(1, floor(seconds * fps))``.

    The video never outlasts the audio (it ends at most one frame early); the reference instead makes
    about two frames more than the audio covers. The chunk count (:func:`frame_count_for_rows`) caps it."""
    fps = _check_fps(fps)
    exact = int(num_samples_16k) * fps / SAMPLE_RATE
    return max(1, int(np.floor(exact + 1e-6)))  # tolerance: 1.0 s x 30.0 fps must give 30, not 29


def rows_for_frames(frames: int, fps: float) -> int:
    """Feature rows (from the start) that the chunks of video frames ``0 .. frames-1`` read."""
    if frames <= 0:
        return 0
    return int((int(frames) - 1) * ROWS_PER_SECOND / _check_fps(fps)) + CHUNK_OFFSETS[-1] + 1


def seconds_for_frames(frames: int, fps: float) -> float:
    """Seconds from a clip's start that hold all the features of video frames ``0 .. frames-1`` read: the whole 30 s
    segments their rows fall in, rounded up to whole 60 s log-mel blocks, and 1 s more (the resampler's and the STFT's
    look-ahead). With the whole clip's :class:`~echomimic_lib.audio.mel.LogMelPeak` those frames' features are the
    whole clip's, bit for bit (``encode_audio(..., mel_peak=...)``)."""
    from .mel import _BLOCK_FRAMES

    segments = -(-rows_for_frames(max(1, int(frames)), fps) // (SEGMENT_FRAMES // 2))
    blocks = -(-segments * SEGMENT_FRAMES // _BLOCK_FRAMES)
    return blocks * _BLOCK_FRAMES * HOP_LENGTH / SAMPLE_RATE + 1.0


def _centres(frames: np.ndarray, fps: float) -> np.ndarray:
    # float64 arithmetic identical to Python's int(i * 50 / fps) for non-negative i
    return np.floor(frames.astype(np.int64) * ROWS_PER_SECOND / float(fps)).astype(np.int64)


def _check_fps(fps) -> float:
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise EchoMimicError(f"fps must be a number, got {fps!r}.") from None
    if not np.isfinite(fps) or fps <= 0:
        raise EchoMimicError(f"fps must be a positive number, got {fps!r}.")
    return fps


def frame_count_for_rows(num_rows: int, fps: float) -> int:
    """Video frames the reference produces from ``num_rows`` feature rows at ``fps`` (0 if no rows)."""
    fps = _check_fps(fps)
    if num_rows <= 0:
        return 0
    i = max(int(num_rows * fps / ROWS_PER_SECOND) - 2, 0)
    while i > 0 and int((i - 1) * ROWS_PER_SECOND / fps) > num_rows:
        i -= 1
    while int(i * ROWS_PER_SECOND / fps) <= num_rows:
        i += 1
    return i + 1  # frames 0 .. i, the last being the first whose centre is beyond num_rows


def chunk_row_indices(frames: Sequence[int] | np.ndarray, fps: float, num_rows: int) -> np.ndarray:
    """(k, 10) int64 feature-row indices of the chunks of video frames ``frames``."""
    frames = np.asarray(frames, dtype=np.int64).reshape(-1)
    rows = _centres(frames, _check_fps(fps))[:, None] + np.asarray(CHUNK_OFFSETS, dtype=np.int64)[None, :]
    return np.clip(rows, 0, num_rows - 1)


@dataclass
class AudioFeatures:
    """Stacked whisper states of one clip, ``rows`` (N, 5, 384); slice per frame window with ``chunks``.

    ``total_rows``: the row count of the whole clip when only its beginning was encoded
    (``encode_audio(..., frames=...)``); frame counts and row clamping follow the whole clip, and a
    chunk that needs a row that was not encoded is refused."""

    rows: torch.Tensor
    num_samples_16k: int
    total_rows: int | None = None

    @property
    def num_rows(self) -> int:
        """Rows of the whole clip (the encoded ones plus any that were skipped)."""
        return int(self.rows.shape[0]) if self.total_rows is None else int(self.total_rows)

    @property
    def encoded_rows(self) -> int:
        return int(self.rows.shape[0])

    @property
    def seconds(self) -> float:
        return self.num_samples_16k / SAMPLE_RATE

    def frame_count(self, fps: float) -> int:
        """Number of chunks this clip yields at ``fps`` (the reference's frame count, kept for parity)."""
        return frame_count_for_rows(self.num_rows, fps)

    def video_frame_count(self, fps: float) -> int:
        """Frames of a video that follows the audio: ``max(1, floor(seconds * fps))``, at most the chunks."""
        return min(video_frame_count(self.num_samples_16k, fps), self.frame_count(fps))

    def chunk_rows(self, fps: float, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """(k, 10) int64 row indices of frames ``start`` .. ``stop - 1`` (default: all frames)."""
        stop = self.frame_count(fps) if stop is None else stop
        return torch.from_numpy(self._rows_for(np.arange(start, stop), fps))

    def _rows_for(self, frames: np.ndarray, fps: float) -> np.ndarray:
        count = self.frame_count(fps)
        frames = np.asarray(frames, dtype=np.int64).reshape(-1)
        if frames.size and (frames.min() < 0 or frames.max() >= count):
            raise EchoMimicError(
                f"audio chunk frame index out of range: frames {int(frames.min())}..{int(frames.max())} requested, "
                f"the {self.seconds:.2f} s clip yields {count} frames at {fps} fps (0..{count - 1})."
            )
        rows = chunk_row_indices(frames, fps, self.num_rows)
        if rows.size and int(rows.max()) >= self.encoded_rows:
            raise EchoMimicError(
                f"audio features were encoded for the first {self.encoded_rows} rows only (frames 0..{int(frames.max())} "
                f"need {int(rows.max()) + 1}); encode the clip again with a larger frame limit (or none)."
            )
        return rows

    def chunks_at(self, frames: Sequence[int], fps: float, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(k, 50, 384) chunks of arbitrary frame indices (e.g. a wrapped context window)."""
        idx = torch.from_numpy(self._rows_for(np.asarray(frames), fps)).to(self.rows.device)
        out = self.rows[idx.reshape(-1)].reshape(idx.shape[0], len(CHUNK_OFFSETS) * self.rows.shape[1], self.rows.shape[2])
        return out.to(device=device or out.device, dtype=dtype or out.dtype)

    def chunks(self, start: int, stop: int, fps: float, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(stop - start, 50, 384) chunks of frames ``start`` .. ``stop - 1``."""
        return self.chunks_at(np.arange(start, stop), fps, device, dtype)

    def chunk(self, i: int, fps: float, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(50, 384) chunk of video frame ``i``."""
        return self.chunks_at([i], fps, device, dtype)[0]

    def all_chunks(self, fps: float, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(frame_count(fps), 50, 384): every chunk, as the reference's whisper_chunks."""
        return self.chunks(0, self.frame_count(fps), fps, device, dtype)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "AudioFeatures":
        rows = self.rows.to(device=device or self.rows.device, dtype=dtype or self.rows.dtype)
        return AudioFeatures(rows, self.num_samples_16k, self.total_rows)


def _too_short(n16: int) -> EchoMimicError:
    return EchoMimicError(
        f"audio is too short: {n16} samples at 16 kHz ({n16 / 16:.1f} ms); EchoMimic needs at least "
        f"{MIN_SAMPLES_16K} samples ({MIN_SAMPLES_16K // 16} ms) for one audio feature row."
    )


def encode_log_mel(mel: torch.Tensor, encoder, device=None, dtype: torch.dtype = torch.float32, num_samples_16k: int | None = None,
                   max_rows: int | None = None) -> AudioFeatures:
    """Run the encoder segment by segment over a whole-clip (80, T) log-mel -> :class:`AudioFeatures`.

    ``max_rows``: only the segments holding rows ``0 .. max_rows-1`` are encoded (the rest is skipped)."""
    num_mel = int(mel.shape[1])
    bounds = [(s, e) for s, e in segment_bounds(num_mel) if (e - s) // 2 > 0]
    clip_rows = sum((e - s) // 2 for s, e in bounds)
    if clip_rows == 0:
        raise _too_short(num_samples_16k if num_samples_16k is not None else num_mel * HOP_LENGTH)
    if max_rows is not None:  # segment k holds rows [k * 1500, ...): keep those starting below max_rows
        bounds = bounds[: max(1, -(-int(max_rows) // (SEGMENT_FRAMES // 2)))]
    total = sum((e - s) // 2 for s, e in bounds)
    device = torch.device(device) if device is not None else encoder.device
    width = encoder.encoder.config.d_model
    rows = torch.empty((total, 5, width), dtype=dtype, device=device)
    at = 0
    for start, end in bounds:
        segment = torch.zeros((1, mel.shape[0], SEGMENT_FRAMES), dtype=torch.float32)
        segment[0, :, : end - start] = mel[:, start:end]
        keep = (end - start) // 2
        states = encoder(segment)  # (1, 1500, 5, 384), freed before the next segment
        rows[at : at + keep] = states[0, :keep].to(device=device, dtype=dtype)
        at += keep
        del states
    log.debug("audio: encoded %d of %d segments (%d of %d rows)", len(bounds), len(segment_bounds(num_mel)), total, clip_rows)
    return AudioFeatures(rows, num_samples_16k if num_samples_16k is not None else num_mel * HOP_LENGTH,
                         clip_rows if total != clip_rows else None)


def _encoder(encoder):
    if isinstance(encoder, (str, Path)):
        from .whisper import load_whisper_encoder

        return load_whisper_encoder(encoder)
    return encoder


def encode_audio(audio, encoder, sample_rate=None, *, device=None, dtype: torch.dtype = torch.float32,
                 frames: int | None = None, fps: float | None = None, mel_peak: float | None = None) -> AudioFeatures:
    """Audio (ComfyUI AUDIO dict, tensor/array + ``sample_rate``, or file path) -> :class:`AudioFeatures`.

    ``encoder``: a :class:`~echomimic_lib.audio.whisper.WhisperFeatureEncoder` (or a checkpoint path).
    Rows are stored on ``device`` (default: the encoder's) in ``dtype`` (default float32).
    ``frames`` + ``fps``: only video frames ``0 .. frames-1`` will be used, so only the 30 s segments
    they read are encoded (same values as a whole-clip encoding; see the module notes). ``mel_peak``: the audio is the
    start of a longer clip (:func:`seconds_for_frames` of it at least), and this its whole log-mel maximum
    (:func:`echomimic_lib.audio.track.summarise_track`): the frames' features are the whole clip's.
    """
    if frames is not None and fps is None:
        raise EchoMimicError("encode_audio: a frame limit needs the fps it is counted at (frames=N, fps=24).")
    raw = audio if isinstance(audio, RawAudio) else read_raw_audio(audio, sample_rate)
    if raw.num_samples_16k < MIN_SAMPLES_16K:
        raise _too_short(raw.num_samples_16k)
    wave = torch.from_numpy(raw.mono_16k())
    del raw
    mel = log_mel_spectrogram(wave, peak=mel_peak)
    log.debug("audio: %d samples at 16 kHz -> %d mel frames", wave.shape[0], mel.shape[1])
    max_rows = None if frames is None else rows_for_frames(max(1, int(frames)), fps)
    return encode_log_mel(mel, _encoder(encoder), device, dtype, int(wave.shape[0]), max_rows=max_rows)


def audio_frame_count(audio, fps: float, sample_rate=None) -> int:
    """Video frames a clip yields at ``fps`` (no encoder run). ``audio``: :class:`AudioFeatures` or any audio input."""
    if isinstance(audio, AudioFeatures):
        return audio.frame_count(fps)
    raw = audio if isinstance(audio, RawAudio) else read_raw_audio(audio, sample_rate)
    return frame_count_for_rows(num_feature_rows(num_mel_frames(raw.num_samples_16k)), fps)


def audio_chunks(audio, encoder, fps: float, sample_rate=None, *, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One call: audio -> (frames, 50, 384) per-frame features at ``fps`` (all frames the clip yields)."""
    return encode_audio(audio, encoder, sample_rate, device=device, dtype=dtype).all_chunks(fps)
