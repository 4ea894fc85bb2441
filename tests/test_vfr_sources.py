"""Variable frame rate (VFR) and frame-rate checks on every video input.

A phone's recording or a screen recording that paused is read frame after frame at its header's constant rate: the
V1 driving landmarks, the V2 driving hand poses and an evaluated video drifted from the speech without a word (dub
already said so for its own sound). Every reader now places the frames by their timestamps (tests/test_vfr_retime.py,
dub's source: tests/test_vfr_retime_2.py) and says so. ``dub``
without --audio reads the frame timestamps in the pass that counts the frames (the source is opened once fewer); a
header rate that no video has (a browser's WebM says 1000 fps) is replaced by the frames' own; and every node that
takes a video's frame rate (Hand-Pose Sequence Loader and Evaluate had no check) uses the one rule and message of
:func:`echomimic_lib.modes.check_frame_rate`."""
from __future__ import annotations

import fractions
import logging
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from echomimic_lib.errors import EchoMimicError
from tests._pack import sub
from tests.test_nodes import N

STEADY = [round(i * 1000 / 30) for i in range(90)]
PAUSED = STEADY[:45] + [t + 2000 for t in STEADY[45:]]  # a screen recording that stood still for 2 s
FIX = "ffmpeg -i"


def _timed(path, times_ms, bframes=0, sound=False, fmt=None, codec="libx264", rate=30):
    """A video whose frame i is shown at ``times_ms[i]`` (PyAV, per-frame pts), with 1 s of sound if asked."""
    import av

    ms = fractions.Fraction(1, 1000)
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        if codec == "libx264":
            s.options = {"bf": str(bframes)}
        s.codec_context.time_base = ms
        a = c.add_stream("aac", rate=16000) if sound else None
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), i * 2, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, ms
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
        if a is not None:
            wave = (0.1 * np.sin(np.arange(16000) / 8.0)).astype(np.float32)[None]
            for start in range(0, 16000, 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, start:start + 1024]), format="fltp",
                                                   layout="mono")
                chunk.sample_rate, chunk.pts = 16000, start
                c.mux(a.encode(chunk))
            c.mux(a.encode(None))
    return path


# ------------------------------------------------------------------------------------------ one pass for dub
@pytest.mark.parametrize("bframes", [0, 3])
@pytest.mark.parametrize("times", [STEADY, PAUSED], ids=["steady", "paused"])
def test_counting_the_frames_reads_the_timestamps_the_packets_give(tmp_path, times, bframes):
    from echomimic_lib.io.frame_times import count_frames, frame_time_drift, time_drift
    from echomimic_lib.io.video_io import VideoFrames

    path = _timed(tmp_path / "clip.mp4", times, bframes)
    fps, seen = VideoFrames(path).fps, []
    assert count_frames(path, sys.maxsize, seen) == len(seen) == 90
    counted, packets = time_drift(seen, fps), frame_time_drift(path, fps)
    assert counted[1] == packets[1] and counted[0] == pytest.approx(packets[0], abs=1e-6)
    assert (counted[0] > 0.9) if times is PAUSED else (counted[0] < 0.01)
    assert count_frames(path, 3, seen := []) == 3 and len(seen) == 3  # (stops at upto, as before)


class _Planned(Exception):
    """Raised where the dub plans the face track: everything before it has read the source."""


