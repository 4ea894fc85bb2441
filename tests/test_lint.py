"""The tree is pyflakes-clean (``ruff check`` with the rules in pyproject.toml): an undefined name or a leftover
import fails here, not in a user's run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyflakes_finds_nothing():
    try:
        import ruff  # noqa: F401  (the dev extra)
    except ImportError as exc:
        raise AssertionError("ruff is missing: install the dev extra (pip install -e '.[dev]')") from exc
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(ROOT)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
