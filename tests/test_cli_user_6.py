"""The headless user, day 6: `echomimic evaluate / poses / doctor / landmarks --preview` with the mistakes a daily user
makes (each: one clear error before anything expensive, nothing written; or correct work said once)."""
from __future__ import annotations

import json

import pytest

from echomimic_lib.cli import main

MP_MODEL = "mediapipe/face_landmarker_v2_with_blendshapes.task"


@pytest.fixture(scope="module")
def clip(shared_data, tmp_path_factory):
    """A 12-frame mp4 of the driving face with 0.5 s of speech as its audio track."""
    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.io.video_io import read_video, write_video

    video = read_video(shared_data / "video" / "driving_a.mp4", max_frames=12, with_audio=False)
    wav, sr = read_audio(shared_data / "audio" / "pose_demo_clip.wav")
    return write_video(tmp_path_factory.mktemp("eval6") / "clip.mp4", video.frames, video.fps, wav[:, : sr // 2], sr)


# -- 1. evaluate --compare: a note both clips share is said once (the table and the JSON run's stderr) ---------------
def test_evaluate_compare_says_a_shared_note_once(capsys, clip, tmp_path):
    args = ["evaluate", str(clip), "--compare", str(clip), "--models", str(tmp_path), "--offline"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for words in ("face landmarks unavailable", "no face-landmark model", "no face region known"):
        assert out.count(words) == 1, out
    assert "note: no face region known" in out  # unlabelled: it is about every clip
    assert main([*args, "--json"]) == 0
    cap = capsys.readouterr()
    assert cap.err.count("no face region known") == 1, cap.err
    doc = json.loads(cap.out.splitlines()[-1])
    assert any("no face region known" in n for n in doc["notes"])
    assert any("no face region known" in n for n in doc["compare"]["notes"])  # the JSON keeps each clip's notes


def test_evaluate_table_labels_only_the_notes_of_one_clip():
    from echomimic_lib.evaluate import table
    from echomimic_lib.evaluate.report import EvalReport

    a = EvalReport("a.mp4", 10, 25.0, 0.4, notes=["shared", "only a"])
    b = EvalReport("b.mp4", 10, 25.0, 0.4, notes=["shared", "only b"])
    lines = table([a, b]).splitlines()
    assert lines.count("note: shared") == 1 and "note (a.mp4): only a" in lines and "note (b.mp4): only b" in lines
    assert not any("(a.mp4): shared" in line or "(b.mp4): shared" in line for line in lines)


# -- 2. poses: the output's problems (-o the input itself, a file where the folder goes, a non-regular file) are said
#    before the speech is decoded or the gesture library / DWPose looked for ------------------------------------------
@pytest.fixture
def nothing_looked_for(monkeypatch):
    """The gesture library, the speech decode and the DWPose models replaced by recorders that fail the run if reached."""
    import echomimic_lib.jobs.models_folder as models_folder
    import echomimic_lib.jobs.poses as poses

    def refuse(*args, **kwargs):
        raise AssertionError("an input was decoded or a library / model looked for before the output was checked")

    monkeypatch.setattr(models_folder, "gesture_library_dirs", refuse)
    monkeypatch.setattr(poses, "read_speech", refuse)
    monkeypatch.setattr(poses, "read_speech_summary", refuse)
    monkeypatch.setattr(poses, "check_dwpose_models", refuse)
    monkeypatch.setattr(poses, "check_pose_video", refuse)


def test_poses_output_same_as_input_is_said_before_the_gesture_library(capsys, shared_data, tmp_path, nothing_looked_for):
    import shutil

    speech = shutil.copy(shared_data / "audio" / "echomimic_en.wav", tmp_path / "speech.wav")
    video = shutil.copy(shared_data / "video" / "driving_a.mp4", tmp_path / "drive.mp4")
    before = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    for source, path in (("--audio", speech), ("--video", video)):
        rc = main(["poses", source, str(path), "-o", str(path), "--models", str(tmp_path / "models"), "--offline"])
        err = capsys.readouterr().err
        assert rc == 2 and f"is the same file as {source}" in err and "gesture library" not in err, err
    assert {p.name: p.stat().st_size for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("case", ["file-for-folder", "fifo-npz", "existing-npz"])
def test_poses_output_problems_come_before_the_speech(capsys, shared_data, tmp_path, nothing_looked_for, case):
    import os

    if case == "file-for-folder":
        out = tmp_path / "hands"
        out.write_text("notes")
        words = "is a file, not a folder"
    elif case == "fifo-npz":
        out = tmp_path / "hands.npz"
        os.mkfifo(out)
        words = "not a regular file"
    else:
        out = tmp_path / "hands.npz"
        out.write_bytes(b"old")
        words = "--force"
    rc = main(["poses", "--audio", str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(out), "--models",
               str(tmp_path / "models")])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and "gesture library" not in err, err
