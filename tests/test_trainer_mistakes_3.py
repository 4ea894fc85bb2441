"""A new user's mistakes with ``echomimic-train`` (third hunt): each is refused with a message that names the problem and
the fix, before anything is built, read or written. Before: an empty config, a folder as --config or no --config at all
said ``model.init: sd needs model.sd_path``; a V3 LoRA config given to ``fit`` was refused about its ``lora`` switch and
a V1/V2 config given to ``v3-fit`` about ``preset``; phases of 0 steps loaded every network and ended "finished at step
0"; ``prepare`` of a folder without videos loaded its models and wrote an empty dataset folder; ``prepare`` into a
dataset prepared with other settings (``--kind``, ``--size``) skipped its clips as done and mixed new ones in, its
prepare_config.json rewritten; ``v3-export RUN lora.pt`` (or ``export RUN model.safetensors``) wrote a *folder* of that
name, and an export to a file failed with ``File exists`` after the weights were read."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.test_trust import _fake_checkpoint
from tests.test_trust_audit3_train import _fresh_state, _tree, _v3  # noqa: F401 - _fresh_state: autouse fixture


def _train(args, capsys):
    from trainer.cli import main

    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


def _v1_yaml(tmp_path: Path, run: Path) -> str:
    return (f"preset: v1_stage1\noutput_dir: {run}\nmodel: {{init: echomimic, echomimic_path: {tmp_path}, weights: v1_pose}}\n"
            "loss: {spatial: {lpips: 0}}\n")


@pytest.mark.parametrize("case,words", [
    ("empty-file", ["c.yaml: the config file is empty", "docs/training.md section 0"]),
    ("a-folder", ["--config", "a folder; give the run's YAML file"]),
    ("no-config", ["fit needs --config RUN.yaml", "echomimic-train presets"]),
    ("v3-config-to-fit", ["an EchoMimicV3 LoRA config", "echomimic-train v3-fit --config"]),
    ("v1-config-to-v3-fit", ["a V1/V2 config", "echomimic-train fit --config", "preset"]),
    ("empty-file-to-v3-fit", ["the config file is empty", "docs/training.md section 11"]),
    ("preset-without-a-model", ["model.init: sd needs model.sd_path (the Stable Diffusion 1.5 folder)",
                                "model.init: echomimic with model.echomimic_path"]),
])
def test_a_config_that_is_not_this_trainers_is_named_before_anything_is_built(case, words, tmp_path, capsys):
    run, cfg = tmp_path / "run", tmp_path / "c.yaml"
    command, args = "fit", ["--config", cfg]
    if case in ("empty-file", "empty-file-to-v3-fit"):
        cfg.write_text("# my run\n")
        command = "v3-fit" if case == "empty-file-to-v3-fit" else "fit"
    elif case == "a-folder":
        args = ["--config", tmp_path]
    elif case == "no-config":
        args = []
    elif case == "v3-config-to-fit":
        cfg.write_text(f"output_dir: {run}\nmodel: {{path: {tmp_path}}}\ndata: {{roots: [{tmp_path}], frames: 9}}\nsteps: 4\n")
    elif case == "v1-config-to-v3-fit":
        cfg.write_text(_v1_yaml(tmp_path, run))
        command = "v3-fit"
    elif case == "preset-without-a-model":
        args = ["--preset", "v1_stage1", "--set", f"output_dir={run}"]
    rc, err = _train([command, *args], capsys)
    assert rc == 2 and all(w in err for w in words), err
    assert not run.exists()


def test_phases_of_zero_steps_are_refused_before_anything_is_built(tmp_path, capsys):
    run, cfg = tmp_path / "run", tmp_path / "c.yaml"
    cfg.write_text(_v1_yaml(tmp_path, run) + "phases: [{name: stage1, steps: 0}]\n")
    rc, err = _train(["fit", "--config", cfg], capsys)
    assert rc == 2 and "every phase has steps: 0 (stage1), so nothing would be trained" in err, err
    assert "--set phases.stage1.steps=100" in err
    assert not run.exists()
    from trainer.config_file import load_config  # a phase of 0 steps beside others is still a way to skip it

    two = tmp_path / "two.yaml"
    two.write_text(_v1_yaml(tmp_path, run) + "phases: [{name: stage1, steps: 0}, {name: more, steps: 3}]\n")
    assert load_config(two).max_steps == 3


@pytest.fixture
def no_models(monkeypatch):
    import trainer.data.prepare as prep

    def no(*a, **k):
        raise AssertionError("models were loaded before the input was checked")
    monkeypatch.setattr(prep, "preflight", no)


@pytest.mark.parametrize("case,words", [
    ("empty", ["no videos found under", "it is empty", "give the folder that holds your videos"]),
    ("no-videos", ["no videos found under", "it holds notes.txt, portrait.png, none a video"]),
])
def test_prepare_without_videos_loads_no_model_and_writes_nothing(case, words, tmp_path, no_models, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    if case == "no-videos":
        (videos / "notes.txt").write_text("my clips are elsewhere")
        (videos / "portrait.png").write_bytes(b"\x89PNG")
    rc, err = _train(["prepare", videos, tmp_path / "ds", "-q"], capsys)
    assert rc == 2 and all(w in err for w in words), err
    assert not (tmp_path / "ds").exists()


def _prepared(folder: Path, **settings) -> Path:
    from trainer.data.clean import PrepareConfig

    (folder / "status").mkdir(parents=True)
    (folder / "status" / "talk.json").write_text('{"id": "talk", "status": "ok"}')
    (folder / "prepare_config.json").write_text(json.dumps(asdict(PrepareConfig(**settings)), indent=1))
    return folder


@pytest.mark.parametrize("args,words", [
    (["--size", "64"], ["was prepared with --kind full, --fps 25.0", "this run asks for --kind headshot, --fps 24.0"]),
    (["--kind", "full", "--size", "128"], ["--size 64", "this run asks for --size 128"]),
    (["--kind", "full", "--size", "64", "--max-seconds", "2"], ["--max-seconds (not given)", "--max-seconds 2.0"]),
])
def test_prepare_into_a_dataset_of_other_settings_is_refused_and_changes_nothing(args, words, tmp_path, no_models, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "talk.mp4").write_bytes(b"a video")
    ds = _prepared(tmp_path / "ds", kind="full", size=64)
    before = {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()}
    rc, err = _train(["prepare", videos, ds, *args], capsys)
    assert rc == 2 and all(w in err for w in words), err
    assert "Prepare into a new folder, or give the dataset's own settings" in err
    assert {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()} == before


def test_prepare_with_the_datasets_own_settings_goes_on(tmp_path):
    from trainer.data.clean import PrepareConfig
    from trainer.data.prepare_settings import check_same_settings

    ds = _prepared(tmp_path / "ds", kind="full", size=64)
    check_same_settings(ds, PrepareConfig(kind="full", size=64))
    old = _prepared(tmp_path / "old", size=64)  # an older dataset's config without some fields: those are not compared
    conf = json.loads((old / "prepare_config.json").read_text())
    (old / "prepare_config.json").write_text(json.dumps({k: v for k, v in conf.items() if k != "jpeg_quality"}))
    check_same_settings(old, PrepareConfig(size=64, jpeg_quality=80))


@pytest.fixture
def no_weights(monkeypatch):
    import safetensors.torch

    import trainer.export as ex

    def no(*a, **k):
        raise AssertionError("weights were read before DEST was checked")
    monkeypatch.setattr(ex, "load_checkpoint_weights", no)
    monkeypatch.setattr(safetensors.torch, "load_file", no)


@pytest.mark.parametrize("command,lora,dest,words", [
    ("export", False, "afile", ["afile is a file, not a folder", "give a new or existing folder"]),
    ("export", False, "afile/sub", ["afile is a file, not a folder"]),
    ("export", False, "model.safetensors", ["a folder of files", "not one .safetensors file", "give a folder, e.g."]),
    ("export", True, "lora.pt", ["a LoRA is written as one .safetensors file", "name it", "lora.safetensors"]),
    ("export", True, "afile", ["afile is a file, not a folder", "name the LoRA file NAME.safetensors"]),
    ("v3-export", True, "lora.pt", ["a LoRA is written as one .safetensors file", "lora.safetensors"]),
    ("v3-export", True, "afile", ["afile is a file, not a folder"]),
    ("v3-export", True, "afile/sub", ["afile is a file, not a folder"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_an_export_to_a_file_where_a_folder_is_meant_is_refused_before_anything_is_read(command, lora, dest, words,
                                                                                      tmp_path, no_weights, capsys):
    ckpt = _fake_checkpoint(tmp_path, lora)
    if command == "v3-export":
        _v3(ckpt)
    (tmp_path / "afile").write_text("my notes")
    before = _tree(tmp_path)
    rc, err = _train([command, ckpt, tmp_path / dest, "--no-verify"], capsys)
    assert rc == 2 and all(w in err for w in words), err
    assert _tree(tmp_path) == before  # no folder named lora.pt / model.safetensors
    assert (tmp_path / "afile").read_text() == "my notes"


def test_a_lora_named_in_capitals_is_written_as_that_file(tmp_path, capsys):
    ckpt = _v3(_fake_checkpoint(tmp_path, True))
    rc, err = _train(["v3-export", ckpt, tmp_path / "Anna.SAFETENSORS", "--no-verify"], capsys)
    assert rc == 0, err
    assert (tmp_path / "Anna.SAFETENSORS").is_file()  # before: a folder Anna.SAFETENSORS/ with run-step2.safetensors


@pytest.mark.parametrize("line,words", [
    ("data: {roots: DATA}", ["data.roots: expected a list, got str; a list of one is written [", "]"]),
    ("phases: [{name: stage1, steps: 1e3}]", ["phases[0].steps: expected an integer, got '1e3'", "whole number: 1000"]),
    ("optim: {batch_size: 2.0}", ["optim.batch_size: expected an integer, got 2.0", "whole number: 2"]),
])
def test_a_value_of_the_wrong_shape_says_how_to_write_it(line, words, tmp_path, capsys):
    run, cfg = tmp_path / "run", tmp_path / "c.yaml"
    cfg.write_text(_v1_yaml(tmp_path, run) + line.replace("DATA", str(tmp_path)) + "\n")
    rc, err = _train(["fit", "--config", cfg], capsys)
    assert rc == 2 and all(w in err for w in words), err
    assert not run.exists()


@pytest.mark.parametrize("command", ["fit", "v3-fit"])
@pytest.mark.parametrize("case,words", [
    ("a-file", ["is a file, not a folder; give a folder for the run"]),
    ("under-a-file", ["is a file, not a folder"]),
    ("a-dataset", ["is a prepared dataset", "give a folder of its own", "keep the dataset in data.roots"]),
])
def test_an_output_dir_that_is_a_file_or_a_dataset_is_refused_and_left_as_it_is(command, case, words, tmp_path, capsys):
    (tmp_path / "afile").write_text("my notes")
    ds = _prepared(tmp_path / "ds", size=64)
    (ds / "manifest.jsonl").write_text("")
    out = {"a-file": tmp_path / "afile", "under-a-file": tmp_path / "afile" / "run", "a-dataset": ds}[case]
    cfg = tmp_path / "c.yaml"
    if command == "fit":
        cfg.write_text(_v1_yaml(tmp_path, out))
    else:
        cfg.write_text(f"output_dir: {out}\nmodel: {{path: {tmp_path}}}\ndata: {{roots: [{tmp_path}], frames: 9}}\nsteps: 4\n")
    before = _tree(tmp_path)
    rc, err = _train([command, "--config", cfg], capsys)
    assert rc == 2 and all(w in err for w in words), err
    assert _tree(tmp_path) == before and (tmp_path / "afile").read_text() == "my notes"


def test_a_misspelt_training_preset_names_the_closest_one():
    from trainer.config import ConfigError
    from trainer.presets import preset_dict

    with pytest.raises(ConfigError, match=r"unknown 'v1_stage_1' \(did you mean 'v1_stage1'\?\); choose one of"):
        preset_dict("v1_stage_1")
    with pytest.raises(ConfigError, match=r"unknown 'zzz'; choose one of"):
        preset_dict("zzz")
