"""Variable frame rate (VFR) driving videos are retimed, not only warned about.

A phone's recording or a screen recording that paused was read frame after frame at its header's rate: the V1 driving
landmarks (``animate --landmarks VIDEO``, ``echomimic landmarks``), the V2 driving hand poses (``--pose VIDEO``,
``echomimic poses --video``) and an evaluated video drifted from the sound, with a warning. Now each tick ``n / fps``
takes the frame whose timestamp is nearest it (:mod:`echomimic_lib.io.retime`); a constant rate video is read as before,
bit for bit. Each test video paints its frame number into its frames (in binary, a black or white stripe a bit), so
the frames a reader took can be told apart."""
from __future__ import annotations

import fractions
import logging
from types import SimpleNamespace

import numpy as np
import pytest

STEADY = [round(i * 1000 / 30) for i in range(90)]
PAUSED = STEADY[:45] + [t + 2000 for t in STEADY[45:]]  # 30 fps, a 2-s pause, 30 fps
SLOWED = [round(i * 1000 / 30) for i in range(60)] + [2000 + round(i * 1000 / 12) for i in range(40)]  # 30, then 12 fps
JITTER = [t + (7 if i % 3 == 1 else 0) for i, t in enumerate(STEADY)]  # a phone's uneven clock, well under 0.1 s


def _painted(path, times_ms, bframes=0):
    """An H.264 mp4 whose frame i is shown at ``times_ms[i]`` and shows i in binary: 8 stripes 8 px wide, bit k white
    in stripe k."""
    import av

    ms = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        s.options = {"bf": str(bframes)}
        s.codec_context.time_base = ms
        for i, t in enumerate(times_ms):
            bits = (i >> np.arange(8)) & 1
            image = np.repeat(np.repeat(bits * 255, 8)[None, :, None], 64, axis=0).astype(np.uint8).repeat(3, axis=2)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = t, ms
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


