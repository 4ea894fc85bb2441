"""A curation measure that comes out NaN or infinite (a score with nothing to measure) no longer stops ``prepare``: the
status files are written by the strict JSON writer (``io.json_meta``: NaN refused), so such a measure is kept as null."""
from __future__ import annotations

import json
import math
import shutil

from tests.test_trainer_helpers import DATA


def test_a_nan_curation_measure_is_written_as_null_and_prepare_goes_on(tmp_path, monkeypatch):
    from trainer.data import prepare as prep
    from trainer.data.clean import PrepareConfig

    inp, out = tmp_path / "videos", tmp_path / "ds"
    inp.mkdir()
    shutil.copy(DATA / "video" / "driving_a.mp4", inp / "talk.mp4")
    shutil.copy(DATA / "audio" / "echomimic_en.wav", inp / "talk.wav")
    real = prep.prepare_full

    def measured(*args, **kw):
        st = real(*args, **kw)
        st.curation.update(camera_motion=float("nan"), sync_confidence=float("inf"), sync_offset=2)
        return st

    monkeypatch.setattr(prep, "prepare_full", measured)
    summary = prep.prepare_dataset(inp, out, PrepareConfig(kind="full", size=64, min_seconds=0.5, max_seconds=1.0), None,
                                   progress=False)
    assert summary["kept"] == 1
    status = json.loads((out / "status" / "talk.json").read_text())
    assert status["curation"] == {"camera_motion": None, "sync_confidence": None, "sync_offset": 2}
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in status["curation"].values())
