"""A researcher fine-tuning with ``echomimic-train`` (eighth hunt).

1. ``echomimic-train export`` / ``v3-export`` into a run's ``checkpoints/`` folder (not inside one step's folder,
   which was refused already): the LoRA file or the model's file set was written among the run's checkpoints, where
   rotation, ``--resume`` and the next export look (and ``--force`` wrote the model set there too). Refused before
   anything is read, naming ``RUN/export`` instead; a folder of the user's that is merely *named* checkpoints is fine.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.test_trust_audit3_train import _fresh_state  # noqa: F401 - autouse fixture


def _v3_checkpoint(root: Path) -> Path:
    from safetensors.torch import save_file

    ckpt = root / "run" / "checkpoints" / "step-00000005"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"step": 5, "family": "v3", "lora": {
        "rank": 2, "alpha": 2, "targets": ["q"], "layers": 1, "base": {"path": str(root)}}}))
    save_file({"blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(2, 4),
               "blocks.0.self_attn.q.lora_B.default.weight": torch.zeros(4, 2)}, str(ckpt / "model.safetensors"))
    return ckpt


# 1. an export into a run's checkpoints/ folder -------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["checkpoints", "checkpoints/export", "checkpoints/lora.safetensors"])
@pytest.mark.parametrize("kind", ["lora", "full", "full-force"])
def test_export_into_a_runs_checkpoints_folder_is_refused_naming_a_better_place(kind, where, tmp_path, capsys):
    from tests.test_trust import _fake_checkpoint
    from trainer.cli import main

    if kind != "lora" and where.endswith(".safetensors"):
        where = "checkpoints/model"
    ckpt = _fake_checkpoint(tmp_path, kind == "lora")
    run = ckpt.parent.parent
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    args = ["export", str(run), str(run / where), "--no-verify"] + (["--force"] if kind == "full-force" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(run / "checkpoints") in err and str(run / "export") in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_a_run_that_has_not_saved_yet_has_its_checkpoints_folder_refused_too(tmp_path, capsys):
    from tests.test_trust import _fake_checkpoint
    from trainer.cli import main
    from trainer.config_file import RUN_CONFIG_HEADER

    ckpt = _fake_checkpoint(tmp_path, True)
    run = tmp_path / "fresh"  # a run started (its config.yaml written), no checkpoint yet
    run.mkdir()
    (run / "config.yaml").write_text(RUN_CONFIG_HEADER + "seed: 1\n")
    assert main(["export", str(ckpt), str(run / "checkpoints"), "--no-verify"]) == 2
    assert str(run / "export") in capsys.readouterr().err and not (run / "checkpoints").exists()


def test_v3_export_into_a_runs_checkpoints_folder_is_refused(tmp_path):
    from trainer.config import ConfigError
    from trainer.v3.lora import export_wan_lora

    ckpt = _v3_checkpoint(tmp_path)
    run = ckpt.parent.parent
    with pytest.raises(ConfigError) as e:
        export_wan_lora(run, run / "checkpoints", verify=False)
    assert str(run / "export") in str(e.value), e.value
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [ckpt.name]


def test_a_folder_merely_named_checkpoints_and_the_runs_export_folder_are_fine(tmp_path, capsys):
    from tests.test_trust import _fake_checkpoint
    from trainer.cli import main

    ckpt = _fake_checkpoint(tmp_path, True)
    run = ckpt.parent.parent
    mine = tmp_path / "models" / "checkpoints"  # the user's own folder of that name (beside a config of theirs): no run's
    mine.parent.mkdir()
    (mine.parent / "config.yaml").write_text("my: settings\n")
    assert main(["export", str(run), str(mine), "--no-verify"]) == 0
    assert main(["export", str(run), str(run / "export"), "--no-verify"]) == 0
    assert (mine / "run-step2.safetensors").is_file() and (run / "export" / "run-step2.safetensors").is_file()


# 2. an optimizer setting that made NaN weights ------------------------------------------------------

def test_adamw_eps_0_is_refused_it_turns_weights_with_a_zero_gradient_into_nan(tmp_path):
    from trainer.config import ConfigError
    from trainer.config_file import load_config

    p = torch.nn.Parameter(torch.ones(3))  # what eps 0 did: a weight whose gradient is 0 became NaN at the first step
    opt = torch.optim.AdamW([p], lr=1e-3, eps=0.0)
    p.grad = torch.zeros(3)
    opt.step()
    assert torch.isnan(p).all()
    with pytest.raises(ConfigError, match=r"optim\.eps: 0 .*e\.g\. optim\.eps: 1e-8"):
        load_config(None, ["optim.eps=0"], preset="v1_stage1", files=False)
    assert load_config(None, ["optim.eps=1e-6"], preset="v1_stage1", files=False).optim.eps == 1e-6


# 3. a setting written at the top of the file (or under another trainer's name) names where it goes ---------------------

@pytest.mark.parametrize("key, where", [("lr", "optim.lr"), ("learning_rate", "optim.lr"), ("batch_size", "optim.batch_size"),
                                        ("gradient_accumulation_steps", "optim.grad_accum"), ("keep_last", "checkpoint.keep_last"),
                                        ("rank", "lora.rank")])
def test_a_sections_key_at_the_top_names_its_section(key, where, tmp_path):
    from trainer.config import ConfigError
    from trainer.config_file import load_config

    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"preset: v1_stage1\n{key}: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, files=False)
    assert f"{key}: unknown key; did you mean '{where}'?" in str(e.value), e.value
    assert f"--set {where}=" in str(e.value), e.value


def test_max_steps_names_the_phases_steps_and_a_typo_in_a_section_still_names_its_key(tmp_path):
    from trainer.config import ConfigError
    from trainer.config_file import load_config

    with pytest.raises(ConfigError) as e:
        load_config(None, ["max_steps=100"], preset="v1_stage1", files=False)
    assert "phases" in str(e.value) and "--set phases.0.steps=" in str(e.value), e.value
    assert load_config(None, ["phases.0.steps=100"], preset="v1_stage1", files=False).max_steps == 100
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key; did you mean 'lr'\?"):
        load_config(None, ["optim.lrr=1"], preset="v1_stage1", files=False)


# 4. a validation video that fails mid-run ------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_failed_validation_video_is_said_and_training_goes_on(tmp_path_factory, tmp_path, monkeypatch, caplog):
    """A validation render that failed (a full disk for the video, a damaged held-out clip, out of memory in the
    sampler) ended the whole run with its traceback, losing every step since the last checkpoint. It is said (the
    step, the error, that training goes on) and recorded in the run's log; the run reaches its last step."""
    import logging

    import trainer.validation as validation
    from tests.test_trainer_helpers import shared_dir, v1_config, write_yaml
    from trainer.config_file import load_config
    from trainer.loop import fit

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(validation, "render_validation", full_disk)
    base = shared_dir(tmp_path_factory)
    run = tmp_path / "run"
    cfg = load_config(write_yaml(tmp_path / "c.yaml", v1_config(base, run, steps=2, optim={"batch_size": 1},
                                                               validation={"every": 1, "steps": 1, "frames": 2})))
    with caplog.at_level(logging.WARNING):
        assert fit(cfg)["step"] == 2
    said = [r.getMessage() for r in caplog.records if "validation" in r.getMessage()]
    assert len(said) == 2 and "No space left on device" in said[0] and "training goes on" in said[0], said
    events = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "validation_failed"] == [1, 2], events
    assert (run / "checkpoints" / "step-00000002" / "meta.json").is_file()


