"""Whisper log-mel spectrogram of a whole 16 kHz clip, as EchoMimic computes it.

Behaviour (from the reference): Hann window, n_fft 400, hop 160, centred frames with reflect padding,
power spectrum with the last STFT frame dropped, 80 slaney mel filters (Whisper's filterbank, 0-8 kHz),
``log10(max(x, 1e-10))``, floor at ``(max over the WHOLE clip) - 8``, then ``(x + 4) / 4``.
100 mel frames per second; a clip of ``n`` samples gives ``n // 160`` frames.

The spectrum is computed on the CPU in float64 (cheap next to the encoder): this removes our own FFT
rounding, so the remaining difference to the reference is the reference's float32 rounding alone
(max 1.3e-5 on the fixture speech clip instead of 2.4e-5 in float32; tolerance 1e-4). The filterbank
values are Whisper's float32 ones. The STFT runs in blocks of frames so a long clip never holds its
whole complex spectrum at once; only the (80, T) float32 log-mel is kept (19 MB for 10 minutes).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..errors import EchoMimicError

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
_BLOCK_FRAMES = 6000  # STFT frames per block (60 s of audio)


@lru_cache(maxsize=4)
def _filters_cpu(n_mels: int) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )  # (201, n_mels) float64
    return torch.from_numpy(bank.T.astype("float32")).contiguous()


def mel_filters(device: torch.device | str = "cpu", n_mels: int = N_MELS) -> torch.Tensor:
    """Whisper's (n_mels, 201) float32 mel filterbank (computed once, then cached)."""
    return _filters_cpu(n_mels).to(device, copy=True)


def num_mel_frames(num_samples: int) -> int:
    """Mel frames of a 16 kHz clip of ``num_samples`` samples (the dropped last STFT frame included)."""
    return max(int(num_samples), 0) // HOP_LENGTH


def _log10_block(seg: torch.Tensor, window: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """(n_mels, frames) float64 log10 mel power of a padded float64 segment (frames = (len - N_FFT) // HOP + 1)."""
    spec = torch.stft(seg, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
    power = spec.abs() ** 2  # (201, frames)
    return torch.clamp(filters @ power, min=1e-10).log10()


def log_mel_spectrogram(waveform: torch.Tensor, n_mels: int = N_MELS, block_frames: int = _BLOCK_FRAMES,
                        peak: float | None = None) -> torch.Tensor:
    """(80, T) float32 CPU log-mel of a 1-D float 16 kHz waveform.

    The waveform must have at least ``N_FFT // 2 + 1`` samples (reflect padding needs them); callers
    that accept shorter clips must check before (see :func:`echomimic_lib.audio.features.encode_audio`).
    ``peak``: the floor's maximum when ``waveform`` is the start of a longer clip (:class:`LogMelPeak` of the whole
    clip: the frames they share come out as the whole clip's); default this clip's own maximum.
    """
    if waveform.ndim != 1:
        raise EchoMimicError(f"log_mel_spectrogram expects a 1-D waveform, got shape {tuple(waveform.shape)}.")
    n = waveform.shape[0]
    if n <= N_FFT // 2:
        raise EchoMimicError(f"audio too short for a log-mel spectrogram: {n} samples at 16 kHz (need at least {N_FFT // 2 + 1}).")
    # float32 samples (the reference's input precision), computed in float64 on the CPU.
    wav = waveform.detach().to("cpu", torch.float32).to(torch.float64)
    padded = torch.nn.functional.pad(wav[None, None], (N_FFT // 2, N_FFT // 2), mode="reflect")[0, 0]
    total = n // HOP_LENGTH  # frames kept: 1 + n // hop centred frames, the last one dropped
    window = torch.hann_window(N_FFT, dtype=torch.float64)
    filters = mel_filters("cpu", n_mels).to(torch.float64)
    out = torch.empty((n_mels, total), dtype=torch.float64)
    for start in range(0, total, block_frames):
        stop = min(start + block_frames, total)
        out[:, start:stop] = _log10_block(padded[start * HOP_LENGTH : (stop - 1) * HOP_LENGTH + N_FFT], window, filters)
    top = out.max() if peak is None else torch.tensor(peak, dtype=torch.float64)
    out = torch.maximum(out, top - 8.0)
    return ((out + 4.0) / 4.0).to(torch.float32)


class LogMelPeak:
    """The maximum :func:`log_mel_spectrogram` floors at, of a 16 kHz clip given piece by piece (:meth:`add`, then
    :meth:`value`): the same blocks of frames, computed the same way, so the same number as the whole clip's, while
    at most one block (60 s) of samples is held."""

    def __init__(self, n_mels: int = N_MELS, block_frames: int = _BLOCK_FRAMES):
        self.block, self.n, self.start, self.top = block_frames, 0, 0, None
        self.pending: list = []  # float32 pieces not yet joined to ``buf``
        self.buf = np.zeros(0, np.float64)  # padded samples from padded index ``at`` (padded = wave shifted by N_FFT // 2)
        self.at = 0
        self.window = torch.hann_window(N_FFT, dtype=torch.float64)
        self.filters = mel_filters("cpu", n_mels).to(torch.float64)

    def add(self, wave: np.ndarray) -> None:
        self.pending.append(np.asarray(wave, np.float32))
        self.n += len(wave)
        if self.n >= max(self._ready(), N_FFT // 2 + 1):
            self._join()
            while self.n >= self._ready():
                self._frames(self.start + self.block)

    def _ready(self) -> int:
        """Samples the next whole block of frames reads (its last frame's window, short of the end reflection)."""
        return (self.start + self.block - 1) * HOP_LENGTH + N_FFT // 2

    def _join(self, tail: np.ndarray | None = None) -> None:
        parts = [self.buf] + [p.astype(np.float64) for p in self.pending] + ([] if tail is None else [tail])
        if self.at == 0 and len(self.buf) == 0:  # the front reflection: padded[i] = wave[N_FFT // 2 - i]
            first = np.concatenate(parts[1:])
            parts = [first[N_FFT // 2 : 0 : -1], first]
        self.buf, self.pending = np.concatenate(parts), []

    def _frames(self, stop: int) -> None:
        lo, hi = self.start * HOP_LENGTH - self.at, (stop - 1) * HOP_LENGTH + N_FFT - self.at
        block = _log10_block(torch.from_numpy(self.buf[lo:hi]), self.window, self.filters).max()
        self.top = block if self.top is None else torch.maximum(self.top, block)
        self.start = stop
        drop = self.start * HOP_LENGTH - self.at
        self.buf, self.at = self.buf[drop:].copy(), self.at + drop

    def value(self) -> float | None:
        """The whole clip's maximum (None: too short for a log-mel spectrogram)."""
        if self.n <= N_FFT // 2:
            return None
        self._join()
        wave_end = self.n + N_FFT // 2 - self.at  # buf index of padded[n + N_FFT // 2] (the end reflection starts there)
        total = self.n // HOP_LENGTH
        if self.start < total:  # the end reflection: padded[n + N_FFT // 2 + k] = wave[n - 2 - k]
            self.buf = np.concatenate([self.buf[:wave_end], self.buf[np.arange(wave_end - 2, wave_end - 2 - N_FFT // 2, -1)]])
        while self.start < total:
            self._frames(min(self.start + self.block, total))
        return float(self.top)
