"""Trust audit 20 (5782765..3437d27): each test failed before its fix."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.test_trust import _fake_checkpoint


@pytest.fixture
def fresh_accelerator():
    """fit makes its Accelerator (the preset's bf16) before it reads the checkpoint: accelerate keeps one mixed precision
    per process, so none is left over for later tests (a V3 fit in 'no' failed after this one)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.usefixtures("fresh_accelerator")
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


def test_a_manifest_row_with_fps_0_is_named_not_a_zero_division(tmp_path):
    """A shared dataset's manifest.jsonl row with `"fps": 0` (finite, so the 1e999 check let it through) and fewer
    frames than a temporal phase's window: the new window-length check divided by its fps for the advice and the run
    ended in a bare ZeroDivisionError before anything was built."""
    from trainer.config import ConfigError
    from trainer.config_file import load_config
    from trainer.data.dataset import check_window_lengths
    from trainer.data.store import read_manifest

    (tmp_path / "shard-00000" / "c1").mkdir(parents=True)
    for fps in (0, -25):
        row = {"id": "c1", "path": "shard-00000/c1", "shard": 0, "num_frames": 3, "fps": fps}
        (tmp_path / "manifest.jsonl").write_text(json.dumps(row) + "\n")
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"preset: v1_stage2\noutput_dir: {tmp_path}/run\ndata: {{roots: [{tmp_path}]}}\n"
                       f"model: {{init: echomimic, echomimic_path: {tmp_path}, motion_init: random}}\n")
        with pytest.raises(ConfigError, match="line 1 is not a clip row"):
            check_window_lengths(load_config(cfg), read_manifest(tmp_path))


def test_resume_never_lists_a_finished_job_whose_record_cannot_tell_its_inputs(tmp_path, capsys):
    """`echomimic queue --resume` now lists a job that finished on a server now gone instead of rendering it again,
    when its record's plan is this job's. A record written before the plan held the inputs' sizes and times (or with no
    plan) was taken as the same job: a portrait replaced since was never rendered, and the old video was listed as its
    result (the very case the inputs mark exists to catch). Such a record is rendered again, as before that listing."""
    from echomimic_lib.jobs.queue_run import finished_before
    from echomimic_lib.jobs.queue_state import plan_mark

    portrait, audio = tmp_path / "anna.png", tmp_path / "hello.wav"
    portrait.write_bytes(b"png")
    audio.write_bytes(b"wav")
    job = SimpleNamespace(portrait=portrait, audio=audio, prefix="echomimic/anna__hello", is_video=False)
    template = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                "2": {"class_type": "LoadAudio", "inputs": {"audio": "x.wav"}}}
    plan = plan_mark(template, job)
    rec = {"prompt_id": "p1", "files": ["echomimic/p1.mp4"]}
    assert finished_before(job, "http://a", {**rec, "plan": plan}, plan)  # its own full plan: listed
    assert not finished_before(job, "http://a", {**rec, "plan": plan.split(".")[0]}, plan)  # (no inputs part)
    assert not finished_before(job, "http://a", rec, plan)  # (no plan at all)


@pytest.mark.parametrize("strength", [None, [1.0], "strong", True, 10**400], ids=["none", "list", "text", "bool", "huge-int"])
def test_a_linked_lora_strength_that_is_no_number_is_a_clear_error(strength, monkeypatch):
    """The LoRA nodes' new range check (d015ee2) took a linked strength through float(): a value of another output
    through a switch / reroute node (a list, a text, nothing) or a huge whole number from a math node escaped as
    float()'s TypeError / ValueError / OverflowError, and a BOOLEAN passed as strength 1 without a word."""
    from tests._pack import sub
    from tests.test_comfy_user_4 import _reached

    EchoMimicError = sub("echomimic_lib.errors").EchoMimicError  # (the pack's own copy)
    paths = sub("nodes.paths")
    monkeypatch.setattr(paths, "resolve_lora", _reached)
    monkeypatch.setattr(paths, "resolve_comfy_lora", _reached)
    handle = SimpleNamespace(weights="v1_audio", variant="normal", patchers={})
    runs = [lambda: sub("nodes.lora").EchoMimicLora().execute(handle, "a.safetensors", strength),
            lambda: sub("nodes.v3_lora").EchoMimicV3Lora().execute(SimpleNamespace(), "w.safetensors", strength),
            lambda: sub("nodes.loader").load("V1 audio", "normal", lora="a.safetensors", lora_strength=strength)]
    for run in runs:
        with pytest.raises(EchoMimicError, match="strength must be a finite number, got"):
            run()


