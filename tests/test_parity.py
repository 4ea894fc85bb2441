"""Parity with the reference implementation, case by case, from ECHOMIMIC_PARITY_DIR.

Every case listed in the fixture directory's index.json becomes one test whose id holds its kind
and name (``-k pipeline`` selects the pipeline cases). A case whose kind has no runner, or whose
files are missing, fails: parity never skips.
"""
from __future__ import annotations

import importlib

import pytest

from tests.parity_runners._common import load_cases, parity_dir

pytestmark = pytest.mark.parity


def _collect():
    root = parity_dir()
    if not (root / "index.json").is_file():
        return [pytest.param(None, id=f"missing-fixtures:{root}")]
    return [pytest.param(case, id=f"{case.kind}:{case.name}") for case in load_cases(root)]


@pytest.mark.parametrize("case", _collect())
def test_parity(case):
    if case is None:
        pytest.fail(f"No parity fixtures at {parity_dir()} (set ECHOMIMIC_PARITY_DIR to a directory with index.json).")
    try:
        runner = importlib.import_module(f"tests.parity_runners.{case.kind}")
    except ModuleNotFoundError as exc:
        if exc.name == f"tests.parity_runners.{case.kind}":
            pytest.fail(f"case {case.name}: no runner for fixture kind '{case.kind}'")
        raise
    runner.run(case)