# 5. a clip found damaged mid-run ---------------------------------------------------------------------------------------

def test_a_clip_found_damaged_mid_run_is_skipped_said_once_and_counted(tmp_path, monkeypatch, caplog):
    """A prepared clip whose files turn out damaged while training (a copy cut short, a disk error) raised
    DamagedClipError from the DataLoader and ended a run of hours. It is skipped for the rest of the run, said once
    with the fix and the count, and the next good clip of the phase's pool takes its samples; a pool of damaged clips
    only still stops the run, saying so."""
    import logging

    import numpy as np

    from tests.test_train_user_4 import _dataset
    from trainer.config_file import load_config
    from trainer.data.dataset import EchoDataset, Pools
    from trainer.data.store import DamagedClipError
    from trainer.data.store import read_manifest

    root = _dataset(tmp_path / "ds", {"cut": 48, "talk": 48, "sing": 48})
    entries = read_manifest(root)
    for e in entries[1:]:  # "cut" has no frames.idx.npy: its reader says it is damaged
        np.save(e.path / "frames.idx.npy", np.zeros(49, np.int64))
    pools = Pools(entries, {"all": [0, 1, 2], "headshot": [0, 1, 2], "halfbody": [], "pose": []})
    ds = EchoDataset(load_config(None, ["phases.0.data=all"], preset="v1_stage1", files=False), pools)
    monkeypatch.setattr(EchoDataset, "_sample", lambda self, key: {"id": self.reader(key["clip"]).id}, raising=False)
    with caplog.at_level(logging.WARNING):
        assert ds[{"pos": 0, "step": 0, "clip": 0}] == {"id": "talk"}
        assert ds[{"pos": 1, "step": 0, "clip": 0}] == {"id": "talk"}
        assert ds[{"pos": 2, "step": 0, "clip": 2}] == {"id": "sing"}
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "cut" in said[0] and "skipped" in said[0] and "1 damaged clip(s)" in said[0], said
    assert "prepare" in said[0]  # the fix, from the reader's own message
    for e in entries[1:]:
        (e.path / "frames.idx.npy").unlink()
    ds = EchoDataset(ds.cfg, pools)
    with pytest.raises(DamagedClipError, match="every clip this phase trains on is damaged"):
        ds[{"pos": 0, "step": 0, "clip": 1}]


