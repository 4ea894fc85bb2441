"""A new user's stumbles with ``echomimic-train`` (fourth hunt), each said before anything is built or written.

Before: ``fit --resume`` with the config of another run (a LoRA config on a full fine-tune's folder, another rank or
weight set) built every network, failed with hundreds of tensor names, and had already replaced the folder's
``config.yaml`` with the new config; ``checkpoint.every: 0`` / ``log.every: 0`` stopped the run after its first step
with a bare ZeroDivisionError; a misspelt ``optim.lr_schedule`` or ``data.num_workers: -1`` ended in diffusers' / torch's
traceback after the networks were built; two ``fit`` runs on one output_dir both trained, writing over each other's
checkpoints; ``--resume`` into a folder without checkpoints (a mistyped output_dir) trained from step 0 without a word.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.test_trust import _fake_checkpoint
from tests.test_trust_audit3_train import _fresh_state  # noqa: F401 - autouse fixture


class Built(Exception):
    pass


@pytest.fixture
def nothing_built(monkeypatch):
    """Building the networks or reading the clips is the expensive work the checks must come before."""
    import trainer.data.dataset as dataset
    import trainer.init as init

    def no(*a, **k):
        raise Built("the expensive work started")
    monkeypatch.setattr(init, "build", no)
    monkeypatch.setattr(dataset, "build_pools", no)


def _train(args, capsys):
    from trainer.cli import main

    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


def _yaml(tmp_path: Path, run: Path, extra: str = "") -> Path:
    cfg = tmp_path / "c.yaml"
    base = [f"output_dir: {run}", f"model: {{init: echomimic, echomimic_path: {tmp_path}}}",
            f"data: {{roots: [{tmp_path}], num_workers: 0}}", "loss: {spatial: {lpips: 0}}"]
    given = {line.split(":", 1)[0] for line in extra.splitlines() if line[:1].isalpha()}  # a key is written once
    cfg.write_text("".join(line + "\n" for line in base if line.split(":", 1)[0] not in given) + extra)
    return cfg


@pytest.mark.parametrize("saved_lora,preset,sets,words", [
    (False, "v1_lora_identity", [], ["lora.enabled false (this config: true)", "v1_audio full fine-tune",
                                     "v1_audio LoRA (rank 16)"]),
    (False, "v1_stage1", [], ["model.weights v1_audio (this config: v1_pose)"]),
    (True, "v1_lora_identity", ["lora.rank=8"], ["lora.rank 2 (this config: 8)"]),
    (True, "v1_lora_identity", ["lora.rank=2", "lora.targets=[q]", "lora.alpha=2", "model.weights=v2",
                                "data.condition=pose"], ["model.weights v1_audio (this config: v2)"]),
    (True, "v1_stage1", ["model.weights=v1_audio", "data.condition=face_mask"], ["lora.enabled true (this config: false)"]),
], ids=["lora-config-on-a-full-run", "other-weight-set", "other-rank", "v2-config-on-a-v1-run", "full-config-on-a-lora-run"])
def test_resume_with_another_runs_config_is_refused_before_anything_is_built_or_written(
        saved_lora, preset, sets, words, tmp_path, capsys, nothing_built):
    ckpt = _fake_checkpoint(tmp_path, saved_lora)
    run = ckpt.parent.parent
    earlier = "# the earlier run's config\npreset: v1_stage1\n"
    (run / "config.yaml").write_text(earlier)
    cfg = _yaml(tmp_path, run, f"preset: {preset}\n")
    rc, err = _train(["fit", "--config", cfg, "--resume", *[a for s in sets for a in ("--set", s)]], capsys)
    assert rc == 2 and "is a checkpoint of another run" in err, err
    assert all(w in err for w in words), err
    assert f"--config {run / 'config.yaml'} --resume" in err and "new output_dir" in err
    assert (run / "config.yaml").read_text() == earlier  # the earlier run's record is as it was
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]


def test_resume_with_the_runs_own_settings_goes_on_to_build(tmp_path, capsys, nothing_built):
    ckpt = _fake_checkpoint(tmp_path, True)
    cfg = _yaml(tmp_path, ckpt.parent.parent, "preset: v1_lora_identity\nlora: {rank: 2, alpha: 2, targets: [q]}\n")
    from trainer.config_file import load_config
    from trainer.loop import fit

    with pytest.raises(Built):
        fit(load_config(cfg), resume=True)


@pytest.mark.parametrize("sets,words", [
    (["checkpoint.every=0"], ["checkpoint.every: 0 must be at least 1", "checkpoint.every: 1000"]),
    (["log.every=0"], ["log.every: 0 must be at least 1"]),
    (["validation.every=-5"], ["validation.every: -5 must be 0 (no validation video)"]),
    (["data.num_workers=-1"], ["data.num_workers: -1 must be 0"]),
    (["optim.warmup_steps=-10"], ["optim.warmup_steps: -10 must be 0 (no warm-up) or more"]),
    (["ema.enabled=true", "ema.decay=1.5"], ["ema.decay: 1.5 must be in [0, 1)"]),
    (["optim.lr_schedule=cosinus"], ["optim.lr_schedule: 'cosinus' is not a schedule; did you mean 'cosine'?"]),
])
def test_counters_and_names_the_loop_cannot_use_are_said_before_anything_is_built(sets, words, tmp_path, capsys, nothing_built):
    run = tmp_path / "run"
    cfg = _yaml(tmp_path, run, "preset: v1_stage1\nmodel: {init: echomimic, echomimic_path: %s, weights: v1_pose}\n" % tmp_path)
    rc, err = _train(["fit", "--config", cfg, *[a for s in sets for a in ("--set", s)]], capsys)
    assert rc == 2 and all(w in err for w in words), err
    assert not run.exists()


def test_a_second_run_on_the_same_output_dir_is_refused_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import trainer.data.dataset as dataset
    from trainer.run_lock import TrainLock

    import trainer.init as init

    monkeypatch.setattr(dataset, "build_pools", lambda *a, **k: {})  # the first run holds the folder from here on
    monkeypatch.setattr(init, "echomimic_files", lambda cfg: {})  # (no weights in this test: their check passes)
    run = tmp_path / "run"
    run.mkdir()
    log = run / "train_log.jsonl"
    log.write_text('{"step": 1, "loss/total": 0.5}\n')  # the first run's log, being written
    cfg = _yaml(tmp_path, run, "preset: v1_stage1\nmodel: {init: echomimic, echomimic_path: %s, weights: v1_pose}\n" % tmp_path)
    with TrainLock(run):  # the first run, still training
        rc, err = _train(["fit", "--config", cfg], capsys)
    assert rc == 2 and "another echomimic-train run is training into" in err and "choose another output_dir" in err, err
    assert "pid" in err
    assert sorted(p.name for p in run.iterdir()) == ["train_log.jsonl"]  # not renamed aside, no config.yaml of this run
    assert log.read_text() == '{"step": 1, "loss/total": 0.5}\n'


def test_a_finished_or_killed_run_leaves_no_lock_behind(tmp_path, monkeypatch):
    import trainer.data.dataset as dataset
    import trainer.init as init
    from trainer.config_file import load_config
    from trainer.loop import fit
    from trainer.run_lock import LOCK_NAME, TrainLock

    monkeypatch.setattr(dataset, "build_pools", lambda *a, **k: {})
    monkeypatch.setattr(init, "echomimic_files", lambda cfg: {})

    def fails(*a, **k):
        raise Built("stopped while building")
    monkeypatch.setattr(init, "build", fails)
    run = tmp_path / "run"
    cfg = load_config(_yaml(tmp_path, run, "preset: v1_stage1\nmodel: {init: echomimic, echomimic_path: %s, weights: v1_pose}\n"
                            % tmp_path))
    with pytest.raises(Built):
        fit(cfg)
    assert not (run / LOCK_NAME).exists()
    with TrainLock(run):  # free again: the next run (a --resume) takes it
        pass


def test_resume_where_there_is_no_checkpoint_says_it_starts_from_step_0(tmp_path, caplog, nothing_built):
    from trainer.config_file import load_config
    from trainer.loop import fit

    run = tmp_path / "runs" / "my_rnu"  # a typo of the run to continue
    cfg = load_config(_yaml(tmp_path, run, "preset: v1_stage1\nmodel: {init: echomimic, echomimic_path: %s, weights: v1_pose}\n"
                            % tmp_path))
    with caplog.at_level(logging.WARNING, logger="trainer"), pytest.raises(Built):
        fit(cfg, resume=True)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("--resume" in m and "has no checkpoint yet" in m and "starts from step 0" in m and "my_rnu" in m
               for m in said), said
    with caplog.at_level(logging.WARNING, logger="trainer"), pytest.raises(Built):
        caplog.clear()
        fit(cfg)  # a fresh run asked for as such: nothing to say
    assert not any("has no checkpoint yet" in r.getMessage() for r in caplog.records)


def _dataset(folder: Path, clips: dict[str, int]) -> Path:
    """A prepared dataset's manifest and clip folders (clip.json + whisper.npy), clip id -> its number of frames."""
    rows = []
    for i, (cid, n) in enumerate(clips.items()):
        d = folder / f"shard-0000{i}" / cid
        d.mkdir(parents=True)
        (d / "clip.json").write_text(json.dumps({"id": cid, "fps": 24.0, "num_frames": n}))
        (d / "whisper.npy").write_bytes(b"")
        rows.append(json.dumps({"id": cid, "path": f"shard-0000{i}/{cid}", "shard": i, "num_frames": n, "fps": 24.0,
                                "kind": "headshot"}))
    (folder / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def _temporal_yaml(tmp_path: Path, run: Path, data: Path, frames: int) -> Path:
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"preset: v1_stage2\noutput_dir: {run}\nmodel: {{init: echomimic, echomimic_path: {tmp_path}, weights: v1_pose, "
                   f"motion_init: released}}\ndata: {{roots: [{data}], num_workers: 0, condition: landmarks}}\n"
                   f"loss: {{spatial: {{lpips: 0}}}}\nphases: [{{name: stage2, steps: 5, frames: {frames}}}]\n")
    return cfg


