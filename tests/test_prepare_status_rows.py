"""``echomimic-train prepare`` merges ``status/<clip>.json`` into manifest.jsonl and report.jsonl (finalize). A status
file that is JSON but not a status row (hand-edited, cut short by a copy, written by another tool) gave a KeyError or
TypeError traceback, and JSON nested too deeply a RecursionError: each is now a ConfigError naming the file and the
fix, and the manifest written before is kept."""
import json

import pytest

from trainer.config import ConfigError
from trainer.data.prepare import finalize

GOOD = {"clip": "a_000", "status": "ok", "reason": "", "seconds": 2.5, "num_frames": 60}


@pytest.mark.parametrize("text", [
    json.dumps({"clip": "b_000"}),                                   # no status
    json.dumps([1, 2]),                                              # not an object
    json.dumps({**GOOD, "seconds": "long"}),                          # seconds not a number
    json.dumps({**GOOD, "status": "dropped", "reason": ["x"]}),       # a reason that cannot be counted
    "[" * 100000 + "]" * 100000,                                     # nested too deeply
], ids=["no-status", "a-list", "seconds-text", "reason-list", "deep"])
def test_a_status_file_that_is_no_status_row_is_named(tmp_path, text):
    status = tmp_path / "status"
    status.mkdir()
    (status / "a_000.json").write_text(json.dumps(GOOD))
    (status / "b_000.json").write_text(text)
    (tmp_path / "manifest.jsonl").write_text("before\n")
    with pytest.raises(ConfigError) as err:
        finalize(tmp_path)
    assert "b_000.json" in str(err.value) and "delete it and run the same prepare command again" in str(err.value)
    assert (tmp_path / "manifest.jsonl").read_text() == "before\n"


def test_good_status_rows_are_merged(tmp_path):
    status = tmp_path / "status"
    status.mkdir()
    (status / "a_000.json").write_text(json.dumps(GOOD))
    (status / "b_000.json").write_text(json.dumps({**GOOD, "clip": "b_000", "status": "dropped", "reason": "no_face"}))
    summary = finalize(tmp_path)
    assert summary["kept"] == 1 and summary["dropped"] == {"no_face": 1} and summary["kept_seconds"] == 2.5
    assert [json.loads(line)["clip"] for line in (tmp_path / "manifest.jsonl").read_text().splitlines()] == ["a_000"]
