"""The trainer's JSON files read through the shared reader (echomimic_lib.io.json_file.read_json): a damaged or wrong
file (not JSON, not UTF-8, nested past what the parser reads, another top-level kind, a folder or pipe) is one
ConfigError naming the file and the fix, raised before anything is built or written; the JSON-lines training log
reads past a line a killed run tore. Each through the command the user runs (``echomimic-train ...``)."""
from __future__ import annotations

import json

import pytest
import yaml

DEEP = b"[" * 100_000 + b"]" * 100_000
DAMAGED = {  # what a disk or a copy cut short, or another program, leaves where a JSON object belongs
    "torn": b'{"step": 2, "weig',
    "not utf-8": b'{"step": 2, "weights": "\xff"}',
    "deep": DEEP,
    "a list": b"[2]",
    "empty": b"",
}
PROBLEM = {"torn": "not valid JSON", "not utf-8": "not UTF-8", "deep": "nested too deeply", "a list": "it holds a list",
           "empty": "(empty)", "no step": "(no step number)"}


def _no_build(monkeypatch):
    monkeypatch.setattr("trainer.init.build", lambda *a, **k: pytest.fail("built before the damaged file was refused"))


def _run_with_checkpoints(tmp_path, damaged: bytes):
    """A run folder with a good checkpoint (step 1) and a newer one whose meta.json is ``damaged`` (step 2)."""
    run = tmp_path / "run"
    good, bad = run / "checkpoints" / "step-00000001", run / "checkpoints" / "step-00000002"
    for ck in (good, bad):
        ck.mkdir(parents=True)
    (good / "meta.json").write_text('{"step": 1}')
    (bad / "meta.json").write_bytes(damaged)
    return run, good, bad


def _config(tmp_path, run):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"preset": "v1_stage1", "output_dir": str(run),
                                   "model": {"init": "echomimic", "echomimic_path": str(tmp_path), "weights": "v1_pose"},
                                   "data": {"roots": [str(tmp_path)]}, "loss": {"spatial": {"lpips": 0.0}}}))
    return cfg