def test_a_clip_shorter_than_a_temporal_window_is_named_before_anything_is_built(tmp_path, capsys, monkeypatch):
    import trainer.init as init

    def no(*a, **k):
        raise Built("the networks were built")
    monkeypatch.setattr(init, "build", no)
    data = _dataset(tmp_path / "ds", {"talk": 48, "short": 14, "slow": 48})
    run = tmp_path / "run"
    rc, err = _train(["fit", "--config", _temporal_yaml(tmp_path, run, data, 24)], capsys)
    assert rc == 2 and "phases.stage2: 1 clip(s) are shorter than its 24-frame window: short (14 frames)" in err, err
    assert "--min-seconds 1.00" in err and "manifest.jsonl" in err and "phases.stage2.frames to at most 14" in err
    assert not run.exists()
    from trainer.config_file import load_config
    from trainer.data.dataset import build_pools

    pools = build_pools(load_config(_temporal_yaml(tmp_path, run, data, 14)))  # every clip holds a 14-frame window
    assert len(pools.entries) == 3


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_export_ema_of_a_run_without_ema_says_so_and_writes_nothing(lora, tmp_path, capsys):
    ckpt = _fake_checkpoint(tmp_path, lora)
    dest = tmp_path / "export"
    rc, err = _train(["export", "--ema", ckpt.parent.parent, dest], capsys)
    assert rc == 2 and "this run did not keep an EMA (ema.enabled: false)" in err and "export without --ema" in err, err
    assert not dest.exists()


