"""A researcher fine-tuning with ``echomimic-train`` (fifth hunt).

Before: ``checkpoint.keep_last: 0`` (and any negative number) kept every checkpoint, though the docs say the newest
``keep_last`` are kept (V3 accepted 0 on purpose, V1/V2 without a word); ``fit --resume`` / ``v3-fit --resume`` of a run
whose steps are all done built every network, trained nothing and said "finished at step N; checkpoints in ...", as
if it had trained; the trainer's log lines and error lines wrote a file name's control characters (a terminal escape)
to the terminal raw.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train_user_4 import Built, _train, _yaml, nothing_built  # noqa: F401 - fixture
from tests.test_trust import _fake_checkpoint
from tests.test_trust_audit3_train import _fresh_state  # noqa: F401 - autouse fixture

ROOT = Path(__file__).resolve().parents[1]
ESC = "\x1b]0;pwned\x07"  # retitles a terminal window


# 1. keep_last below 1 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, -1])
def test_keep_last_below_one_is_refused_naming_the_fix(value, tmp_path, capsys, nothing_built):
    run = tmp_path / "run"
    cfg = _yaml(tmp_path, run, "preset: v1_stage1\nmodel: {init: echomimic, echomimic_path: %s, weights: v1_pose}\n"
                "phases: [{name: stage1, steps: 5000}]\ncheckpoint: {every: 1000, keep_last: %d}\n" % (tmp_path, value))
    rc, err = _train(["fit", "--config", cfg], capsys)
    assert rc == 2 and f"checkpoint.keep_last: {value} must be at least 1" in err, err
    assert "to keep every checkpoint of this run, checkpoint.keep_last: 5" in err, err  # 5000 steps / 1000
    assert not run.exists()


@pytest.mark.parametrize("value", [0, -2])
def test_v3_keep_last_below_one_is_refused_naming_the_fix(value, tmp_path):
    from trainer.config import ConfigError
    from trainer.v3.config import load_v3_config

    with pytest.raises(ConfigError, match=f"checkpoint.keep_last: {value} must be at least 1") as e:
        load_v3_config(None, [f"output_dir={tmp_path / 'run'}", f"model.path={tmp_path}", f"data.roots=[{tmp_path}]",
                              "steps=100", "checkpoint.every=10", f"checkpoint.keep_last={value}"])
    assert "checkpoint.keep_last: 10" in str(e.value)


# 2. resuming a finished run ---------------------------------------------------------------------------------------

def test_resuming_a_finished_run_says_so_and_builds_nothing(tmp_path, capsys, nothing_built):
    ckpt = _fake_checkpoint(tmp_path)  # step 2, v1_audio, full fine-tune
    run = ckpt.parent.parent
    (run / "config.yaml").write_text("# the run's config\n")
    cfg = _yaml(tmp_path, run, "preset: v1_stage1\nmodel: {init: echomimic, echomimic_path: %s, weights: v1_audio}\n"
                "data: {roots: [%s], num_workers: 0, condition: face_mask}\nphases: [{name: stage1, steps: 2}]\n" % (tmp_path, tmp_path))
    from trainer.cli import main

    rc = main(["fit", "--config", str(cfg), "--resume"])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in err, err
    assert f"the run in {run} is already finished at step 2 (of 2)" in out and "nothing was trained" in out, out
    assert "--set phases.stage1.steps=" in out and f"echomimic-train export {ckpt} " in out, out
    assert "finished at step 2; checkpoints in" not in out
    assert (run / "config.yaml").read_text() == "# the run's config\n"  # nothing written
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]


def test_resuming_past_the_configs_steps_says_so(tmp_path, capsys, nothing_built):
    ckpt = _fake_checkpoint(tmp_path)
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "step": 7}))
    cfg = _yaml(tmp_path, ckpt.parent.parent, "preset: v1_stage1\nmodel: {init: echomimic, echomimic_path: %s, weights: v1_audio}\n"
                "data: {roots: [%s], num_workers: 0, condition: face_mask}\nphases: [{name: stage1, steps: 3}]\n" % (tmp_path, tmp_path))
    from trainer.cli import main

    assert main(["fit", "--config", str(cfg), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "already finished at step 7, past this config's 3 steps" in out, out


def v3_run(tmp_path, monkeypatch, clips: int = 2, extra: str = "checkpoint: {every: 2}\n"):
    """A tiny V3 set, a prepared dataset of ``clips`` clips and a ``v3-fit`` config for ``tmp_path/run`` (4 steps at
    32x32), with the encoders patched to fail: the checks must all come before any network loads.
    Returns (dataset folder, run folder, config file)."""
    from echomimic_lib.models.wan.tiny import ensure_tiny_v3

    import trainer.v3.encode as enc
    from tests.test_v3_train import dataset

    def no(*a, **k):
        raise Built("an encoder or the transformer loaded")
    monkeypatch.setattr(enc, "prompt_states", no)
    monkeypatch.setattr(enc, "Encoders", no)
    tiny = ensure_tiny_v3(tmp_path / "v3-flash")
    data = dataset(tmp_path / "data", clips=clips)
    run = tmp_path / "run"
    cfg = tmp_path / "v3.yaml"
    cfg.write_text(f"output_dir: {run}\nmodel: {{path: {tiny}}}\ndata: {{roots: [{data}], frames: 9, width: 32, height: 32}}\n"
                   f"mixed_precision: 'no'\nsteps: 4\n{extra}")
    return data, run, cfg


def test_v3_resuming_a_finished_run_says_so_before_any_network_loads(tmp_path, capsys, monkeypatch):
    from trainer.cli import main

    _, run, cfg = v3_run(tmp_path, monkeypatch)
    ckpt = run / "checkpoints" / "step-00000004"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"family": "v3", "step": 4}))

    rc = main(["v3-fit", "--config", str(cfg), "--resume"])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in err, err
    assert f"the run in {run} is already finished at step 4 (of 4)" in out and "--set steps=" in out, out
    assert f"echomimic-train v3-export {ckpt} " in out, out
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]


# 3. log and error lines through printable -------------------------------------------------------------------------

def test_log_and_error_lines_show_control_characters_escaped(tmp_path):
    evil = tmp_path / f"ev{ESC}il"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"preset: v1_stage1\noutput_dir: {json.dumps(str(evil / 'run'))}\n"
                   f"model: {{init: echomimic, echomimic_path: {tmp_path}, weights: v1_pose}}\n"
                   f"data: {{roots: [{json.dumps(str(evil / 'data'))}], num_workers: 0}}\nloss: {{spatial: {{lpips: 0}}}}\n")
    r = subprocess.run([sys.executable, "-m", "trainer", "fit", "--config", str(cfg), "--resume"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2, r.stderr
    assert "has no checkpoint yet" in r.stderr and "no manifest.jsonl" in r.stderr, r.stderr  # a log line, an error line
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr, repr(r.stderr)
    assert "ev\\x1b]0;pwned\\x07il" in r.stderr, r.stderr


# 4. a checkpoint path that does not exist -------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["fit", "export", "v3-export"])
def test_a_mistyped_checkpoint_says_it_does_not_exist_and_names_the_runs_checkpoints(command, tmp_path, capsys, nothing_built):
    ckpt = _fake_checkpoint(tmp_path)  # run/checkpoints/step-00000002
    wrong = ckpt.parent / "step-00000009"
    if command == "fit":
        cfg = _yaml(tmp_path, tmp_path / "other", "preset: v1_stage1\n")
        rc, err = _train(["fit", "--config", cfg, "--resume", wrong], capsys)
    else:
        rc, err = _train([command, wrong, tmp_path / "dest"], capsys)
    assert rc == 2 and f"{wrong}: no such checkpoint folder" in err, err
    assert f"the checkpoints in {ckpt.parent}: step-00000002" in err, err
    assert not (tmp_path / "other").exists() and not (tmp_path / "dest").exists()


def test_a_missing_run_folder_given_to_resume_says_it_does_not_exist(tmp_path, capsys, nothing_built):
    cfg = _yaml(tmp_path, tmp_path / "run", "preset: v1_stage1\n")
    rc, err = _train(["fit", "--config", cfg, "--resume", tmp_path / "nope"], capsys)
    assert rc == 2 and f"{tmp_path / 'nope'}: no such checkpoint folder" in err, err


# 5. a clip whose frames.bin was cut short (a copy stopped early) ----------------------------------------------------

def test_a_clip_cut_short_is_named_before_anything_is_built_or_written(tmp_path, capsys, monkeypatch):
    data, run, cfg = v3_run(tmp_path, monkeypatch, clips=3, extra="")
    frames = data / "shard-00000" / "spk1__clip" / "frames.bin"
    with open(frames, "r+b") as f:
        f.truncate(frames.stat().st_size // 2)
    rc, err = _train(["v3-fit", "--config", cfg], capsys)
    assert rc == 2 and f"{frames.parent}: this prepared clip is damaged (frames.bin holds" in err, err
    assert "cut short" in err and "manifest.jsonl" in err, err
    assert not run.exists()
