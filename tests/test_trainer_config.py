"""Trainer configuration: strict YAML, presets, overrides, phase schedule."""
from __future__ import annotations

import pytest

from trainer.config import ConfigError, TrainConfig
from trainer.config_file import from_dict, load_config
from trainer.phases import phase_at, pose_dropout_at
from trainer.presets import PAPER_PRESETS, PRESETS
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
    with pytest.raises(ConfigError, match="motion_init: released needs model.motion_path"):
        load_config(None, BASE, preset="v2_apdh")
    with pytest.raises(ConfigError, match=r"phases\.1\.data must be one of"):
        load_config(None, BASE + ["model.motion_path=/mm.pth", "phases.1.data=halfbody+humanvid"], preset="v2_apdh")
    with pytest.raises(ConfigError, match="drop_all must be a probability"):
        load_config(None, BASE + ["data.drop_all=1.5"], preset="v1_stage1")


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))  # the LoRA presets: tests/test_lora.py
def test_presets_validate_and_reproduce_the_papers_numbers(name):
    raw = PRESETS[name]
    over = ["model.motion_init=random"] if name == "v1_stage2" else ["model.motion_path=/mm.pth"] if name == "v2_apdh" else []
    cfg = load_config(None, BASE + over, preset=name)
    assert cfg.optim.lr == 1e-5 and cfg.optim.batch_size == 4  # batch 4 per GPU in every stage of both papers
    assert cfg.data.drop_reference == cfg.data.drop_audio == cfg.data.drop_condition == 0.05
    assert cfg.data.drop_all == 0.05  # CFG's unconditional branch is trained jointly, not 0.05 ** 3 of the time
    assert cfg.data.audio_aug.max_shift_ms <= 10.0  # no one-frame (40 ms) lip offset taught as "in sync"
    if name.startswith("v1"):
        assert cfg.max_steps == 30000 and cfg.data.width == 512
        assert cfg.phases[0].frames == (1 if name == "v1_stage1" else 12)
    else:
        assert [p.name for p in cfg.phases] == ["1", "2", "3a", "3b", "3c", "3d", "4"]
        assert [p.steps for p in cfg.phases] == [10000] * 6 + [30000]  # temporal stage: 30,000 steps
        assert raw["model"]["motion_init"] == "released" and raw["model"]["init"] == "sd"  # temporal weights from EchoMimic
        assert cfg.loss.phd.pose_form == "encoder"  # S1 on the pose encoder's features of x0 and the target
        assert [p.data for p in cfg.phases][:3] == ["halfbody+pose", "halfbody+pose", "halfbody"]  # pose-driven clips in the pose phases
        assert [p.audio for p in cfg.phases] == ["muted", "muted", "lips", "head", "head", "global", "global"]
        assert cfg.phases[1].pose_dropout == [0.0, 0.2] and cfg.phases[-1].frames == 24
        # keypoint removal order: lips, then head, then body; hands kept
        assert [sorted(p.pose_parts) for p in cfg.phases[1:6]] == [["body", "hands", "head", "lips"], ["body", "hands", "head"],
                                                                   ["body", "hands"], ["body", "hands"], ["hands"]]
        assert cfg.loss.phd.enabled and cfg.loss.phd.pose_weight == cfg.loss.phd.detail_weight == cfg.loss.phd.low_weight == 0.1


def test_overrides_and_phase_merging(tmp_path):
    cfg = load_config(None, BASE + ["model.motion_init=random", "optim.lr=2e-4", "phases.3b.steps=7", "data.roots=[/a, /b]"], preset="v2_apdh")
    assert cfg.optim.lr == 2e-4 and cfg.data.roots == ["/a", "/b"]
    assert [p.steps for p in cfg.phases] == [10000, 10000, 10000, 7, 10000, 10000, 30000]
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


