"""Audio input normalisation: whatever the caller has -> validated float32 mono 16 kHz samples.

Accepted inputs:
- ComfyUI ``AUDIO``: ``{"waveform": Tensor [B, C, T], "sample_rate": int}`` with B == 1;
- a torch tensor or numpy array with ``sample_rate``: [T], [C, T] or [1, C, T];
- a file path (decoded in memory with PyAV: no ffmpeg binary, no temp files).

Sample formats: float16/bfloat16/float32/float64 as is (nominal range [-1, 1]); integer PCM is scaled
to [-1, 1): int16 / 32768 (the reference's s16 convention), int32 / 2^31, int8 / 128, uint8 (x - 128) / 128.
Channels are averaged to mono, then resampled with soxr (see :mod:`.resample`).
Bad input raises :class:`EchoMimicError` with a message that says what to do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import EchoMimicError
from .resample import TARGET_RATE, resample, resampled_length

SILENCE_PEAK = 1e-4  # -80 dBFS: below this a clip has no audible sound

_INT_SCALE = {np.dtype(np.int16): (0.0, 32768.0), np.dtype(np.int32): (0.0, 2147483648.0), np.dtype(np.int8): (0.0, 128.0), np.dtype(np.uint8): (128.0, 128.0)}


@dataclass
class RawAudio:
    """Validated (C, T) float32 samples at their native rate."""

    samples: np.ndarray
    sample_rate: float

    @property
    def num_samples_16k(self) -> int:
        return resampled_length(self.samples.shape[1], self.sample_rate)

    def mono_16k(self) -> np.ndarray:
        mono = self.samples[0] if self.samples.shape[0] == 1 else self.samples.mean(axis=0, dtype=np.float32)
        return resample(mono, self.sample_rate)


def _as_numpy(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    raise EchoMimicError(f"{what}: expected a torch tensor, numpy array, ComfyUI AUDIO dict or file path, got {type(x).__name__}.")


def _to_float(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype in _INT_SCALE:
        offset, scale = _INT_SCALE[arr.dtype]
        return ((arr.astype(np.float32) - offset) / scale).astype(np.float32)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32, copy=False)
    raise EchoMimicError(
        f"{what}: samples of dtype {arr.dtype} are not audio; pass float samples in [-1, 1] or integer PCM "
        "(int8, uint8, int16, int32)."
    )


MIN_SPEECH_RATE = 1000  # Hz: no speech fits under it (its highest tone is half the rate); telephone speech is 8000
MAX_SAMPLE_RATE = 768_000  # Hz: the highest rate audio is recorded or stored at (studio DXD is 352.8k / 384k)


def _check_rate(sample_rate, what: str) -> float:
    if sample_rate is None:
        raise EchoMimicError(f"{what}: a sample rate is required with raw samples (e.g. sample_rate=44100).")
    try:
        rate = float(sample_rate.item() if hasattr(sample_rate, "item") else sample_rate)
    except (TypeError, ValueError):
        raise EchoMimicError(f"{what}: sample rate {sample_rate!r} is not a number.") from None
    except OverflowError:  # (an integer past any float: its repr may be too long to print)
        raise EchoMimicError(f"{what}: sample rate (an integer of about {int(sample_rate).bit_length() * 3 // 10} digits) "
                             f"is above the {MAX_SAMPLE_RATE} Hz any audio is recorded at; give the rate the samples "
                             "were recorded at.") from None
    if not np.isfinite(rate) or rate <= 0:
        raise EchoMimicError(f"{what}: sample rate must be a positive number of Hz, got {sample_rate!r}.")
    if rate < MIN_SPEECH_RATE:  # (every sample would become 16 kHz / rate samples for the features)
        raise EchoMimicError(f"{what}: sample rate {sample_rate!r} Hz is under the {MIN_SPEECH_RATE} Hz any speech "
                             "recording has (a damaged or mislabelled header, or the rate given in kHz); give the "
                             "rate the samples were recorded at, or resample them first.")
    if rate > MAX_SAMPLE_RATE:  # (1 GHz: a second of samples became 16 for the features, "too short")
        raise EchoMimicError(f"{what}: sample rate {sample_rate!r} Hz is above the {MAX_SAMPLE_RATE} Hz any audio is "
                             "recorded at (a damaged or mislabelled header, or the rate given in mHz); give the rate the "
                             "samples were recorded at (Load Audio reads it from the file), or resample them first.")
    return rate


def check_sample_rate(sample_rate, what: str = "audio") -> float:
    """The sample rate in Hz (a number from MIN_SPEECH_RATE to MAX_SAMPLE_RATE), or an error naming it and the fix."""
    return _check_rate(sample_rate, what)


def read_raw_audio(audio, sample_rate=None) -> RawAudio:
    """Validate any accepted input form and return (C, T) float32 samples at their native rate."""
    what = "audio"
    if isinstance(audio, (str, Path)):
        from ..io.audio_file import read_audio

        what = str(audio)
        if not Path(audio).is_file():
            from ..io.os_errors import missing_text

            raise EchoMimicError(f"{what}: {missing_text(audio, 'audio file not found')}.")
        audio, sample_rate = read_audio(audio)
    elif isinstance(audio, dict):
        if "waveform" not in audio or "sample_rate" not in audio:
            raise EchoMimicError("audio: a ComfyUI AUDIO dict needs the keys 'waveform' [B, C, T] and 'sample_rate'.")
        audio, sample_rate = audio["waveform"], audio["sample_rate"]
    rate = _check_rate(sample_rate, what)
    arr = _as_numpy(audio, what)
    if arr.ndim == 3:
        if arr.shape[0] != 1:
            raise EchoMimicError(f"{what}: a batch of {arr.shape[0]} clips [B, C, T] was given; pass one clip (waveform[i:i+1]).")
        arr = arr[0]
    elif arr.ndim == 1:
        arr = arr[None]
    elif arr.ndim != 2:
        raise EchoMimicError(f"{what}: waveform of shape {tuple(arr.shape)}; expected [T], [C, T] or [1, C, T].")
    if arr.shape[0] > 16 and arr.shape[1] <= 16:
        raise EchoMimicError(f"{what}: waveform of shape {tuple(arr.shape)} looks like [T, C]; pass [C, T] (transpose it).")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise EchoMimicError(f"{what}: the waveform is empty (shape {tuple(arr.shape)}).")
    samples = _to_float(arr, what)
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int((~finite).sum())
        first = int(np.argwhere(~finite)[0][1])
        raise EchoMimicError(
            f"{what}: {bad} NaN/Inf samples (first at {first / rate:.3f} s); the audio is corrupt. "
            "Clean it (e.g. replace non-finite samples with 0) before encoding."
        )
    return RawAudio(np.ascontiguousarray(samples), rate)


def check_audible(samples, fix: str = "Use a clip with audible speech.") -> None:
    """Refuse a clip whose peak is below -80 dBFS: EchoMimic would animate a still, closed mouth.

    ``samples``: array or tensor of float samples in [-1, 1] (any shape); ``fix`` ends the message and
    names the caller's way out (a node input, a command-line flag). Shared by the node and the CLI."""
    if isinstance(samples, RawAudio):
        samples = samples.samples
    if isinstance(samples, torch.Tensor):  # max |x| from the extremes: no |x| copy of a whole track (hours of a node's AUDIO)
        low, high = torch.aminmax(samples.detach()) if samples.numel() else (torch.zeros(()), torch.zeros(()))
        peak = max(float(high), -float(low))
    else:
        arr = np.asarray(samples)
        peak = max(float(arr.max()), -float(arr.min())) if arr.size else 0.0
    if peak < SILENCE_PEAK:
        level = f"{20 * np.log10(peak):.0f} dBFS" if peak > 0 else "digital silence"
        raise EchoMimicError(f"the audio is silent (peak level {level}); EchoMimic is driven by speech. {fix}")


def load_waveform_16k(audio, sample_rate=None) -> torch.Tensor:
    """Any accepted input -> 1-D float32 CPU tensor, mono, 16 kHz."""
    return torch.from_numpy(read_raw_audio(audio, sample_rate).mono_16k())


__all__ = ["RawAudio", "read_raw_audio", "check_sample_rate", "MAX_SAMPLE_RATE", "load_waveform_16k", "check_audible",
           "SILENCE_PEAK", "TARGET_RATE"]
