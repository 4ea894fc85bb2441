"""Trainer configuration: strict YAML, presets, overrides, phase schedule."""
from __future__ import annotations

import pytest

from trainer.config import ConfigError, TrainConfig, from_dict, load_config
from trainer.phases import phase_at, pose_dropout_at
from trainer.presets import PRESETS
from tests.test_trainer_helpers import write_yaml

BASE = ["model.init=random", "model.arch=tiny"]


def test_unknown_key_is_an_error_with_its_path_and_a_suggestion(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"preset": "v1_stage1", "optim": {"lrr": 1e-4}})
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key; did you mean 'lr'"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match=r"^bogus: unknown key"):
        from_dict(TrainConfig, {"bogus": 1})
    with pytest.raises(ConfigError, match=r"phases\[0\]\.stepz"):
        from_dict(TrainConfig, {"phases": [{"stepz": 3}]})


def test_types_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.batch_size: expected an integer"):
        from_dict(TrainConfig, {"optim": {"batch_size": "four"}})
    with pytest.raises(ConfigError, match=r"ema\.enabled: expected true/false"):
        from_dict(TrainConfig, {"ema": {"enabled": 1}})
    cfg = from_dict(TrainConfig, {"optim": {"lr": 1}})  # ints are accepted for floats
    assert isinstance(cfg.optim.lr, float)
    with pytest.raises(ConfigError, match="model.init: sd needs model.sd_path"):
        load_config(None, [], preset="v1_stage1")
    with pytest.raises(ConfigError, match="data.condition"):
        load_config(None, BASE + ["data.condition=pose"], preset="v1_stage1")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_reproduce_the_papers_numbers(name):
    cfg = load_config(None, BASE + (["model.motion_init=random"] if name != "v1_stage1" else []), preset=name)
    assert cfg.optim.lr == 1e-5
    if name.startswith("v1"):
        assert cfg.max_steps == 30000 and cfg.data.width == 512 and cfg.optim.batch_size == 4
        assert cfg.data.drop_reference == cfg.data.drop_audio == cfg.data.drop_condition == 0.05
        assert cfg.phases[0].frames == (1 if name == "v1_stage1" else 12)
    else:
        assert [p.name for p in cfg.phases] == ["1", "2", "3a", "3b", "3c", "3d", "4"]
        assert all(p.steps == 10000 for p in cfg.phases)
        assert [p.audio for p in cfg.phases] == ["muted", "muted", "lips", "head", "head", "global", "global"]
        assert cfg.phases[1].pose_dropout == [0.0, 0.2] and cfg.phases[-1].frames == 24
        # keypoint removal order: lips, then head, then body; hands kept
        assert [sorted(p.pose_parts) for p in cfg.phases[1:6]] == [["body", "hands", "head", "lips"], ["body", "hands", "head"],
                                                                   ["body", "hands"], ["body", "hands"], ["hands"]]
        assert cfg.loss.phd.enabled and cfg.loss.phd.pose_weight == cfg.loss.phd.detail_weight == cfg.loss.phd.low_weight == 0.1


def test_overrides_and_phase_merging(tmp_path):
    cfg = load_config(None, BASE + ["model.motion_init=random", "optim.lr=2e-4", "phases.3b.steps=7", "data.roots=[/a, /b]"], preset="v2_apdh")
    assert cfg.optim.lr == 2e-4 and cfg.data.roots == ["/a", "/b"]
    assert [p.steps for p in cfg.phases] == [10000, 10000, 10000, 7, 10000, 10000, 10000]
    write_yaml(tmp_path / "s.yaml", {"preset": "v1_stage2", "phases": [{"name": "stage2", "steps": 5}]})
    cfg = load_config(tmp_path / "s.yaml", BASE + ["model.motion_init=random"])
    assert cfg.phases[0].kind == "temporal" and cfg.phases[0].frames == 12 and cfg.phases[0].steps == 5  # merged by name
    with pytest.raises(ConfigError, match="no phase named"):
        load_config(None, BASE + ["phases.9z.steps=1"], preset="v1_stage1")


def test_phase_at_and_pose_dropout_ramp():
    cfg = load_config(None, BASE + ["model.motion_init=random"] + [f"phases.{n}.steps={s}" for n, s in
                                                                    zip(["1", "2", "3a", "3b", "3c", "3d", "4"], [2, 5, 1, 1, 1, 1, 1])],
                      preset="v2_apdh")
    names = [phase_at(cfg.phases, s).phase.name for s in range(cfg.max_steps + 1)]
    assert names == ["1", "1", "2", "2", "2", "2", "2", "3a", "3b", "3c", "3d", "4", "4"]
    ramp = [pose_dropout_at(phase_at(cfg.phases, s)) for s in range(2, 7)]
    assert ramp == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert pose_dropout_at(phase_at(cfg.phases, 0)) == 0.0


def test_trainer_never_imports_comfyui_or_nodes():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "trainer"
    bad = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("comfy", "comfy_api", "folder_paths", "server", "nodes")]
    assert not bad and len(list(root.rglob("*.py"))) > 10