@pytest.mark.parametrize("weights", ["v2", "v1_pose"])
def test_a_weight_folder_of_another_version_is_named_before_the_run_folder_is_written(weights, tmp_path, capsys, monkeypatch):
    """A V2 config given the V1 release (or the reverse): the missing files were named only once the run folder and
    its config.yaml were written."""
    import trainer.data.dataset as dataset
    import trainer.init as init

    monkeypatch.setattr(dataset, "build_pools", lambda *a, **k: {})
    models = tmp_path / "models"
    models.mkdir()
    names = (["denoising_unet.pth", "reference_unet.pth", "pose_encoder.pth", "motion_module.pth"] if weights == "v1_pose"
             else ["denoising_unet_pose.pth", "reference_unet_pose.pth", "face_locator_pose.pth", "motion_module_pose.pth"])
    for n in names:  # the other version's file names
        (models / n).write_bytes(b"")

    def no(*a, **k):
        raise Built("the networks were built")
    monkeypatch.setattr(init, "build", no)
    run = tmp_path / "run"
    preset = "v2_apdh" if weights == "v2" else "v1_stage1"
    cfg = _yaml(tmp_path, run, f"preset: {preset}\nmodel: {{init: echomimic, echomimic_path: {models}, weights: {weights}, "
                "motion_init: released}\n")
    rc, err = _train(["fit", "--config", cfg, "--set", "loss.phd.low_weight=0"], capsys)
    assert rc == 2 and f"EchoMimic weights missing for '{weights}'" in err and "echomimic download" in err, err
    assert not run.exists()


