"""EchoMimicV3 LoRA training's guards between runs and processes: the validation wait of several processes has its own
timeout, and a V3 checkpoint is refused by the V1/V2 trainer before anything is read."""
from __future__ import annotations

import json

import pytest

from tests.test_v3_train import DATA, SIZE, _launch2, dataset, tiny_v3  # noqa: F401  (tiny_v3: a fixture)
from trainer.config import ConfigError


@pytest.mark.slow
def test_a_validation_longer_than_its_timeout_stops_the_waiting_rank_with_the_fix(tiny_v3, tmp_path):
    """2 CPU processes: rank 0 renders the validation clip alone while rank 1 waits on a barrier of its own, at most
    distributed.validation_timeout_s (not accelerate's barrier, which would wait into the collective timeout)."""
    import yaml

    d = dataset(tmp_path / "data", clips=2)
    c = {"output_dir": str(tmp_path / "run"), "model": {"path": str(tiny_v3)},
         "data": {"roots": [str(d)], "frames": 9, "width": SIZE, "height": SIZE}, "lora": {"rank": 4, "alpha": 4},
         "steps": 1, "checkpoint": {"every": 1}, "mixed_precision": "no",
         "validation": {"reference": str(DATA / "images" / "portrait_a.png"), "audio": str(DATA / "audio" / "echomimic_en.wav"),
                        "frames": 5, "steps": 2},
         "distributed": {"validation_timeout_s": 0.05, "timeout_s": 120}}
    path = tmp_path / "slowval.yaml"
    path.write_text(yaml.safe_dump(c))
    r = _launch2(path)
    assert r.returncode != 0
    assert "took longer than distributed.validation_timeout_s (0.05 s)" in r.stderr, r.stderr[-4000:]


def test_a_v3_checkpoint_given_to_the_v1_v2_fit_is_refused_with_the_command_to_use(tmp_path):
    """`echomimic-train fit --resume` of an EchoMimicV3 LoRA checkpoint stops before any data or network is read (the
    config's data and weights do not even exist here), naming v3-fit (v3-fit's own check is the mirror of this)."""
    import yaml

    from trainer.config_file import load_config
    from trainer.loop import fit

    ck = tmp_path / "v3run" / "checkpoints" / "step-00000002"
    ck.mkdir(parents=True)
    (ck / "meta.json").write_text(json.dumps({"family": "v3", "step": 2}))
    cfg = {"preset": "v1_stage1", "output_dir": str(tmp_path / "run"),
           "model": {"init": "echomimic", "echomimic_path": str(tmp_path / "nowhere"), "weights": "v1_pose"},
           "data": {"roots": [str(tmp_path / "nodata")], "width": 64, "height": 64, "num_workers": 0}}
    (tmp_path / "v1.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="an EchoMimicV3 LoRA checkpoint; resume it with `echomimic-train v3-fit --resume`"):
        fit(load_config(str(tmp_path / "v1.yaml"), []), resume=str(ck), lpips_fn=lambda a, b: a)
    assert not (tmp_path / "run").exists()