@pytest.mark.parametrize("kind", [*DAMAGED, "no step"])
def test_fit_resume_from_a_checkpoint_with_a_damaged_meta_json_is_refused_before_building(tmp_path, capsys, monkeypatch, kind):
    from trainer.cli import main

    run, good, bad = _run_with_checkpoints(tmp_path, DAMAGED.get(kind, b'{"weights": "v1_pose"}'))
    _no_build(monkeypatch)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert main(["fit", "--config", str(_config(tmp_path, run)), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad / 'meta.json'}: not a readable checkpoint record" in err and PROBLEM[kind] in err, err
    assert f"--resume {good}" in err and "Traceback" not in err, err  # the fix: the checkpoint before it
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # no config.yaml, log or folder written


def test_fit_resume_from_the_only_checkpoint_damaged_says_to_start_over(tmp_path, capsys, monkeypatch):
    from trainer.cli import main

    run, good, bad = _run_with_checkpoints(tmp_path, b"{")
    (good / "meta.json").unlink()
    good.rmdir()
    _no_build(monkeypatch)
    assert main(["fit", "--config", str(_config(tmp_path, run)), "--resume", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad / "meta.json") in err and "no earlier one is kept beside it" in err and "new output_dir" in err, err
    assert not (run / "config.yaml").exists()


def test_export_of_a_checkpoint_with_a_damaged_meta_json_is_refused_before_writing(tmp_path, capsys):
    from trainer.cli import main

    run, good, bad = _run_with_checkpoints(tmp_path, b'{"step": 2, "echo_config": {"a": ')
    (bad / "model.safetensors").write_bytes(b"")  # never read: the record is read first
    dest = tmp_path / "export"
    assert main(["export", str(run), str(dest)]) == 2
    err = capsys.readouterr().err
    assert str(bad / "meta.json") in err and "not valid JSON" in err and f"--resume {good} (or export it)" in err, err
    assert not dest.exists()


# the training log -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tests.test_trainer_helpers import shared_dir

    return shared_dir(tmp_path_factory)


def test_a_run_resumed_after_a_kill_tore_its_log_trains_on_and_plots(base, tmp_path, capsys):
    """A run killed while writing train_log.jsonl leaves a torn last line; the resumed run appends to that log and
    plots it at every checkpoint: it stopped there with a raw JSONDecodeError after the resumed step had trained."""
    from tests.test_trainer_helpers import v1_config, write_yaml
    from trainer.cli import main
    from trainer.config_file import load_config
    from trainer.loop import fit
    from trainer.monitor import read_log

    run = tmp_path / "run"
    cfg_path = write_yaml(tmp_path / "c.yaml", v1_config(base, run, steps=2, optim={"batch_size": 1},
                                                         checkpoint={"every": 1}, log={"tensorboard": False}))
    assert fit(load_config(cfg_path), stop_after=1)["step"] == 1
    log = run / "train_log.jsonl"
    with open(log, "ab") as fh:
        fh.write(b'{"step": 2, "loss/total": 0.3')  # the kill, mid-line
    assert main(["fit", "--config", str(cfg_path), "--resume"]) == 0, capsys.readouterr().err
    rows = read_log(log)
    assert [r["step"] for r in rows if "event" not in r] == [1, 2]  # the torn row skipped, the resumed one read
    assert any(r.get("event") == "checkpoint" and r["step"] == 2 for r in rows)
    assert log.read_bytes().count(b'{"step": 2, "loss/total": 0.3\n') == 1  # the torn line stays a line of its own
    assert (run / "checkpoints" / "loss.png").is_file()


# the SD1.5 UNet's config.json (model.init: sd) --------------------------------------------------------------------------
@pytest.mark.parametrize("data, problem", [
    (b'{"block_out_channels": [32, 64', "not valid JSON"),
    (DEEP, "nested too deeply"),
    (b"[320, 640]", "it holds a list"),
    (b'{"in_channels": 4}', "no 'block_out_channels'"),
], ids=["torn", "deep", "a list", "no channels"])
def test_fit_from_an_sd_folder_with_a_damaged_unet_config_is_refused_before_writing(base, tmp_path, capsys, monkeypatch,
                                                                                     data, problem):
    from tests.test_trainer_helpers import v1_config, write_yaml
    from trainer.cli import main

    unet = tmp_path / "sd-image-variations-diffusers" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_bytes(data)
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.jsonl").write_text('{"step": 1, "loss/total": 0.5}\n')  # an earlier run's record
    cfg = v1_config(base, run, model={"init": "sd", "sd_path": str(unet.parent), "echomimic_path": None})
    _no_build(monkeypatch)
    assert main(["fit", "--config", str(write_yaml(tmp_path / "c.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert f"error: {unet / 'config.json'}: not a diffusers UNet config (" in err and problem in err, err
    assert "model.sd_path: give the sd-image-variations-diffusers folder" in err and "Traceback" not in err, err
    assert sorted(p.name for p in run.iterdir()) == ["train_log.jsonl"]  # not renamed aside, no config.yaml


# prepare_config.json's curation thresholds (prepare's finalize) -------------------------------------------------------
@pytest.mark.parametrize("data, problem", [
    (b'{"kind": "headshot", "curate": {"syncnet": ', "not valid JSON"),
    (b'["headshot"]', "it holds a list"),
    (b'{"kind": "headshot", "curate": [3.0]}', "its curate holds a list"),
], ids=["torn", "a list", "curate a list"])
def test_finalize_refuses_a_damaged_settings_file_before_writing_the_manifest(tmp_path, data, problem):
    """``prepare`` reads prepare_config.json before its first clip (check_same_settings refuses a damaged one there) and
    again in finalize, after every clip: a file damaged in between gave a raw JSONDecodeError / AttributeError (a list
    where the thresholds belong: ``summary_table`` then) after manifest.jsonl was rewritten."""
    from trainer.config import ConfigError
    from trainer.data.prepare import finalize

    (tmp_path / "status").mkdir()
    (tmp_path / "status" / "a_000.json").write_text(json.dumps({"clip": "a_000", "status": "ok", "reason": "", "seconds": 2.5}))
    (tmp_path / "prepare_config.json").write_bytes(data)
    (tmp_path / "manifest.jsonl").write_text("before\n")
    with pytest.raises(ConfigError) as got:
        finalize(tmp_path)
    msg = str(got.value)
    assert msg.startswith(f"{tmp_path / 'prepare_config.json'}: unreadable settings file (") and problem in msg, msg
    assert msg.endswith("delete it and run the same prepare command again (it writes the file anew from the command's "
                        "settings; finished clips are skipped)"), msg
    assert (tmp_path / "manifest.jsonl").read_text() == "before\n" and not (tmp_path / "curation.json").exists()
    assert not (tmp_path / "report.jsonl").exists()


# a clip's status file on a resumed prepare ---------------------------------------------------------------------------
def test_prepare_again_redoes_a_clip_whose_status_file_is_no_object_and_says_why(tmp_path, capsys, caplog):
    import logging

    from tests.test_trainer_helpers import DATA
    from trainer.cli import main

    inp, out = tmp_path / "in", tmp_path / "ds"
    inp.mkdir()
    for name in ("talk", "other"):
        (inp / f"{name}.mp4").symlink_to(DATA / "video" / "driving_a.mp4")  # no audio: dropped at once (cheap)
    args = ["prepare", str(inp), str(out), "--size", "64", "--max-seconds", "2", "--shards", "2", "-q"]
    main(args)
    status = out / "status" / "talk.json"
    status.write_text('["talk.mp4"]')  # JSON, but not the object prepare wrote
    with caplog.at_level(logging.WARNING, logger="trainer.data.prepare"):
        main(args)
    said = [r.getMessage() for r in caplog.records if "talk is prepared again" in r.getMessage()]
    assert said and f"{status}: its status file is unreadable (it holds a list [...] where an object {{...}} belongs); " \
                    "it is written anew when the clip is prepared" in said[0], said  # before: "(AttributeError)"
    assert json.loads(status.read_text())["status"] == "dropped"  # written anew


# a clip's clip.json read for its caption (v3-fit) ----------------------------------------------------------------------
@pytest.mark.parametrize("data, problem", [(b'{"id": "spk0__clip", "fps": 25', "not valid JSON"), (DEEP, "nested too deeply"),
                                           (b'"spk0__clip"', "it holds text")], ids=["torn", "deep", "text"])
def test_v3_fit_on_a_clip_with_a_damaged_clip_json_names_the_clip_before_building(tmp_path, capsys, monkeypatch, data, problem):
    from echomimic_lib.models.wan.tiny import ensure_tiny_v3
    from tests.test_v3_train import SIZE, dataset
    from trainer.cli import main

    tiny = ensure_tiny_v3(tmp_path / "v3-flash")
    d = dataset(tmp_path / "data", clips=2)
    clip = d / "shard-00000" / "spk0__clip"
    (clip / "clip.json").write_bytes(data)
    monkeypatch.setattr("echomimic_lib.models.wan.load_v3_transformer", lambda *a, **k: pytest.fail("built first"))
    run = tmp_path / "run"
    cfg = tmp_path / "v3.yaml"
    cfg.write_text(yaml.safe_dump({"output_dir": str(run), "model": {"path": str(tiny)}, "lora": {"rank": 4, "alpha": 4},
                                   "data": {"roots": [str(d)], "frames": 9, "width": SIZE, "height": SIZE}, "steps": 1,
                                   "mixed_precision": "no"}))
    assert main(["v3-fit", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"error: {clip}: this prepared clip is damaged (clip.json: unreadable (" in err and problem in err, err
    assert f"Delete the folder {clip} and run `echomimic-train prepare VIDEOS {d}` again" in err and "Traceback" not in err, err
    assert not run.exists()
