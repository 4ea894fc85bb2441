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


# -- 3. doctor: a models folder that is a file, a link loop, a dangling link, the folder above the models; an empty
#    or ~ $ECHOMIMIC_MODELS: one clear error (exit 2, no report that sends downloads to the wrong place, no traceback)
def _doctor(capsys, *argv):
    rc = main(["doctor", "--weights", "v2", "--variant", "normal", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("case", ["file", "loop", "dangling", "parent-is-file", "folder-above"])
def test_doctor_refuses_a_models_folder_that_cannot_be_one(capsys, tmp_path, case):
    import os

    if case == "file":
        models, words = tmp_path / "weights.pth", "is a file, not a folder"
        models.write_bytes(b"x")
    elif case == "loop":
        models, words = tmp_path / "a", "symbolic link loop"
        os.symlink(tmp_path / "b", models)
        os.symlink(models, tmp_path / "b")
    elif case == "dangling":
        models, words = tmp_path / "m", "which is not there"
        os.symlink(tmp_path / "gone", models)
    elif case == "parent-is-file":
        (tmp_path / "f").write_bytes(b"x")
        models, words = tmp_path / "f" / "models", "is a file, not a folder"
    else:
        models = tmp_path / "ComfyUI" / "models"
        (models / "echomimic" / "v2").mkdir(parents=True)
        words = str(models / "echomimic")
    rc, out, err = _doctor(capsys, "--models", models)
    assert rc == 2 and err.startswith(f"error: --models {models}") and words in err, err
    assert "Traceback" not in err and out == ""


def test_doctor_names_a_bad_echomimic_models_variable(capsys, tmp_path, monkeypatch):
    (tmp_path / "file").write_bytes(b"x")
    monkeypatch.setenv("ECHOMIMIC_MODELS", str(tmp_path / "file"))
    rc, out, err = _doctor(capsys)
    assert rc == 2 and err.startswith("error: $ECHOMIMIC_MODELS ") and "is a file, not a folder" in err, err
    # a bad default never stops a run that names its own --models (its fix lines compare with the default)
    os_loop = tmp_path / "loop"
    os_loop.symlink_to(os_loop)
    monkeypatch.setenv("ECHOMIMIC_MODELS", str(os_loop))
    rc, out, err = _doctor(capsys, "--models", tmp_path / "good", "--json")
    assert rc == 1 and "Traceback" not in err, err
    assert json.loads(out)["problems"] == ["v2 normal: missing"]


def test_empty_or_tilde_echomimic_models_variable(monkeypatch, tmp_path):
    from pathlib import Path

    from echomimic_lib.jobs.models_folder import default_models_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ECHOMIMIC_MODELS", "")  # `export ECHOMIMIC_MODELS=` in a script: unset, not the current folder
    assert default_models_dir() == Path(tmp_path) / ".cache" / "echomimic"
    monkeypatch.setenv("ECHOMIMIC_MODELS", "~/weights")  # quoted in a script / a unit file: no shell expanded it
    assert default_models_dir() == Path(tmp_path) / "weights"


# -- 4. doctor on a CUDA build that sees no GPU while CUDA_VISIBLE_DEVICES is set (a scheduler's "" or -1): said ------
@pytest.mark.parametrize("value", ["", "-1"])
def test_doctor_names_the_variable_that_hides_the_gpus(monkeypatch, value):
    import torch

    from echomimic_lib.jobs.doctor.environment import torch_info
    from echomimic_lib.jobs.doctor.report import _torch_lines

    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    assert torch_info()["problem"] is None  # nothing set: the plain "none visible" line
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    info = torch_info()
    assert f"CUDA_VISIBLE_DEVICES is set to {value!r}" in info["problem"]
    assert any(line.startswith("  GPU           none visible: CUDA_VISIBLE_DEVICES") for line in _torch_lines(info))


# -- 5. landmarks --preview and the other written files: a link loop as the output, an empty name (a script's unset
#    variable), the suggested name in the command's own extension; refused before MediaPipe, nothing written ----------
@pytest.fixture
def short_video(shared_data, tmp_path):
    import shutil

    return shutil.copy(shared_data / "video" / "driving_a.mp4", tmp_path / "drive.mp4")


def _no_mediapipe(monkeypatch):
    import echomimic_lib.landmarks.extractor as extractor

    def refuse(*a, **k):
        raise AssertionError("MediaPipe was loaded before the outputs were checked")

    monkeypatch.setattr(extractor.FaceLandmarkExtractor, "__init__", refuse)


@pytest.mark.parametrize("where", ["-o", "--preview"])
def test_landmarks_output_that_is_a_link_loop_is_refused(capsys, shared_data, short_video, tmp_path, monkeypatch, where):
    import os

    _no_mediapipe(monkeypatch)
    loop = tmp_path / "loop.npz" if where == "-o" else tmp_path / "loop.mp4"
    os.symlink(tmp_path / "other", loop)
    os.symlink(loop, tmp_path / "other")
    out = ["-o", str(loop)] if where == "-o" else ["-o", str(tmp_path / "lm.npz"), "--preview", str(loop)]
    rc = main(["landmarks", str(short_video), *out, "--offline", "--mediapipe-model", str(shared_data / MP_MODEL)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {where} ") and "symbolic link loop" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drive.mp4", "loop.mp4" if where != "-o" else "loop.npz", "other"]


def test_landmarks_empty_names_are_refused_with_the_right_extension(capsys, shared_data, short_video, tmp_path, monkeypatch):
    _no_mediapipe(monkeypatch)
    base = ["landmarks", str(short_video), "--offline", "--mediapipe-model", str(shared_data / MP_MODEL)]
    assert main([*base, "-o", ""]) == 2
    err = capsys.readouterr().err
    assert "-o is empty" in err and "out.npz" in err and "out.mp4" not in err, err
    assert main([*base, "-o", str(tmp_path / "lm.npz"), "--preview", ""]) == 2  # `--preview "$PREVIEW"`, unset
    err = capsys.readouterr().err
    assert err.startswith("error: --preview is empty") and "out.mp4" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drive.mp4"]


def test_poses_and_evaluate_empty_output_names_are_refused(capsys, shared_data, clip, tmp_path, nothing_looked_for):
    rc = main(["poses", "--audio", str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(tmp_path / "h.npz"),
               "--preview", "", "--models", str(tmp_path / "models")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --preview is empty"), err
    rc = main(["evaluate", str(clip), "--plot", "", "--models", str(tmp_path), "--offline"])
    cap = capsys.readouterr()
    assert rc == 2 and cap.err.startswith("error: --plot is empty") and "sync.png" in cap.err and cap.out == "", cap
    assert list(tmp_path.iterdir()) == []


# -- 6. dub --offline without the MediaPipe model: the options that fix it, as animate and landmarks say them ----------
def test_dub_missing_mediapipe_names_the_fixes(capsys, shared_data, tmp_path):
    out = tmp_path / "dub.mp4"
    rc = main(["dub", "--video", str(shared_data / "video" / "driving_a.mp4"), "--audio",
               str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(out), "--models", str(tmp_path / "m"), "--offline"])
    err = capsys.readouterr().err
    assert rc == 2 and "face_landmarker" in err and "Without --offline it is downloaded once" in err, err
    assert "--mediapipe-model FILE" in err and not out.exists()


# -- 7. evaluate --compare of two runs' outputs with the same file name: the columns and notes tell them apart ---------
def test_evaluate_table_tells_same_named_clips_apart():
    from echomimic_lib.evaluate import table
    from echomimic_lib.evaluate.report import EvalReport

    a = EvalReport("runs/a/clip.mp4", 10, 25.0, 0.4, notes=["only a"])
    b = EvalReport("runs/b/clip.mp4", 10, 25.0, 0.4, notes=["only b"])
    lines = table([a, b]).splitlines()
    assert "a/clip.mp4" in lines[0] and "b/clip.mp4" in lines[0], lines[0]
    assert "note (a/clip.mp4): only a" in lines and "note (b/clip.mp4): only b" in lines
    same = table([EvalReport("d/clip.mp4", 10, 25.0, 0.4), EvalReport("d/clip.mp4", 10, 25.0, 0.4)])
    assert same.splitlines()[0].split()[:3] == ["metric", "clip.mp4", "clip.mp4"]  # one file twice: its name
    assert table([EvalReport("x/clip.mp4", 10, 25.0, 0.4)]).splitlines()[0].split()[1] == "clip.mp4"  # one clip: its name


# -- 8. landmarks of a one-frame video: saved, its summary in good words ----------------------------------------------
def test_landmarks_of_one_frame(capsys, shared_data, tmp_path):
    from echomimic_lib.io.video_io import read_video, write_video

    one = write_video(tmp_path / "one.mp4", read_video(shared_data / "video" / "driving_a.mp4", max_frames=1,
                                                       with_audio=False).frames, 24.0)
    rc = main(["landmarks", str(one), "-o", str(tmp_path / "one.npz"), "--preview", str(tmp_path / "p.mp4"), "--offline",
               "--mediapipe-model", str(shared_data / MP_MODEL), "-q"])
    out = capsys.readouterr().out
    assert rc == 0 and "1 frame at 24 fps, 0 without a face" in out, out
    assert (tmp_path / "one.npz").is_file() and (tmp_path / "p.mp4").is_file()


# -- 9. poses -o a link loop or a link to nothing: said as such (it used to be called "a file") ------------------------
@pytest.mark.parametrize("kind", ["loop", "dangling"])
def test_poses_output_link_that_leads_nowhere(capsys, shared_data, tmp_path, nothing_looked_for, kind):
    import os

    out = tmp_path / "hands"
    if kind == "loop":
        os.symlink(tmp_path / "other", out)
        os.symlink(out, tmp_path / "other")
    else:
        os.symlink(tmp_path / "gone", out)
    rc = main(["poses", "--audio", str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(out), "--models",
               str(tmp_path / "models")])
    err = capsys.readouterr().err
    words = "symbolic link loop" if kind == "loop" else f"a link to {tmp_path / 'gone'}, which is not there"
    assert rc == 2 and words in err and "is a file" not in err, err
    assert os.path.islink(out)


def test_doctor_refuses_a_models_folder_it_cannot_read(capsys, tmp_path, monkeypatch):
    import os

    models = tmp_path / "models"
    (models / "v2").mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if str(p) == str(models) else real_access(p, mode, *a, **k))
    rc, out, err = _doctor(capsys, "--models", models)
    assert rc == 2 and "cannot be read (permission denied)" in err and "chmod u+rx" in err and out == "", err
