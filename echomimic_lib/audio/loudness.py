"""Integrated loudness (ITU-R BS.1770-4) and loudness normalisation, as EchoMimicV3 flash-pro applies it.

The official code normalises the whole 16 kHz clip to -23 LUFS with ``pyloudnorm`` before cutting it to
the video length, and leaves it unchanged when the measured loudness is beyond +-100 (a clip whose every
400 ms block is under the -70 LUFS gate measures -inf). Same algorithm here, same constants:
K-weighting = RBJ high shelf (+4 dB, Q 1/sqrt(2), 1500 Hz) then RBJ high pass (Q 0.5, 38 Hz), filtered
samples stored in the input's float type, 400 ms blocks with 75 % overlap (``round((T - 0.4) / 0.1) + 1``
blocks), absolute gate -70 LUFS, relative gate -10 LU, loudness ``-0.691 + 10 log10(mean square)``.
Deviation: a clip shorter than one 400 ms block (pyloudnorm raises) is returned unchanged.
"""
from __future__ import annotations

import numpy as np

TARGET_LUFS = -23.0
BLOCK_S = 0.4
OVERLAP = 0.75
STAGES = (("high_shelf", 4.0, 1 / np.sqrt(2), 1500.0), ("high_pass", 0.0, 0.5, 38.0))  # the K-weighting


def _biquad(kind: str, gain_db: float, q: float, fc: float, rate: float) -> tuple[np.ndarray, np.ndarray]:
    a_ = 10 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * (fc / rate)
    alpha = np.sin(w0) / (2.0 * q)
    c = np.cos(w0)
    if kind == "high_shelf":
        s = 2 * np.sqrt(a_) * alpha
        b = [a_ * ((a_ + 1) + (a_ - 1) * c + s), -2 * a_ * ((a_ - 1) + (a_ + 1) * c), a_ * ((a_ + 1) + (a_ - 1) * c - s)]
        a = [(a_ + 1) - (a_ - 1) * c + s, 2 * ((a_ - 1) - (a_ + 1) * c), (a_ + 1) - (a_ - 1) * c - s]
    else:  # high_pass
        b = [(1 + c) / 2, -(1 + c), (1 + c) / 2]
        a = [1 + alpha, -2 * c, 1 - alpha]
    return np.array(b) / a[0], np.array(a) / a[0]


def integrated_loudness(samples: np.ndarray, rate: int = 16000) -> float:
    """Gated integrated loudness of a mono clip in LUFS (-inf when every block is under -70 LUFS)."""
    from scipy.signal import lfilter

    x = np.array(samples, copy=True)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError("loudness: samples must be floating point")
    for stage in STAGES:
        b, a = _biquad(stage[0], *stage[1:], rate)
        x[:] = lfilter(b, a, x)  # stored back in the input dtype, as the reference does
    n_blocks = _num_blocks(x.shape[0], rate)
    z = np.zeros(n_blocks)
    for j in range(n_blocks):
        lo, hi = _block(j, rate)
        z[j] = _energy(x[lo:hi], rate)
    return _gated(z)


def _num_blocks(n: int, rate: int) -> int:
    return int(np.round(((n / rate - BLOCK_S) / (BLOCK_S * (1 - OVERLAP))))) + 1


def _block(j: int, rate: int) -> tuple[int, int]:
    return int(BLOCK_S * (j * (1 - OVERLAP)) * rate), int(BLOCK_S * (j * (1 - OVERLAP) + 1) * rate)


def _energy(x: np.ndarray, rate: int):
    return (1.0 / (BLOCK_S * rate)) * np.sum(np.square(x))


def _gated(z: np.ndarray) -> float:
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(z)
        gated = z[block_lufs >= -70.0]
        if gated.size == 0:
            return float("-inf")
        rel = -0.691 + 10.0 * np.log10(np.mean(gated)) - 10.0
        keep = z[(block_lufs > rel) & (block_lufs > -70.0)]
        return float(-0.691 + 10.0 * np.log10(np.mean(keep) if keep.size else 0.0))


class LoudnessMeter:
    """:func:`integrated_loudness` of a clip given piece by piece (:meth:`add`, then :meth:`loudness`): the same number,
    bit for bit -- the K-weighting runs on with the filters' state (each stage's output stored in the input's float
    type, as there), each 400 ms block's mean square is taken over the same samples the same way -- while only the
    samples of the blocks not yet measured (about 400 ms) and one float per 100 ms are held."""

    SLACK = 1600  # samples past a block before it is measured: a length cut short at the end (:meth:`loudness`)

    def __init__(self, rate: int = 16000):
        self.rate, self.n, self.at, self.z = rate, 0, 0, []
        self.stages = [_biquad(kind, *rest, rate) for kind, *rest in STAGES]
        self.state = [np.zeros(2) for _ in STAGES]
        self.buf = None  # K-weighted samples from index ``at`` (the first block not yet measured)

    def add(self, samples: np.ndarray) -> None:
        from scipy.signal import lfilter

        x = np.array(samples, copy=True)
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError("loudness: samples must be floating point")
        for i, (b, a) in enumerate(self.stages):
            y, self.state[i] = lfilter(b, a, x, zi=self.state[i])
            x[:] = y
        self.buf = x if self.buf is None else np.concatenate([self.buf, x])
        self.n += x.shape[0]
        self._measure(self.n - self.SLACK)

    def _measure(self, upto: int) -> None:
        """Every block that ends by ``upto``; the samples before the next block's start let go."""
        while (bounds := _block(len(self.z), self.rate))[1] <= upto:
            self.z.append(_energy(self.buf[bounds[0] - self.at : bounds[1] - self.at], self.rate))
        drop = _block(len(self.z), self.rate)[0] - self.at
        if drop > 0:
            self.buf, self.at = self.buf[drop:].copy(), self.at + drop

    def loudness(self, n: int | None = None) -> float:
        """The clip's loudness, its length ``n`` (default: what was added; more: zeros added, fewer: cut, within
        :attr:`SLACK` samples, as ``np.pad`` / a slice of the whole clip would make it)."""
        n = self.n if n is None else int(n)
        if n > self.n:
            self.add(np.zeros(n - self.n, self.buf.dtype if self.buf is not None else np.float32))
        if not self.n - self.SLACK <= n <= self.n:
            raise ValueError(f"loudness: a length of {n} samples, {self.n} given (at most {self.SLACK} fewer)")
        x = (np.zeros(0, np.float32) if self.buf is None else self.buf)[: n - self.at]
        count = _num_blocks(n, self.rate)
        z = np.zeros(count)
        z[: min(count, len(self.z))] = self.z[:count]
        for j in range(len(self.z), count):
            lo, hi = _block(j, self.rate)
            z[j] = _energy(x[max(lo - self.at, 0) : max(hi - self.at, 0)], self.rate)
        return _gated(z)


def loudness_normalise(samples: np.ndarray, rate: int = 16000, target: float = TARGET_LUFS) -> np.ndarray:
    """Scale the clip to ``target`` LUFS; unchanged if it measures beyond +-100 LUFS or is under 400 ms.
    The gain is a float64 scalar, so float32 input comes back as float64 (as with numpy 2 in the official)."""
    if samples.shape[0] < BLOCK_S * rate:
        return samples
    lufs = integrated_loudness(samples, rate)
    if abs(lufs) > 100:
        return samples
    return np.power(10.0, (target - lufs) / 20.0) * samples