def test_a_dataset_prepared_smaller_than_the_training_size_is_said(tmp_path, caplog):
    from trainer.config_file import load_config
    from trainer.data.dataset import build_pools

    data = _dataset(tmp_path / "ds", {"talk": 48})
    (data / "prepare_config.json").write_text(json.dumps({"kind": "headshot", "size": 64, "fps": 24.0}))
    run = tmp_path / "run"
    for side, said in ((128, True), (64, False)):
        caplog.clear()
        cfg = load_config(_yaml(tmp_path, run, f"preset: v1_stage1\nmodel: {{init: echomimic, echomimic_path: {tmp_path}, "
                                               "weights: v1_pose}\n"), [f"data.roots=[{data}]", f"data.width={side}",
                                                                        f"data.height={side}"])
        with caplog.at_level(logging.WARNING):
            build_pools(cfg)
        msgs = [r.getMessage() for r in caplog.records if "enlarged" in r.getMessage()]
        assert bool(msgs) == said, msgs
        if said:
            assert "prepared at --size 64, smaller than data.width x data.height 128 x 128" in msgs[0]
            assert "Prepare the videos again with --size 128" in msgs[0]


def test_a_lora_file_under_a_file_is_named_before_anything_is_read(tmp_path, capsys, monkeypatch):
    import trainer.export as export

    def no(*a, **k):
        raise Built("the checkpoint was read")
    monkeypatch.setattr(export, "load_checkpoint_weights", no)
    ckpt = _fake_checkpoint(tmp_path, True)
    (tmp_path / "loras").write_text("a file where the user meant a folder")
    rc, err = _train(["export", ckpt.parent.parent, tmp_path / "loras" / "anna.safetensors"], capsys)
    assert rc == 2 and f"{tmp_path / 'loras'} is a file, not a folder, so anna.safetensors cannot be written" in err, err
    assert (tmp_path / "loras").read_text() == "a file where the user meant a folder"


def test_a_manifest_given_as_a_data_root_names_its_folder(tmp_path, capsys, monkeypatch):
    import trainer.init as init

    def no(*a, **k):
        raise Built("the networks were built")
    monkeypatch.setattr(init, "build", no)
    data = _dataset(tmp_path / "ds", {"talk": 48})
    run = tmp_path / "run"
    cfg = _yaml(tmp_path, run, "preset: v1_stage1\nmodel: {init: echomimic, echomimic_path: %s, weights: v1_pose}\n" % tmp_path)
    rc, err = _train(["fit", "--config", cfg, "--set", f"data.roots=[{data / 'manifest.jsonl'}]"], capsys)
    assert rc == 2 and f"data.roots lists prepared dataset folders: give {data} (the folder" in err, err
    assert not run.exists()
