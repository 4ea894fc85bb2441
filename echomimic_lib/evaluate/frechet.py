"""The Fréchet distance between two Gaussians fitted to feature sets (FID, FVD), in float64:

``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2)``, with ``tr((S1 S2)^1/2)`` taken as the sum of the square roots
of the eigenvalues of the symmetric ``S1^1/2 S2 S1^1/2`` (same eigenvalues as ``S1 S2``), so there is no complex
``sqrtm`` to clean up and a rank-deficient covariance (fewer samples than features) is fine: negative eigenvalues
from rounding are set to zero.
"""
from __future__ import annotations

import numpy as np

from ..errors import EchoMimicError


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance with N - 1) of (N, D) features, float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise EchoMimicError(f"a Fréchet distance needs at least 2 feature vectors per set; got shape {f.shape}.")
    if not np.isfinite(f).all():
        raise EchoMimicError("the features contain NaN or Inf (broken weights or input).")
    return f.mean(axis=0), np.cov(f, rowvar=False)


REL_TOL = 1e-12


def _clean(w: np.ndarray) -> np.ndarray:
    top = float(w.max()) if w.size else 0.0
    return np.where(w > REL_TOL * max(top, 0.0), w, 0.0)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(_clean(w))) @ v.T


def frechet_distance(mu1, s1, mu2, s2) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise EchoMimicError(f"feature sets of different sizes: {mu1.shape} vs {mu2.shape}.")
    a = _sqrt_psd(s1)
    m = a @ s2 @ a
    tr_sqrt = float(np.sqrt(_clean(np.linalg.eigvalsh((m + m.T) / 2))).sum())
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
    return max(d, 0.0)


def frechet_between(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance of the Gaussians of two (N, D) feature sets."""
    if np.asarray(features_a).shape[1:] != np.asarray(features_b).shape[1:]:
        raise EchoMimicError(f"feature sets of different sizes: {np.shape(features_a)} vs {np.shape(features_b)}.")
    (mu1, s1), (mu2, s2) = gaussian(features_a), gaussian(features_b)
    n1, n2, dim = len(features_a), len(features_b), len(mu1)
    if min(n1, n2) >= dim:
        return frechet_distance(mu1, s1, mu2, s2)
    a = np.asarray(features_a, np.float64) - mu1
    b = np.asarray(features_b, np.float64) - mu2
    sv = np.linalg.svd(a @ b.T, compute_uv=False) / np.sqrt((n1 - 1) * (n2 - 1))
    tr_sqrt = float(sv[sv > np.sqrt(REL_TOL) * max(float(sv.max()), 0.0)].sum()) if sv.size else 0.0
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
    return max(d, 0.0)