# 6. a run whose loss stays NaN -----------------------------------------------------------------------------------------

class _Acc:
    is_main_process, scaler = True, None


class _Mon:
    def event(self, *a, **k):
        pass


@pytest.mark.parametrize("saved", [True, False], ids=["a-checkpoint", "none-yet"])
def test_a_run_stopped_by_nan_losses_names_its_last_checkpoint_and_the_resume(saved, tmp_path):
    from types import SimpleNamespace

    from trainer.config_file import load_config
    from trainer.loop import NonFiniteError, _report_nonfinite

    run = tmp_path / "run"
    cfg = load_config(None, [f"output_dir={run}", "max_nonfinite=2"], preset="v1_stage1", files=False)
    if saved:
        (run / "checkpoints" / "step-00000200").mkdir(parents=True)
        (run / "checkpoints" / "step-00000200" / "meta.json").write_text('{"step": 200}')
    with pytest.raises(NonFiniteError) as e:
        _report_nonfinite(cfg, _Acc(), _Mon(), 230, [], torch.tensor(float("nan")), SimpleNamespace(nonfinite=2, overflow=0))
    msg = str(e.value)
    assert "2 consecutive steps" in msg and "lower the LR" in msg, msg
    if saved:
        assert f"The last checkpoint, {run / 'checkpoints' / 'step-00000200'}, was saved before and is kept" in msg, msg
        assert f"--config {run / 'config.yaml'} --resume" in msg, msg
    else:
        assert "No checkpoint was saved yet" in msg, msg


def test_the_nan_stop_is_one_error_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    import trainer.loop as loop
    from tests.test_train_user_4 import _yaml
    from trainer.cli import main

    def nan_run(cfg, **k):
        raise loop.NonFiniteError("5 consecutive steps with non-finite loss/gradients (last at step 7)")
    monkeypatch.setattr(loop, "fit", nan_run)
    cfg = _yaml(tmp_path, tmp_path / "run", "preset: v1_stage1\nmodel: {init: echomimic, echomimic_path: %s, weights: v1_pose}\n"
                % tmp_path)
    rc = main(["fit", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert rc != 0 and "error: 5 consecutive steps with non-finite loss/gradients" in err and "Traceback" not in err, err


# 7. V3: a learning rate that is not a number ---------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, said", [("lr", ".nan", "optim.lr: nan is not a finite number"),
                                              ("lr", ".inf", "optim.lr: inf is not a finite number"),
                                              ("lr", "5", "optim.lr: 5.0 is out of range"),
                                              ("weight_decay", ".nan", "optim.weight_decay: nan is not a finite number"),
                                              ("max_grad_norm", ".nan", "optim.max_grad_norm: nan is not a finite number")])
def test_v3_optimizer_numbers_that_are_not_finite_or_out_of_range_are_refused(key, value, said, tmp_path):
    """`v3-fit` took optim.lr: .nan (or .inf, or 5) and trained with it: NaN weights from the first step, stopped only
    after max_nonfinite steps (V1/V2's fit refused these)."""
    from trainer.config import ConfigError
    from trainer.v3.config import load_v3_config

    cfg = tmp_path / "v3.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'run'}\nmodel: {{path: {tmp_path}}}\nlora: {{rank: 4, alpha: 4}}\n"
                   f"data: {{roots: [{tmp_path}]}}\noptim: {{{key}: {value}}}\n")
    with pytest.raises(ConfigError, match=said):
        load_v3_config(cfg)