def test_phase_table_shows_only_the_conditions_the_run_uses():
    from trainer.phases import describe

    v1 = load_config(None, BASE + ["model.motion_init=random"], preset="v1_stage2")
    text = describe(v1.phases, v1.data.condition)
    assert "steps       1-30000" in text  # 1-based, as the log rows, checkpoints and the progress bar
    assert not any(w in text for w in ("pose ", "dropout", "data ", "audio ")), text  # V1, global audio only
    v2 = load_config(None, BASE + ["model.motion_path=/mm.pth"], preset="v2_apdh")
    rows = describe(v2.phases, v2.data.condition).splitlines()
    assert len(rows) == 7 and "steps       1-10000" in rows[0] and "steps   60001-90000" in rows[-1]
    assert all(w in rows[0] for w in ("pose body+head+lips+hands", "dropout 0.00->0.00", "audio muted", "data halfbody+pose"))


def test_lora_settings_without_the_switch_are_refused_with_the_fix(tmp_path):
    """A lora: section without enabled: true used to run a full fine-tune silently (6.7 GB checkpoints)."""
    path = write_yaml(tmp_path / "a.yaml", {"preset": "v1_stage1", "model": {"init": "random", "arch": "tiny"},
                                            "lora": {"rank": 8, "alpha": 8.0}})
    with pytest.raises(ConfigError, match=r"lora: settings given \(alpha, rank\) but not lora.enabled.*enabled: true"):
        load_config(path)
    with pytest.raises(ConfigError, match="lora.enabled"):
        load_config(None, BASE + ["lora.rank=4"], preset="v1_stage1")
    path = write_yaml(tmp_path / "b.yaml", {"preset": "v1_stage1", "model": {"init": "random", "arch": "tiny"},
                                            "lora": {"enabled": False, "rank": 8}})
    assert load_config(path).lora.enabled is False  # a full fine-tune on purpose
    assert load_config(None, BASE, preset="v1_stage1").lora.enabled is False  # no lora section: as before


def test_the_reference_frame_is_drawn_away_from_the_targets_by_default():
    import types

    import numpy as np

    from trainer.data.dataset import EchoDataset

    cfg = load_config(None, BASE, preset="v1_stage1")
    assert cfg.data.ref_min_gap == 8
    ds = types.SimpleNamespace(cfg=cfg)
    rng = np.random.default_rng(0)
    idx = np.arange(20, 32)  # a 12-frame window
    picks = {EchoDataset._reference_index(ds, rng, 60, idx) for _ in range(300)}
    assert picks and all(p <= 20 - 8 or p >= 31 + 8 for p in picks)  # never inside the window or next to it
    assert min(picks) == 0 and max(picks) == 59  # anywhere else
    short = {EchoDataset._reference_index(ds, rng, 16, np.arange(2, 14)) for _ in range(50)}
    assert short == {0, 15}  # too short for the gap: the farthest frames (2 from the window), never a target
    ds.cfg.data.ref_min_gap = 0
    assert {EchoDataset._reference_index(ds, rng, 16, np.arange(2, 14)) for _ in range(300)} == set(range(16))


def test_the_run_config_keeps_a_users_own_config_yaml_in_the_run_folder(tmp_path, caplog):
    """A config.yaml of the user's in output_dir (e.g. given as --config) is kept as config.user.yaml before the run writes
    its resolved config there; the run's own file (its header), or one that reads as the same config, is just rewritten."""
    import yaml

    from trainer.config_file import RUN_CONFIG_HEADER, load_config, write_run_config

    mine = "# my notes on this run\npreset: v1_stage1\nmodel: {init: random, arch: tiny}\n"
    path = tmp_path / "config.yaml"
    path.write_text(mine)
    resolved = load_config(path).to_dict()
    write_run_config(resolved, path)
    assert (tmp_path / "config.user.yaml").read_text() == mine and "kept as config.user.yaml" in caplog.text
    assert path.read_text().startswith(RUN_CONFIG_HEADER) and yaml.safe_load(path.read_text()) == resolved
    assert load_config(path).to_dict() == resolved  # export and --resume read it back
    write_run_config({**resolved, "seed": 7}, path)  # ours (the header): rewritten, nothing more kept
    path.write_text(yaml.safe_dump(resolved, sort_keys=False))  # an older run's file: no header, the same config
    write_run_config(resolved, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.user.yaml", "config.yaml"]
    path.write_text(mine)
    write_run_config(resolved, path)
    assert (tmp_path / "config.user-1.yaml").read_text() == mine