def test_a_shared_datasets_prepare_config_that_is_deep_or_a_pipe_neither_crashes_nor_hangs_the_run(tmp_path):
    """The new enlarged-frames warning read each data root's prepare_config.json with read_text + json.loads: a file
    nested past the parser's depth ended the run in a RecursionError traceback, and a named pipe in its place (a
    hostile or odd shared dataset) hung the run forever before anything was built. Such a file is skipped (nothing to
    compare), as a missing or unreadable one is."""
    import os

    from trainer.config_file import load_config
    from trainer.data.dataset import warn_enlarged

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"preset: v1_stage1\noutput_dir: {tmp_path}/run\ndata: {{roots: [{tmp_path}]}}\n"
                   f"model: {{init: echomimic, echomimic_path: {tmp_path}}}\n")
    config = load_config(cfg)
    (tmp_path / "prepare_config.json").write_text("[" * 200_000)
    warn_enlarged(config)
    (tmp_path / "prepare_config.json").unlink()
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "prepare_config.json")  # (nobody writes it: a read would wait forever)
        warn_enlarged(config)


@pytest.mark.parametrize("name", ["a.MOV", "a.Mp4", "a.M4V"])
def test_a_batch_never_deletes_the_partial_of_a_live_render_to_the_same_name_in_capitals(name, tmp_path):
    """Audit 19's fix: the batch takes the claims of its row's name with each video extension before deleting
    `.a.<random>.partial.mp4` files. `echomimic animate -o out/a.MOV` (accepted: the extension's case is not looked at)
    writes the same partial names, but claims `.a.MOV.lock`, which the batch's `.a.mov.lock` is not: the batch of row `a`
    deleted that live render's file."""
    from echomimic_lib.jobs.batch.results import remove_partials
    from echomimic_lib.jobs.output_file import OutputClaim

    live = tmp_path / ".a.x1y2z3.partial.mp4"
    live.write_bytes(b"frames of a render in flight")
    with OutputClaim(tmp_path / name):  # (another process's claim: flock refuses a second open file of this process too)
        assert remove_partials(SimpleNamespace(output=tmp_path / "a.mp4")) == 0
        assert live.exists()
    assert remove_partials(SimpleNamespace(output=tmp_path / "a.mp4")) == 1 and not live.exists()
    assert not list(tmp_path.glob(".*.lock"))


def test_a_landmark_file_whose_image_size_is_past_any_float_is_a_clear_error(tmp_path):
    """Audit 19 named 1e999 in a pose file's meta (int() of JSON's infinity: OverflowError); a landmark file's meta has
    the same kind of field (image_size) and its reader's except lists did not name OverflowError: `echomimic animate
    --landmarks FILE` and the nodes that read a landmark file ended in a traceback."""
    import numpy as np

    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.landmarks.io import FORMAT, load_driver_sequence, load_sequence

    meta = json.dumps({"format": FORMAT, "image_size": [512, 512]}).replace("[512,", "[1e999,")
    np.savez(tmp_path / "x.npz", meta=np.array(meta), lmks=np.zeros((2, 478, 2), np.float32))
    with pytest.raises(EchoMimicError, match="not a landmark file written by this package"):
        load_sequence(tmp_path / "x.npz")
    with pytest.raises(EchoMimicError, match="--landmarks"):
        load_driver_sequence(tmp_path / "x.npz")
