"""``echomimic animate --version v2 --pose photo.png`` (the portrait given to --pose): a file that is not a pose file
is read as a driving video, and one frame passed the check, so DWPose's ONNX files were looked up -- and without
--offline downloaded (hundreds of MB) -- before anything said a still picture drives no hands. The check of a pose
video is one function for `animate --pose` and `poses --video`, run before DWPose is looked up."""
from __future__ import annotations

import pytest

from echomimic_lib.cli import main as cli


@pytest.fixture
def no_dwpose(monkeypatch):
    import huggingface_hub

    import echomimic_lib.pose.dwpose as dwpose

    def no_download(*args, **kwargs):
        raise AssertionError("DWPose was looked up / downloaded before the pose video was checked")

    monkeypatch.setattr(dwpose, "resolve_dwpose_models", no_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)


def test_animate_pose_with_a_still_picture_is_refused_before_dwpose(shared_data, tmp_path, no_dwpose, capsys):
    ref = shared_data / "images" / "halfbody_0035.png"
    out = tmp_path / "out" / "x.mp4"
    rc = cli(["animate", "--version", "v2", "--reference", str(ref), "--audio", str(shared_data / "audio" / "echomimic_en.wav"),
              "-o", str(out), "--pose", str(ref), "--models", str(tmp_path / "models"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--pose {ref}: a still picture (1 frame), not a video" in err and "--pose auto" in err, err
    assert not out.parent.exists() and not (tmp_path / "models").exists()


@pytest.mark.parametrize("flag, speech", [("--pose", "--pose auto"), ("--video", "--audio")])
def test_one_pose_video_check_names_each_commands_options(shared_data, flag, speech, tmp_path):
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.jobs.pose_sources import check_pose_video

    still = shared_data / "images" / "portrait_a.png"
    with pytest.raises(EchoMimicError, match=rf"{flag} .*portrait_a.png: a still picture .*use {speech}\."):
        check_pose_video(still, flag, speech=speech)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    with pytest.raises(EchoMimicError, match="it is a text file, not a video"):
        check_pose_video(notes, flag)
    check_pose_video(shared_data / "video" / "driving_a.mp4", flag)  # a video passes