def _number(frame) -> int:
    """The number painted in ``frame`` (any size: the stripes are read across its middle row)."""
    row = np.asarray(frame)[len(frame) // 2].mean(axis=1)
    width = len(row) / 8
    return sum(1 << k for k in range(8) if row[int((k + 0.5) * width)] > 127)


def _nearest(times_s, fps):
    """What each tick n / fps should show, by brute force: the frame nearest in time (the later one on a tie)."""
    t = np.asarray(times_s, float) - times_s[0]
    ticks = np.arange(int(round(t[-1] * fps)) + 1) / fps
    gap = np.abs(t[None, :] - ticks[:, None])
    return [int(np.flatnonzero(row <= row.min() + 1e-12)[-1]) for row in gap]


def _decoded_times(path):
    from echomimic_lib.io.video_io import VideoFrames

    return [t for t, _ in VideoFrames(path).timed()]


# ------------------------------------------------------------------------------------------ the index mapping
def test_ticks_take_the_nearest_timestamp():
    from echomimic_lib.io.retime import nearest_frames, on_the_clock, tick_count

    rng = np.random.default_rng(3)
    for _ in range(20):
        times = np.cumsum(rng.uniform(0.005, 0.4, size=40))
        fps = float(rng.uniform(10, 60))
        assert nearest_frames(times, fps).tolist() == _nearest(times, fps)
        assert len(nearest_frames(times, fps)) == tick_count(times, fps)
    steady = [i / 25 for i in range(50)]
    assert nearest_frames(steady, 25).tolist() == list(range(50))  # a constant rate: every frame once, in order
    paused = [0.0, 0.1, 0.2, 1.25]
    assert nearest_frames(paused, 10).tolist() == [0, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3]
    assert list(on_the_clock([], 10)) == [] and tick_count([], 10) == 0
    assert list(on_the_clock([(None, "a"), (None, "b"), (None, "c")], 5)) == ["a", "b", "c"]  # no timestamps: in order
    restarted = [(0.0, "a"), (0.1, "b"), (0.2, "c"), (0.0, "d"), (0.1, "e")]  # a clock that starts again: none lost
    assert list(on_the_clock(restarted, 10)) == ["a", "b", "c", "d", "e"]


# ------------------------------------------------------------------------------------------ the readers
@pytest.mark.parametrize("bframes", [0, 3])
@pytest.mark.parametrize("times", [PAUSED, SLOWED], ids=["paused", "slowed"])
def test_a_variable_rate_videos_frames_are_placed_by_their_timestamps(tmp_path, caplog, times, bframes):
    from echomimic_lib.io.retime import ClockedFrames, on_clock
    from echomimic_lib.io.video_io import VideoFrames

    path = _painted(tmp_path / "vfr.mp4", times, bframes)  # (B-frames: stored out of the order shown)
    with caplog.at_level(logging.WARNING):
        video = on_clock(VideoFrames(path), "the driving video", "its landmarks keep the video's own timing")
    assert isinstance(video, ClockedFrames)
    got = [_number(f) for f in video]
    want = _nearest(_decoded_times(path), video.fps)
    assert got == want and len(got) == video.estimated_frames == video.count()
    assert got != list(range(len(times)))
    ms = np.asarray(times)
    for n, i in enumerate(got):  # each tick shows the frame on screen nearest its time
        assert abs(ms[i] - n * 1000 / video.fps) <= np.abs(ms - n * 1000 / video.fps).min() + 1
    if times is PAUSED:
        assert got.count(44) + got.count(45) >= 36  # the 2-s pause at about 18 fps: its frames held
    assert "has a variable frame rate" in caplog.text and "placed by their timestamps" in caplog.text
    assert f"constant {video.fps:g} fps clock" in caplog.text and "ffmpeg" not in caplog.text


def _driving_landmarks(path):
    from echomimic_lib.landmarks.conditions import extract_driving_landmarks

    class Extractor:
        def extract(self, squares, policy, fps, progress=None, total=0):
            self.frames, self.total = list(squares), total
            return fps

    ex = Extractor()
    fps = extract_driving_landmarks(str(path), extractor=ex)
    return ex, fps


def test_driving_landmarks_follow_a_variable_rate_videos_timestamps(tmp_path, caplog):
    """``animate --landmarks VIDEO`` / ``echomimic landmarks VIDEO``: the landmarks are those of the frame shown at
    each tick of the video's rate (it was frame after frame: 1 s behind the sound after the pause)."""
    from echomimic_lib.io.video_io import VideoFrames

    path = _painted(tmp_path / "paused.mp4", PAUSED)
    with caplog.at_level(logging.WARNING):
        ex, fps = _driving_landmarks(path)
    assert fps == VideoFrames(path).fps
    assert [_number(f) for f in ex.frames] == _nearest(_decoded_times(path), fps) and ex.total == len(ex.frames)
    assert "the driving video" in caplog.text and "so its landmarks keep the video's own timing" in caplog.text


@pytest.mark.parametrize("times", [STEADY, JITTER], ids=["steady", "jitter"])
def test_a_constant_rate_driving_video_is_read_as_before(tmp_path, caplog, times):
    """Parity: a constant rate video (or one whose clock wavers well under 0.1 s) gives every frame once, in order,
    the very arrays a plain decode gives, and no warning."""
    from echomimic_lib.io.retime import on_clock
    from echomimic_lib.io.video_io import VideoFrames

    path = _painted(tmp_path / "cfr.mp4", times)
    video = VideoFrames(path)
    assert on_clock(video, "the driving video", "x") is video
    with caplog.at_level(logging.WARNING):
        ex, _ = _driving_landmarks(path)
    plain = list(VideoFrames(path))
    assert len(ex.frames) == len(plain) == 90 and not caplog.text
    from echomimic_lib.landmarks.conditions import center_square

    assert all(np.array_equal(a, center_square(b)) for a, b in zip(ex.frames, plain))
    assert [_number(f) for f in ex.frames] == list(range(90))


@pytest.mark.parametrize("max_frames", [None, 40])
def test_driving_hand_poses_follow_a_variable_rate_videos_timestamps(tmp_path, monkeypatch, caplog, max_frames):
    """``--pose VIDEO`` / ``echomimic poses --video`` (video_poses): DWPose sees the frame of each tick; ``--length``
    counts ticks."""
    from echomimic_lib.io.video_io import VideoFrames
    from echomimic_lib.jobs.pose_sources import video_poses
    from echomimic_lib.pose import dwpose

    seen = []
    monkeypatch.setattr(dwpose, "extract_pose_sequence", lambda frames, detector, on_missing, fps: (
        seen.extend(_number(f) for f in frames), SimpleNamespace(fps=fps))[1])
    path = _painted(tmp_path / "paused.mp4", PAUSED)
    with caplog.at_level(logging.WARNING):
        seq = video_poses(path, detector=None, max_frames=max_frames)
    want = _nearest(_decoded_times(path), VideoFrames(path).fps)
    assert seen == want[:max_frames] and seq.fps == VideoFrames(path).fps
    assert "so its hand poses keep the video's own timing" in caplog.text


def test_an_evaluated_variable_rate_video_is_scored_on_its_clock(tmp_path, caplog):
    from echomimic_lib.evaluate.inputs import load_clip
    from echomimic_lib.io.retime import ClockedFrames

    path = _painted(tmp_path / "paused.mp4", PAUSED)
    with caplog.at_level(logging.WARNING):
        clip = load_clip(path, audio=None)
    assert isinstance(clip.frames, ClockedFrames)
    got = [_number(f) for f in clip.frames]
    assert got == _nearest(_decoded_times(path), clip.fps) and clip.num_frames == len(got)
    assert "scored against the speech as they were shown" in caplog.text
    steady = load_clip(_painted(tmp_path / "steady.mp4", STEADY))
    assert not isinstance(steady.frames, ClockedFrames) and steady.num_frames == 90
