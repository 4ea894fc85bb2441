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
