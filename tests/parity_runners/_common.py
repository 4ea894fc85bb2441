"""Shared helpers for the parity runners: fixture paths, tensors, tolerances, comparisons."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[2]


DEFAULT_DIRS = ("parity", "parity_v3")  # under ../shared/fixtures: the V1/V2 set and the V3 set


def parity_dirs() -> list[Path]:
    """Every fixture folder the suite runs: ``ECHOMIMIC_PARITY_DIR`` (one folder, or several joined with
    ``os.pathsep``), else both default sets. Each folder has its own ``index.json``."""
    env = os.environ.get("ECHOMIMIC_PARITY_DIR")
    if env:
        return [Path(p).resolve() for p in env.split(os.pathsep) if p]
    return [(PROJECT_ROOT.parent / "shared" / "fixtures" / name).resolve() for name in DEFAULT_DIRS]


def parity_dir() -> Path:
    """The first fixture folder (the V1/V2 set by default), for tests that read its models directly."""
    return parity_dirs()[0]


@dataclass
class ParityCase:
    root: Path  # fixture directory (holds index.json)
    name: str
    kind: str
    dir: Path
    manifest: dict
    index: dict

    @property
    def models_dir(self) -> Path:
        return self.root / self.index.get("models_dir", "models")

    @property
    def settings(self) -> dict:
        return self.manifest.get("settings", {})

    def path(self, rel: str) -> Path:
        """A file named in the manifest: relative to the case dir, else to the fixture root."""
        p = self.dir / rel
        return p if p.exists() else self.root / rel

    def tensors(self, rel: str) -> dict:
        from safetensors.numpy import load_file

        return load_file(str(self.path(rel)))

    def torch_tensors(self, rel: str) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.path(rel)))

    def tolerance(self, key: str, default: float) -> float:
        tol = self.manifest.get("tolerance_suggestion", {})
        if isinstance(tol, (int, float)):
            return float(tol)
        if not isinstance(tol, dict):  # e.g. "exact match (uint8)"
            return default
        if key in tol and isinstance(tol[key], (int, float)):
            return float(tol[key])
        for pattern, value in tol.items():
            if isinstance(value, (int, float)) and pattern.endswith("*") and key.startswith(pattern[:-1]):
                return float(value)
        return default


def load_cases(root: Path) -> list[ParityCase]:
    index = json.loads((root / "index.json").read_text())
    cases = []
    for entry in index["cases"]:
        case_dir = root / entry["dir"]
        manifest = json.loads((root / entry["manifest"]).read_text())
        cases.append(ParityCase(root, entry["name"], entry["kind"], case_dir, manifest, index))
    return cases


def assert_close(name: str, got, expected, atol: float) -> float:
    """Max-abs comparison with a readable failure message. Returns the max abs difference."""
    got = np.asarray(_np(got), dtype=np.float64)
    expected = np.asarray(_np(expected), dtype=np.float64)
    assert got.shape == expected.shape, f"{name}: shape {got.shape} != expected {expected.shape}"
    if got.size == 0:
        return 0.0
    diff = np.abs(got - expected)
    worst = float(np.nanmax(diff)) if np.isfinite(diff).any() else float("inf")
    assert np.isfinite(got).all(), f"{name}: output has NaN/Inf"
    if worst > atol:
        idx = np.unravel_index(int(np.nanargmax(diff)), diff.shape)
        raise AssertionError(
            f"{name}: max abs diff {worst:.3g} > tolerance {atol:.3g} at {idx} "
            f"(got {got[idx]:.6g}, expected {expected[idx]:.6g}; {int((diff > atol).sum())} of {diff.size} values out)"
        )
    return worst


def assert_equal(name: str, got, expected) -> None:
    got = np.asarray(_np(got))
    expected = np.asarray(_np(expected))
    assert got.shape == expected.shape, f"{name}: shape {got.shape} != expected {expected.shape}"
    if not np.array_equal(got, expected):
        n = int((got != expected).sum())
        raise AssertionError(f"{name}: {n} of {got.size} values differ (exact comparison)")


def _np(x):
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().double().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return x
