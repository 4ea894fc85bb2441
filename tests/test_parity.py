"""Parity with the reference implementation, case by case, from every fixture folder.

The folders: ``ECHOMIMIC_PARITY_DIR`` (one, or several joined with ``os.pathsep``; a V3-only folder
works too), else ``../shared/fixtures/parity`` (V1/V2) and ``../shared/fixtures/parity_v3`` (V3).
Every case listed in a folder's index.json becomes one test whose id holds its kind and name
(``-k pipeline`` selects the pipeline cases; ``-k v3_`` the V3 ones), dispatched on its ``kind`` to
``tests/parity_runners/<kind>.py``. A folder without index.json, a case whose kind has no runner, or
whose files are missing, fails: parity never skips.
"""
from __future__ import annotations

import importlib
import os

import pytest

from tests.parity_runners._common import load_cases, parity_dirs

pytestmark = pytest.mark.parity


def _collect():
    roots = parity_dirs()
    params = []
    for root in roots:
        tag = f"@{root.name}" if len(roots) > 1 else ""
        if not (root / "index.json").is_file():
            params.append(pytest.param(root, id=f"missing-fixtures:{root}"))
            continue
        params += [pytest.param(case, id=f"{case.kind}:{case.name}{tag}") for case in load_cases(root)]
    return params


@pytest.mark.parametrize("case", _collect())
def test_parity(case):
    if not hasattr(case, "kind"):
        pytest.fail(f"No parity fixtures at {case} (no index.json; set ECHOMIMIC_PARITY_DIR to folders with one, "
                    f"joined with {os.pathsep!r}).")
    try:
        runner = importlib.import_module(f"tests.parity_runners.{case.kind}")
    except ModuleNotFoundError as exc:
        if exc.name == f"tests.parity_runners.{case.kind}":
            pytest.fail(f"case {case.name}: no runner for fixture kind '{case.kind}'")
        raise
    runner.run(case)
