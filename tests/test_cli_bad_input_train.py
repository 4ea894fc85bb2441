"""Bad input to ``echomimic-train`` (issue 28), the trainer's part of the bad-input module: exit code 2, a message that
names the problem and the fix, no traceback, nothing written, and no failure recorded that was not the clip's."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli_bad_input import MP_MODEL, _with

def _train(args, capsys):
    from trainer.cli import main

    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


@pytest.mark.parametrize("case,words", [
    ("binary", ["binary file, not a YAML config"]),
    ("malformed", ["not valid YAML at line 6, column 9", "fix the file"]),
    ("list", ["top level must be a mapping"]),
    ("nan-lr", ["optim.lr: nan is not a finite number"]),
    ("nan-lr-set", ["optim.lr: nan is not a finite number"]),
    ("negative-lr", ["optim.lr: -0.001 is out of range"]),
    ("inf-betas", ["optim.betas[1]: inf is not a finite number"]),
])
def test_fit_refuses_a_bad_config_before_anything_is_written(case, words, tmp_path, capsys):
    run = tmp_path / "run"
    good = f"preset: v1_stage1\noutput_dir: {run}\nmodel: {{init: echomimic, echomimic_path: {tmp_path}, weights: v1_pose}}\n"
    cfg, extra = tmp_path / "c.yaml", []
    cfg.write_text({"binary": "", "malformed": good + "optim:\n  lr: 1e-5\n   betas: x\n", "list": "- a\n- b\n",
                    "nan-lr": good + "optim: {lr: .nan}\n", "nan-lr-set": good, "negative-lr": good + "optim: {lr: -1e-3}\n",
                    "inf-betas": good + "optim: {betas: [0.9, .inf]}\n"}[case])
    if case == "binary":
        cfg.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    if case == "nan-lr-set":
        extra = ["--set", "optim.lr=nan"]
    rc, err = _train(["fit", "--config", cfg, *extra], capsys)
    assert rc == 2 and all(w in err for w in words), err
    assert not run.exists()


@pytest.fixture(scope="module")
def whisper_file(tmp_path_factory):
    from echomimic_lib.audio.whisper import save_random_whisper

    return save_random_whisper(tmp_path_factory.mktemp("whisper") / "whisper_tiny.pt")


@pytest.fixture
def clips(tmp_path, shared_data):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.mp4").symlink_to(shared_data / "video" / "driving_a.mp4")
    (d / "a.wav").symlink_to(shared_data / "audio" / "echomimic_en.wav")
    return d


@pytest.mark.parametrize("extra,words", [
    (["--size", "-1"], ["--size -1", "multiple of 8 between 64 and 4096"]),
    (["--fps", "0"], ["--fps 0", "between 1 and 120"]),
    (["--fps", "nan"], ["--fps nan", "between 1 and 120"]),
    (["--max-missing-face", "1.5"], ["--max-missing-face 1.5", "between 0 and 1"]),
    (["--jpeg-quality", "0"], ["--jpeg-quality 0", "between 1 and 100"]),
    (["--whisper", "{tmp}/none.pt"], ["--whisper", "none.pt", "file not found"]),
    (["--mediapipe-model", "{tmp}/broken.task"], ["broken.task", "not a valid MediaPipe"]),
])
def test_prepare_checks_options_and_tools_before_any_clip(extra, words, clips, whisper_file, tmp_path, capsys, shared_data):
    (tmp_path / "broken.task").write_text("not a model")
    out = tmp_path / "ds"
    args = ["prepare", clips, out, "--whisper", whisper_file, "--mediapipe-model", shared_data / "mediapipe" / MP_MODEL, "-q"]
    args = _with([str(a) for a in args], [str(e).format(tmp=tmp_path) for e in extra])
    rc, err = _train(args, capsys)
    assert rc == 2 and all(w in err for w in words), err
    assert not out.exists()  # nothing written, nothing recorded as failed


def test_prepare_never_records_a_failure_that_is_not_the_clips(clips, whisper_file, tmp_path, capsys, shared_data, monkeypatch):
    import errno

    import trainer.data.prepare as prep

    out = tmp_path / "ds"

    def disk_full(video, cid, out_root, cfg, tools):
        raise OSError(errno.ENOSPC, "No space left on device", str(out_root / f"{cid}.partial" / "frames.bin"))

    monkeypatch.setattr(prep, "prepare_headshot", disk_full)
    args = ["prepare", clips, out, "--whisper", whisper_file, "--mediapipe-model", shared_data / "mediapipe" / MP_MODEL, "-q"]
    rc, err = _train(args, capsys)
    assert rc == 2 and "no space left" in err, err
    assert not list(out.glob("status/*.json"))  # not recorded as the clip's failure: a rerun prepares it

    def broken_clip(video, cid, out_root, cfg, tools):
        raise ValueError("moov atom not found")  # the clip's own fault: recorded, skipped by reruns

    monkeypatch.setattr(prep, "prepare_headshot", broken_clip)
    rc, err = _train(args, capsys)
    assert rc == 2 and "unreadable" in err
    assert [p.name for p in (out / "status").glob("*.json")] == ["a.json"]


def test_prepare_without_a_face_model_stops_and_records_nothing(clips, whisper_file, tmp_path, capsys):
    """No --mediapipe-model and none in the default places: the first clip that needs landmarks stops the run with the
    model's message; the clip is not recorded as unreadable, so a rerun with the model prepares it."""
    out = tmp_path / "ds"
    rc, err = _train(["prepare", clips, out, "--whisper", whisper_file, "-q"], capsys)
    assert rc == 2 and "face_landmarker" in err and "unreadable" not in err, err
    assert not list(out.glob("status/*.json"))


def test_a_checkpoint_save_that_fails_leaves_no_partial_folder(tmp_path):
    import errno

    from trainer.checkpoint import save_checkpoint

    class FullDisk:
        is_main_process = True

        def wait_for_everyone(self):
            pass

        def save_state(self, folder, safe_serialization=True):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        save_checkpoint(FullDisk(), tmp_path, 3, {}, keep_last=2)
    assert list((tmp_path / "checkpoints").iterdir()) == []
