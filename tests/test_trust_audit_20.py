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
