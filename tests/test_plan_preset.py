"""``echomimic-train plan`` reads a config as ``fit`` does, so the plan describes the run ``fit`` would make.

Before: the planner had its own copy of fit's config loading, one fix behind. ``--set preset=NAME`` was applied after
the file's preset had been merged (the plan was of the file's preset, titled with the other name; a misspelt name was
planned too), ``--preset NAME`` beside another ``preset:`` in the file was ignored without a word, and fit's checks of
single settings were skipped: ``mixed_precision: bf61`` ended in a ``KeyError`` traceback and ``data.width: 500`` in
torch's "shape is invalid" after the networks were built, while ``optim.optimizer: adam``, ``checkpoint.every: 0``,
an ``optim.lr_schedule`` typo, LoRA settings without ``lora.enabled`` (a full fine-tune) and an empty file were
planned although ``fit`` refuses each. ``--all-presets`` beside a config file or ``--preset`` ignored them, and
``--set preset=`` on an EchoMimicV3 config was "keys of a V3 config and of a V1/V2 config (preset)".
"""
from __future__ import annotations

import pytest

from trainer.cli import main
from trainer.config import ConfigError
from trainer.config_file import load_config
from trainer.plan import load_plan_config

V3_RUN = "model:\n  path: models/v3-flash\ndata:\n  frames: 17\n  width: 64\n  height: 64\nlora:\n  rank: 8\n  alpha: 8\n"
FILES = ["model.sd_path=/models/sd15", "model.echomimic_path=/models/echomimic", "model.motion_path=/models/mm.pth"]


class Planned(Exception):
    pass


@pytest.fixture
def nothing_planned(monkeypatch):
    """Building the networks on the meta device and tracing a step is the expensive work the checks come before."""
    import trainer.plan.memory as memory
    import trainer.plan.v3 as v3

    def no(*a, **k):
        raise Planned("the planning work started")
    monkeypatch.setattr(memory, "plan_run", no)
    monkeypatch.setattr(v3, "plan_v3", no)


