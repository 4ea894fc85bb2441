"""MFCCs as SyncNet's evaluation scripts compute them (``python_speech_features.mfcc`` with its defaults),
written here in numpy so no extra package is needed.

Defaults of that function, which SyncNet's audio stream was trained on: 25 ms windows every 10 ms (400 / 160
samples at 16 kHz, rectangular window, the signal zero-padded to fill the last frame), pre-emphasis 0.97,
512-point FFT power spectrum ``|X|^2 / 512``, 26 triangular mel filters from 0 Hz to Nyquist (edges at
``floor((nfft + 1) * mel2hz(m) / rate)``), natural log, orthonormal DCT-II keeping 13 coefficients, sinusoidal
lifter 22, and coefficient 0 replaced by the log of the frame's total power. Zeros are replaced by the float64
epsilon before each log. The scripts feed 16-bit PCM sample values (not -1..1 floats): callers scale by 32768.
"""
from __future__ import annotations

import math

import numpy as np

WIN, HOP, NFFT, NFILT, NCEP, PREEMPH, LIFTER = 0.025, 0.01, 512, 26, 13, 0.97, 22


def _hz2mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel2hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(nfilt: int = NFILT, nfft: int = NFFT, rate: int = 16000) -> np.ndarray:
    """(nfilt, nfft // 2 + 1) triangular filters (rows) on FFT bins."""
    edges = np.floor((nfft + 1) * _mel2hz(np.linspace(_hz2mel(0.0), _hz2mel(rate / 2), nfilt + 2)) / rate)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = edges[j], edges[j + 1], edges[j + 2]
        for i in range(int(lo), int(mid)):
            bank[j, i] = (i - lo) / (mid - lo)
        for i in range(int(mid), int(hi)):
            bank[j, i] = (hi - i) / (hi - mid)
    return bank


def _dct2_ortho(x: np.ndarray, keep: int) -> np.ndarray:
    n = x.shape[1]
    k = np.arange(keep)[:, None]
    basis = np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return x @ basis.T


def _frames(signal: np.ndarray, length: int, step: int) -> np.ndarray:
    n = len(signal)
    count = 1 if n <= length else 1 + int(math.ceil((n - length) / step))
    padded = np.concatenate([signal, np.zeros(max(0, (count - 1) * step + length - n))])
    idx = np.arange(length)[None, :] + step * np.arange(count)[:, None]
    return padded[idx]


def mfcc(signal: np.ndarray, rate: int = 16000) -> np.ndarray:
    """(frames, 13) MFCCs of a 1-D signal (for SyncNet: 16 kHz, int16-scaled sample values)."""
    sig = np.asarray(signal, dtype=np.float64).reshape(-1)
    if sig.size == 0:
        raise ValueError("mfcc: empty signal")
    sig = np.append(sig[0], sig[1:] - PREEMPH * sig[:-1])
    frames = _frames(sig, int(round(WIN * rate)), int(round(HOP * rate)))
    power = np.abs(np.fft.rfft(frames, NFFT)) ** 2 / NFFT
    eps = np.finfo(np.float64).eps
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, eps, energy)
    feat = power @ mel_filterbank(NFILT, NFFT, rate).T
    feat = np.where(feat == 0, eps, feat)
    cep = _dct2_ortho(np.log(feat), NCEP)
    cep *= 1.0 + (LIFTER / 2.0) * np.sin(np.pi * np.arange(NCEP) / LIFTER)
    cep[:, 0] = np.log(energy)
    return cep
