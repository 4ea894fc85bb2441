"""The headless user, day 5: `echomimic evaluate / animate / dub / v3 / poses / landmarks` with the mistakes a daily
user makes (each: one clear error before anything is announced or loaded, nothing written; or correct work)."""
from __future__ import annotations

import pytest

from echomimic_lib.cli import main

MP_MODEL = "mediapipe/face_landmarker_v2_with_blendshapes.task"


@pytest.fixture
def no_weights(monkeypatch):
    """Weight loading replaced by a recorder that fails the run if it is reached."""
    import echomimic_lib.model_set as model_set

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(model_set, "load_models", refuse)
    monkeypatch.setattr(model_set, "ensure_weights", refuse)


# -- 1. evaluate: each note once, under the table (the JSON run: on stderr, the JSON keeps them too) --------------
def test_evaluate_says_each_note_once(capsys, shared_data, tmp_path):
    args = ["evaluate", str(shared_data / "video" / "driving_a.mp4"), "--audio", str(shared_data / "audio" / "pose_demo_clip.wav"),
            "--models", str(tmp_path), "--offline"]
    assert main(args) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert text.count("no face region known") == 1 and "note: no face region known" in out.out
    assert text.count("face landmarks unavailable") == 1
    assert main([*args, "--json"]) == 0
    out = capsys.readouterr()
    assert out.err.count("no face region known") == 1 and "no face region known" in out.out.splitlines()[-1]


# -- 2. animate --halfbody-crop / --align-poses without DWPose: refused before the status line ---------------------
@pytest.mark.parametrize("flag", ["--halfbody-crop", "--align-poses"])
def test_halfbody_crop_without_dwpose_is_refused_before_the_run_is_announced(capsys, shared_data, tmp_path, no_weights, flag):
    models = tmp_path / "models"
    models.mkdir()
    out = tmp_path / "out.mp4"
    rc = main(["animate", "--version", "v2", "--pose", str(shared_data / "pose" / "01"), "--reference",
               str(shared_data / "images" / "halfbody_0035.png"), "--audio", str(shared_data / "audio" / "echomimicv2_woman.wav"),
               "-o", str(out), "--models", str(models), "--offline", flag, "--length", "4"])
    cap = capsys.readouterr()
    assert rc == 2 and "DWPose model file(s)" in cap.err and "Without --offline they are downloaded once" in cap.err
    assert "V2 half-body" not in cap.out + cap.err  # the status line never came
    assert not out.exists()


# -- 3. --audio: a 0-byte file, a video without sound: the option named, the empty file said as such ------------------
@pytest.mark.parametrize("command", ["animate", "dub"])
def test_audio_mistakes_name_the_option_and_the_problem(capsys, shared_data, tmp_path, no_weights, command):
    empty = tmp_path / "speech.wav"
    empty.write_bytes(b"")
    silent_video = shared_data / "video" / "driving_a.mp4"  # no sound track
    base = (["animate", "--reference", str(shared_data / "images" / "portrait_a.png")] if command == "animate"
            else ["dub", "--video", str(silent_video)])
    out = tmp_path / "out.mp4"
    for audio, words in ((empty, ["--audio", "speech.wav", "empty (0 bytes)", "speech recording"]),
                         (silent_video, ["--audio", "driving_a.mp4", "no audio stream", "recording with sound"])):
        rc = main([*base, "--audio", str(audio), "-o", str(out), "--models", str(tmp_path), "--offline"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: --audio ") and all(w in err for w in words), err
        assert not out.exists()


# -- 4. an output that is a folder: the suggested name has the command's own extension -------------------------------
def test_landmarks_output_folder_suggests_an_npz_name(capsys, shared_data, tmp_path):
    rc = main(["landmarks", str(shared_data / "video" / "driving_a.mp4"), "-o", str(tmp_path), "--offline",
               "--mediapipe-model", str(shared_data / MP_MODEL)])
    err = capsys.readouterr().err
    assert rc == 2 and "is a directory" in err and str(tmp_path / "out.npz") in err and "out.mp4" not in err, err
    assert list(tmp_path.iterdir()) == []


# -- 5. evaluate: --audio and --reference checked (named, before MediaPipe); a folder as --plot -----------------------
def test_evaluate_bad_audio_reference_and_plot_folder(capsys, shared_data, tmp_path, monkeypatch):
    import echomimic_lib.cli.evaluate as cli_evaluate

    def no_landmarker(*a, **k):
        raise AssertionError("MediaPipe was looked up before the inputs were checked")

    monkeypatch.setattr(cli_evaluate, "_landmarker", no_landmarker)
    video = str(shared_data / "video" / "driving_a.mp4")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    cases = [(["--audio", str(empty)], ["--audio", "empty (0 bytes)"]),
             (["--audio", video], ["--audio", "no audio stream"]),
             (["--reference", str(empty)], ["--reference", "empty.wav"]),
             (["--plot", str(tmp_path)], ["--plot", "is a directory", str(tmp_path / "sync.png")])]
    for extra, words in cases:
        rc = main(["evaluate", video, "--models", str(tmp_path), "--offline", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and all(w in err for w in words), err
    assert [p.name for p in tmp_path.iterdir()] == ["empty.wav"]


# -- 6. animate --version v3-flash: the --audio probe as V1/V2's, before a smoke run's tiny weights are written ---------
def test_v3_audio_mistakes_are_said_before_the_tiny_weights_are_written(capsys, shared_data, tmp_path):
    empty = tmp_path / "speech.wav"
    empty.write_bytes(b"")
    models, out = tmp_path / "models", tmp_path / "out.mp4"
    for audio, words in ((empty, ["--audio", "empty (0 bytes)"]),
                         (shared_data / "video" / "driving_a.mp4", ["--audio", "no audio stream"])):
        rc = main(["animate", "--version", "v3-flash", "--smoke", "--models", str(models), "--reference",
                   str(shared_data / "images" / "portrait_a.png"), "--audio", str(audio), "-o", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: --audio ") and all(w in err for w in words), err
    assert not models.exists() and not out.exists()  # no tiny V3 set written for a run refused at its input