def _file(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _plan(args, capsys) -> tuple[int, str]:
    rc = main(["plan", *map(str, args), "--arch", "tiny"])
    return rc, capsys.readouterr().err


def test_set_preset_chooses_the_preset_the_plan_is_of(tmp_path):
    path = _file(tmp_path, "preset: v1_stage1\noptim:\n  batch_size: 2\n")
    chosen = load_plan_config(path, ["preset=v1_stage2"])
    assert chosen.preset == "v1_stage2" and [p.name for p in chosen.phases] == ["stage2"] and chosen.optim.batch_size == 2
    same = load_plan_config(_file(tmp_path, "preset: v1_stage2\noptim:\n  batch_size: 2\n", "same.yaml"))
    assert chosen.to_dict() == same.to_dict()
    # the run fit would make of the same command line (fit also checks that the model files are named)
    assert chosen.to_dict() == {**load_config(path, ["preset=v1_stage2", *FILES]).to_dict(), "model": chosen.to_dict()["model"]}


def test_preset_alone_is_recorded_as_fit_records_it():
    assert load_plan_config(preset="v1_stage2").preset == "v1_stage2"


def test_a_misspelt_set_preset_is_refused_before_any_planning(tmp_path, capsys, nothing_planned):
    rc, err = _plan([_file(tmp_path, "preset: v1_stage1\n"), "--set", "preset=v1_stagee2"], capsys)
    assert rc == 2 and "unknown 'v1_stagee2'" in err and "did you mean 'v1_stage2'" in err


def test_preset_beside_another_preset_in_the_file_is_refused(tmp_path, capsys, nothing_planned):
    rc, err = _plan([_file(tmp_path, "preset: v1_stage1\n"), "--preset", "v1_stage2"], capsys)
    assert rc == 2 and "--preset v1_stage2: the config file starts from another one (preset: v1_stage1)" in err
    assert "--set preset=v1_stage2" in err


def test_preset_where_the_file_has_none_is_used(tmp_path):
    cfg = load_plan_config(_file(tmp_path, "optim:\n  batch_size: 2\n"), preset="v1_stage2")
    assert cfg.preset == "v1_stage2" and [p.name for p in cfg.phases] == ["stage2"] and cfg.optim.batch_size == 2


@pytest.mark.parametrize("text, want", [
    ("preset: v1_stage1\nmixed_precision: bf61\n", "mixed_precision: 'bf61' is not one of no, bf16, fp16"),
    ("preset: v1_stage1\noptim:\n  optimizer: adam\n", "optim.optimizer: 'adam' is not one of adamw, adamw8bit"),
    ("preset: v1_stage1\ndata:\n  width: 500\n", "data.width/height must be multiples of 8"),
    ("preset: v1_stage1\ncheckpoint:\n  every: 0\n", "checkpoint.every: 0 must be at least 1"),
    ("preset: v1_stage1\noptim:\n  lr_schedule: cosinee\n", "did you mean 'cosine'?"),
    ("preset: v1_stage1\nlora:\n  rank: 8\n", "Add 'enabled: true' to the lora section"),
    ("", "the config file is empty"),
    ("preset: v1_stage1\noptim:\n  lrr: 1e-5\n", "optim.lrr: unknown key; did you mean 'lr'?"),
    ("preset: v1_stage1\noptim:\n  batch_size: two\n", "optim.batch_size: expected an integer, got 'two'"),
    ("preset: v1_stage1\noptim:\n lr: 1e-5\n  batch_size: 2\n", "not valid YAML at line 4"),
    ("preset: v1_stage1\ndata:\n  frames: 33\n", "a config is for one trainer"),
])
def test_a_config_fit_refuses_is_refused_with_the_key_before_any_planning(tmp_path, capsys, nothing_planned, text, want):
    rc, err = _plan([_file(tmp_path, text)], capsys)
    assert rc == 2 and want in err, err


@pytest.mark.parametrize("args, want", [
    (["--preset", "v1_stage1"], "--preset v1_stage1: presets are V1/V2 runs"),
    (["--set", "preset=v1_stage1"], "--set preset=v1_stage1: presets are V1/V2 runs"),
])
def test_a_preset_beside_a_v3_config_is_refused(tmp_path, capsys, nothing_planned, args, want):
    rc, err = _plan([_file(tmp_path, V3_RUN), *args], capsys)
    assert rc == 2 and want in err and "EchoMimicV3 LoRA config (it has data.frames, model.path)" in err, err


@pytest.mark.parametrize("args, want", [
    (["CONFIG"], "the config file"),
    (["--preset", "v1_stage2"], "--preset v1_stage2"),
    (["--set", "preset=v1_stage2"], "--set preset=v1_stage2"),
])
def test_all_presets_beside_what_it_would_ignore_is_refused(tmp_path, capsys, nothing_planned, args, want):
    path = _file(tmp_path, "preset: v1_stage1\n")
    rc, err = _plan(["--all-presets", *[path if a == "CONFIG" else a for a in args]], capsys)
    assert rc == 2 and "--all-presets plans every shipped preset" in err and want in err, err


def test_every_shipped_preset_passes_fits_checks_but_the_files():
    from trainer.presets import PRESETS

    for name in PRESETS:
        assert load_plan_config(preset=name).preset == name
        with pytest.raises(ConfigError, match="model.init"):  # fit: the model files must be named
            load_config(preset=name)


def test_set_on_a_preset_phase_the_file_does_not_restate_is_applied(tmp_path):
    """``--set phases.4.steps=5`` on a file that updates only the preset's phase 3b: the which-trainer check applied it
    to the file alone and refused it ("no phase named '4'"), for fit too; the loader applies it to the merged phases."""
    from trainer.plan.v3 import read_plan_mapping

    path = _file(tmp_path, "preset: v2_apdh\nphases:\n  - name: 3b\n    steps: 50\n")
    assert read_plan_mapping(path, ["phases.4.steps=5"])[0] == "v1v2"
    steps = {p.name: p.steps for p in load_plan_config(path, ["phases.4.steps=5"]).phases}
    assert steps["3b"] == 50 and steps["4"] == 5
    with pytest.raises(ConfigError, match="no phase named 'nine'"):
        load_plan_config(path, ["phases.nine.steps=5"])
    with pytest.raises(ConfigError, match="no phase named '4'"):  # a file without a preset: its own phases only
        read_plan_mapping(_file(tmp_path, "phases:\n  - name: 3b\n    steps: 50\n", "own.yaml"), ["phases.4.steps=5"])
