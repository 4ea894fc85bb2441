"""The parity suite's folder list: both default sets, or the folders ECHOMIMIC_PARITY_DIR names."""
from __future__ import annotations

import os
from pathlib import Path

from tests.parity_runners import _common


def test_default_runs_v1v2_and_v3_sets(monkeypatch):
    monkeypatch.delenv("ECHOMIMIC_PARITY_DIR", raising=False)
    dirs = _common.parity_dirs()
    assert [d.name for d in dirs] == ["parity", "parity_v3"]
    assert _common.parity_dir() == dirs[0]


def test_env_names_one_or_several_folders(monkeypatch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("ECHOMIMIC_PARITY_DIR", str(b))
    assert _common.parity_dirs() == [b.resolve()]
    monkeypatch.setenv("ECHOMIMIC_PARITY_DIR", os.pathsep.join([str(a), str(b)]))
    assert _common.parity_dirs() == [a.resolve(), b.resolve()]


def test_v3_index_cases_load_with_kinds():
    root = Path(_common.PROJECT_ROOT.parent / "shared" / "fixtures" / "parity_v3")
    cases = _common.load_cases(root)
    kinds = {c.kind for c in cases}
    assert {"v3_transformer_forward", "v3_audio_features", "v3_scheduler", "v3_pipeline"} <= kinds
    for kind in kinds:  # every kind has a runner module
        assert (Path(__file__).parent / "parity_runners" / f"{kind}.py").is_file(), kind