def test_dub_without_speech_reads_the_timestamps_while_counting_not_in_another_pass(tmp_path, monkeypatch, caplog):
    """The variable-rate check demuxed the whole source again after count_frames had decoded it: now the count keeps
    the timestamps. The source is opened three times (header, count, its sound) instead of four; the frames are placed
    by those timestamps (tests/test_vfr_retime_2.py), with a warning."""
    from echomimic_lib.io import audio_file, frame_times, video_io
    from echomimic_lib.jobs import dub, dub_plan

    video = _timed(tmp_path / "paused.mp4", PAUSED, sound=True)
    opened = []

    def spy(real):
        return lambda path: (opened.append(str(path)), real(path))[1]

    monkeypatch.setattr(frame_times, "_open", spy(frame_times._open))
    monkeypatch.setattr(video_io, "_open", spy(video_io._open))
    monkeypatch.setattr(audio_file, "_open", spy(audio_file._open))  # its sound
    monkeypatch.setattr(frame_times, "frame_time_drift", lambda *a: pytest.fail("the source was demuxed again"))
    checked = SimpleNamespace(settings=SimpleNamespace(width=64, height=64, fps=24.0), parts=frozenset(),
                              mediapipe_model=None)
    monkeypatch.setattr(dub, "_validate", lambda req: checked)
    monkeypatch.setattr(dub_plan, "plan_dub_stream", lambda *a, **k: (_ for _ in ()).throw(_Planned()))
    with caplog.at_level(logging.WARNING), pytest.raises(_Planned):
        dub.prepare_dub(dub.DubRequest(video=str(video), audio=None, output=str(tmp_path / "out.mp4")))
    assert opened == [str(video)] * 3, opened
    assert "paused.mp4 has a variable frame rate: its frame 45 is shown 1.00 s away" in caplog.text
    assert "placed by their timestamps" in caplog.text and "in step with the sound" in caplog.text
    assert FIX not in caplog.text


# ------------------------------------------------------------------------------------------ V1 / V2 driving videos
class _Extractor:
    def __init__(self):
        self.frames = 0

    def extract(self, squares, policy, fps, progress=None, total=0):
        self.frames = sum(1 for _ in squares)
        return fps


@pytest.mark.parametrize("times", [STEADY, PAUSED], ids=["steady", "paused"])
def test_driving_landmarks_name_a_variable_frame_rate_and_the_fix(tmp_path, caplog, times):
    """``animate --landmarks VIDEO`` and ``echomimic landmarks VIDEO`` (extract_driving_landmarks): the paused video's
    motion was read as if constant, 1 s off from frame 45 on; its frames are now placed by their timestamps (which ones:
    tests/test_vfr_retime.py), and the warning says so."""
    from echomimic_lib.landmarks.conditions import extract_driving_landmarks

    path, ex = _timed(tmp_path / "drive.mp4", times), _Extractor()
    with caplog.at_level(logging.WARNING):
        fps = extract_driving_landmarks(str(path), extractor=ex)
    assert ex.frames == 90
    if times is STEADY:
        assert not caplog.text and fps == pytest.approx(30, abs=0.01)
        return
    assert "the driving video" in caplog.text and "has a variable frame rate: its frame 45 is shown 1.00 s" in caplog.text
    assert "Its frames were placed by their timestamps on a constant 17.9989 fps clock" in caplog.text  # 90 in 5 s
    assert "so its landmarks keep the video's own timing" in caplog.text and FIX not in caplog.text


@pytest.mark.parametrize("times", [STEADY, PAUSED], ids=["steady", "paused"])
def test_driving_hand_poses_name_a_variable_frame_rate(tmp_path, monkeypatch, caplog, times):
    from echomimic_lib.jobs.pose_sources import video_poses
    from echomimic_lib.pose import dwpose

    seen = []
    monkeypatch.setattr(dwpose, "extract_pose_sequence",
                        lambda frames, detector, on_missing, fps: (seen.extend(1 for _ in frames), SimpleNamespace())[1])
    path = _timed(tmp_path / "drive.mp4", times)
    with caplog.at_level(logging.WARNING):
        video_poses(path, detector=None)
    assert len(seen) == 90
    if times is STEADY:
        assert not caplog.text
    else:
        assert "placed by their timestamps" in caplog.text and "so its hand poses keep the video's own timing" in caplog.text


def test_an_evaluated_video_names_a_variable_frame_rate(tmp_path, caplog):
    from echomimic_lib.evaluate.inputs import load_clip

    with caplog.at_level(logging.WARNING):
        load_clip(_timed(tmp_path / "steady.mp4", STEADY, sound=True))
        assert not caplog.text
        load_clip(_timed(tmp_path / "paused.mp4", PAUSED, sound=True))
    assert "paused.mp4 has a variable frame rate" in caplog.text and "placed by their timestamps" in caplog.text
    assert "scored against the speech as they were shown" in caplog.text


