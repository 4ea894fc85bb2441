"""A dub needs a video: a still picture (one frame) or a flash of a few frames is refused before any face tracking or
weight, with the way to animate a picture instead (``echomimic animate --reference``). Before, ``dub --video
portrait.png`` tracked the face and rendered a short "dub" of the still."""
from __future__ import annotations

import pytest
import torch

from echomimic_lib.cli import main as cli
from echomimic_lib.jobs.dub_plan import MIN_SOURCE_FRAMES
from tests._pack import sub
from tests.test_cli_bad_input import MP_MODEL, loads  # noqa: F401  (the fixture that fails any weight access)


def _tracking_fails(monkeypatch):
    import echomimic_lib.frames.tracking as tracking

    def no(*a, **k):
        raise AssertionError("the face was tracked before the source's length was checked")
    monkeypatch.setattr(tracking, "track_faces", no)


@pytest.mark.parametrize("frames", [1, 3])
def test_dub_refuses_a_still_picture_or_a_few_frames(frames, shared_data, tmp_path, loads, monkeypatch, capsys):  # noqa: F811
    from echomimic_lib.io.video_io import read_video, write_video

    _tracking_fails(monkeypatch)
    if frames == 1:
        video = shared_data / "images" / "portrait_a.png"
    else:
        clip = read_video(shared_data / "video" / "driving_a.mp4", max_frames=frames, with_audio=False)
        video = write_video(tmp_path / "flash.mp4", clip.frames, 24)
    out = tmp_path / "out.mp4"
    rc = cli(["dub", "--video", str(video), "--audio", str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(out),
              "--models", str(tmp_path / "models"), "--offline", "--mediapipe-model", str(shared_data / "mediapipe" / MP_MODEL)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists() and loads == []
    assert (f"--video {video} is a still picture (1 frame)" if frames == 1 else f"is only {frames} frames long") in err
    assert f"at least {MIN_SOURCE_FRAMES} frames" in err and "echomimic animate --reference" in err


def test_dub_takes_a_video_of_the_minimum_length(shared_data, tmp_path):
    from echomimic_lib.io.video_io import count_frames, read_video, write_video
    from echomimic_lib.jobs.dub_plan import check_source_frames

    clip = read_video(shared_data / "video" / "driving_a.mp4", max_frames=MIN_SOURCE_FRAMES, with_audio=False)
    video = write_video(tmp_path / "v.mp4", clip.frames, 24)
    assert count_frames(video, 100) == MIN_SOURCE_FRAMES and count_frames(video, 3) == 3
    check_source_frames(count_frames(video, MIN_SOURCE_FRAMES), "v")  # no error


def test_face_track_node_refuses_a_single_image(monkeypatch):
    face_track = sub("nodes.face_track")

    def no(*a, **k):
        raise AssertionError("MediaPipe was opened before the batch's length was checked")
    monkeypatch.setattr(face_track.detectors, "face_landmarker", no)
    with pytest.raises(sub("echomimic_lib.errors").EchoMimicError, match=r"the images input is a still picture \(1 frame\).*EchoMimic Reference Preparation"):
        face_track.track(torch.rand(1, 64, 64, 3), 25.0, None, 512, 512, -1, "", "ping-pong", False)
