"""Trust audit 20 (5782765..3437d27): each test failed before its fix."""
from __future__ import annotations

import json

import pytest

from tests.test_trust import _fake_checkpoint


@pytest.mark.parametrize("saved", [{"rank": 2, "alpha": None}, {"rank": 2, "alpha": "x"}, 5, ["rank"], True],
                         ids=["alpha-null", "alpha-text", "a-number", "a-list", "true"])
def test_resume_with_a_damaged_lora_record_in_meta_json_is_a_clear_error(saved, tmp_path, capsys, monkeypatch):
    """`fit --resume` compares the config with the checkpoint's meta.json (trainer/resume_match.py): a damaged or edited
    record (`"lora": {"alpha": null}`, `"lora": 5`, a list) ended in a TypeError / ValueError traceback, where every
    other damage of meta.json is a ConfigError naming the file and the fix."""
    import trainer.data.dataset as dataset
    import trainer.init as init
    from trainer.cli import main

    def no(*a, **k):
        raise AssertionError("the expensive work started")
    monkeypatch.setattr(init, "build", no)
    monkeypatch.setattr(dataset, "build_pools", no)
    ckpt = _fake_checkpoint(tmp_path, True)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["lora"] = saved
    (ckpt / "meta.json").write_text(json.dumps(meta))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output_dir: {ckpt.parent.parent}\npreset: v1_lora_identity\nlora: {{rank: 2, alpha: 2, targets: [q]}}\n"
                   f"model: {{init: echomimic, echomimic_path: {tmp_path}}}\ndata: {{roots: [{tmp_path}], num_workers: 0}}\n")
    rc = main(["fit", "--config", str(cfg), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert "meta.json" in err and "lora" in err, err


def test_a_manifest_row_with_fps_0_is_named_not_a_zero_division(tmp_path):
    """A shared dataset's manifest.jsonl row with `"fps": 0` (finite, so the 1e999 check let it through) and fewer
    frames than a temporal phase's window: the new window-length check divided by its fps for the advice and the run
    ended in a bare ZeroDivisionError before anything was built."""
    from trainer.config import ConfigError
    from trainer.config_file import load_config
    from trainer.data.dataset import check_window_lengths
    from trainer.data.store import read_manifest

    (tmp_path / "shard-00000" / "c1").mkdir(parents=True)
    for fps in (0, -25):
        row = {"id": "c1", "path": "shard-00000/c1", "shard": 0, "num_frames": 3, "fps": fps}
        (tmp_path / "manifest.jsonl").write_text(json.dumps(row) + "\n")
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"preset: v1_stage2\noutput_dir: {tmp_path}/run\ndata: {{roots: [{tmp_path}]}}\n"
                       f"model: {{init: echomimic, echomimic_path: {tmp_path}, motion_init: random}}\n")
        with pytest.raises(ConfigError, match="line 1 is not a clip row"):
            check_window_lengths(load_config(cfg), read_manifest(tmp_path))
