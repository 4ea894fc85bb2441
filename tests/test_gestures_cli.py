"""`echomimic animate --version v2 --pose auto [--gesture-library DIR]` and `--retime continue`, end to end on tiny
weights, and their bad input (said before any weight is loaded)."""
from __future__ import annotations

import shutil

import pytest

from echomimic_lib.cli import main as cli
from echomimic_lib.io.audio_file import read_audio
from echomimic_lib.io.video_io import probe
from tests._media import write_wav
from tests.test_animate import _common, _fails, tiny  # noqa: F401 (module fixture)


@pytest.fixture(scope="module")
def speech(tmp_path_factory, shared_data):
    wav, sr = read_audio(shared_data / "audio" / "echomimic_zh.wav")
    return write_wav(tmp_path_factory.mktemp("audio") / "zh.wav", wav[0, : int(2.0 * sr)], sr)


@pytest.fixture(scope="module")
def library(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("gestures") / "poses"
    shutil.copytree(shared_data / "pose" / "fight", root / "fight")
    return root


@pytest.mark.slow
def test_pose_auto_animates_from_picture_and_speech(tiny, speech, library, shared_data, tmp_path):  # noqa: F811
    out = tmp_path / "auto.mp4"
    rc = cli(["animate", "--version", "v2", "--acc", "--reference", str(shared_data / "images" / "halfbody_0035.png"),
              "--audio", str(speech), "--pose", "auto", "--gesture-library", str(library), "--expressiveness", "1.5"]
             + _common(tiny, out))
    assert rc == 0 and probe(out)["frames"] == 48
    assert (library / ".fight.gestures.npz").is_file()  # indexed once, beside the folder
    # the models folder's poses/ is the default library
    shutil.copytree(library / "fight", tiny / "poses" / "fight", dirs_exist_ok=True)
    out2 = tmp_path / "auto_default.mp4"
    rc = cli(["animate", "--version", "v2", "--acc", "--reference", str(shared_data / "images" / "halfbody_0035.png"),
              "--audio", str(speech), "--pose", "auto", "--length", "12"] + _common(tiny, out2))
    assert rc == 0 and probe(out2)["frames"] == 12


@pytest.mark.slow
def test_retime_continue_carries_a_short_folder_on(tiny, speech, shared_data, tmp_path):  # noqa: F811
    from echomimic_lib.pose import load_pose, save_pose_npz

    short = save_pose_npz(load_pose(shared_data / "pose" / "01")[:30], tmp_path / "short.npz")  # 1.25 s of 2 s
    for retime in ([], ["--retime", "continue"]):  # continue is the default for V2 poses (what it plays: test_gestures_retime)
        out = tmp_path / f"cont{len(retime)}.mp4"
        rc = cli(["animate", "--version", "v2", "--acc", "--reference", str(shared_data / "images" / "halfbody_0035.png"),
                  "--audio", str(speech), "--pose", str(short)] + retime + _common(tiny, out))
        assert rc == 0 and probe(out)["frames"] == 48


def test_bad_gesture_input_is_refused_before_any_weight(speech, shared_data, tmp_path, capsys):
    out = tmp_path / "out" / "x.mp4"
    ref = str(shared_data / "images" / "halfbody_0035.png")
    common = ["-o", str(out), "--width", "64", "--height", "64", "--offline", "-q", "--models", str(tmp_path / "no_models")]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    v2 = ["animate", "--version", "v2", "--reference", ref, "--audio", str(speech)]
    _fails(capsys, v2 + ["--pose", "auto", "--gesture-library", str(empty)] + common, out, "is not a pose sequence and holds none")
    _fails(capsys, v2 + ["--pose", "auto"] + common, out, "no_models/poses not found")
    _fails(capsys, v2 + ["--pose", "auto", "--gesture-library", str(shared_data / "pose" / "01"), "--expressiveness", "3"] + common,
           out, "--expressiveness 3.0")
    _fails(capsys, ["animate", "--mode", "landmarks", "--reference", ref, "--landmarks", str(shared_data / "v1_pose_pkl"),
                    "--retime", "continue"] + common, out, "--retime continue carries V2 hand poses")
