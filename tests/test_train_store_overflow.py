"""A prepared dataset's JSON with a number past any float (1e999 reads as inf): a clear error naming the file and the
fix, not an OverflowError traceback (trust audit 19 left this in trainer/data/store.py)."""
from __future__ import annotations

import json

import pytest

from trainer.config import ConfigError
from trainer.data.store import CLIP_META, ClipReader, DamagedClipError, read_manifest


@pytest.mark.parametrize("key", ["shard", "num_frames", "fps"])
def test_a_manifest_row_with_an_endless_number_names_the_line(tmp_path, key):
    row = {"id": "a", "path": "00/a", "shard": 0, "num_frames": 24, "fps": 24.0}
    line = json.dumps(row).replace(f'"{key}": {json.dumps(row[key])}', f'"{key}": 1e999')
    assert "1e999" in line
    (tmp_path / "manifest.jsonl").write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"manifest.jsonl line 1 is not a clip row"):
        read_manifest(tmp_path)


def test_a_clip_meta_with_an_endless_frame_count_is_a_damaged_clip(tmp_path):
    (tmp_path / CLIP_META).write_text('{"num_frames": 1e999}', encoding="utf-8")
    with pytest.raises(DamagedClipError, match=CLIP_META):
        ClipReader(tmp_path)