# ------------------------------------------------------------------------------------------ header rates
@pytest.mark.parametrize("fmt,ext,codec", [("matroska", "mkv", "libx264"), ("webm", "webm", "libvpx")])
def test_a_header_rate_no_video_has_is_replaced_by_the_frames_own(tmp_path, caplog, fmt, ext, codec):
    """A browser's WebM recording names its time base (1000 fps) as the rate: it was read at 1000 fps (a dub kept it,
    the landmarks were retimed as if a second lasted 33 frames)."""
    from echomimic_lib.io.video_io import VideoFrames

    path = _timed(tmp_path / f"rec.{ext}", STEADY, fmt=fmt, codec=codec, rate=1000)
    with caplog.at_level(logging.WARNING):
        assert VideoFrames(path).fps == pytest.approx(30, abs=0.01)
        assert VideoFrames(path).fps == pytest.approx(30, abs=0.01)
    assert caplog.text.count("the video's header says 1000 fps; it is read at 30 fps") == 1, caplog.text


def test_a_header_without_a_usable_rate_is_timed_by_its_packets():
    from echomimic_lib.io.frame_times import stream_rate

    ms = fractions.Fraction(1, 1000)
    packets = [SimpleNamespace(pts=t, size=9) for t in STEADY[::-1]]
    container = SimpleNamespace(demux=lambda stream: iter(packets), name="x")
    for header in (None, fractions.Fraction(90000)):
        stream = SimpleNamespace(average_rate=header, guessed_rate=header, time_base=ms)
        assert stream_rate(container, stream, f"raw{header}.h264") == pytest.approx(89 / 2.967)
    cfr = SimpleNamespace(average_rate=fractions.Fraction(30000, 1001), guessed_rate=None, time_base=ms)
    assert stream_rate(None, cfr, "cfr.mp4") == 30000 / 1001  # a video's rate: the header's, as before


# ------------------------------------------------------------------------------------------ one frame-rate rule
RULE = "the frame rate must be a number between 1 and 240 (24 or 25 is typical)."


@pytest.mark.parametrize("fps", [0.0, -24.0, math.nan, 241.0, "fast", True])
def test_every_node_that_takes_a_videos_frame_rate_refuses_it_in_the_same_words_before_its_model(monkeypatch, fps):
    """The Hand-Pose Sequence Loader took float(fps) (0 and NaN timed the poses, "fast" was a ValueError); Evaluate the
    same; Face Track and the Landmark Extractor said it in their own words."""
    detectors = sub("nodes.detectors")
    monkeypatch.setattr(detectors, "dwpose", lambda *a: pytest.fail("DWPose loaded for a bad fps"))
    monkeypatch.setattr(detectors, "face_landmarker", lambda *a: pytest.fail("MediaPipe loaded for a bad fps"))
    frames = torch.rand(2, 64, 64, 3)
    calls = {
        "pose": lambda: N["EchoMimicPoseSequenceLoader"]().execute("none", fps, "loop", "none", "interpolate", False, frames),
        "landmarks": lambda: N["EchoMimicLandmarkExtractor"]().execute(frames, fps, "full frame", "interpolate", 0, False),
        "face track": lambda: sub("nodes.face_track").track(frames, fps, None, 512, 512, -1, "", "ping-pong", False),
        "evaluate": lambda: sub("nodes.evaluate").evaluate(frames, None, fps, "off", "off", False),
    }
    for name, call in calls.items():
        with pytest.raises(sub("echomimic_lib.errors").EchoMimicError) as err:  # (the pack's own copy of the library)
            call()
        assert str(err.value) == f"fps {fps}: {RULE}", name


def test_evaluate_fps_flag_says_it_in_the_same_words(tmp_path):
    from echomimic_lib.evaluate.inputs import load_clip

    with pytest.raises(EchoMimicError) as err:
        load_clip(tmp_path, fps=300.0)
    assert str(err.value) == f"--fps 300.0: {RULE}"
