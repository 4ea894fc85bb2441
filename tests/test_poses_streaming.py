"""Hand poses from a driving video, streamed: :class:`echomimic_lib.io.video_io.VideoFrames` decodes one frame at a
time, and :func:`echomimic_lib.jobs.pose_sources.video_poses` (``echomimic poses --video``, ``animate --pose VIDEO``)
gives DWPose each frame as it is decoded. The poses are the ones of the whole-video path (every frame decoded into
one array first, then DWPose), on a generated video and on the shared driving video; a stand-in detector (pure
Python, its keypoints computed from the frame's pixels) stands in for the DWPose weights, which tests do not have."""
from __future__ import annotations

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io import video_io
from echomimic_lib.io.video_io import VideoFrames, read_video, write_video
from echomimic_lib.jobs.pose_sources import video_poses
from echomimic_lib.pose.dwpose import extract_pose_sequence
from echomimic_lib.pose.dwpose_tensors import wholebody_to_released
from tests._media import write_wav

FRAMES, NOBODY = 14, (4, 5, 9)  # the generated video: a red square moving right, gone in some frames


def _layout() -> np.ndarray:
    """133 keypoints of an upright half-body in a unit square (face above shoulders above hands), all distinct."""
    k = np.arange(133)
    pos = np.stack([0.1 + (k * 7 % 80) / 100, 0.8 + (k % 7) / 100], axis=1)
    pos[0], pos[1], pos[2], pos[3], pos[4] = (0.5, 0.3), (0.54, 0.28), (0.46, 0.28), (0.58, 0.29), (0.42, 0.29)
    pos[5], pos[6], pos[7], pos[8], pos[9], pos[10] = (0.7, 0.5), (0.3, 0.5), (0.75, 0.65), (0.25, 0.65), (0.72, 0.8), (0.28, 0.8)
    pos[23:91] = np.stack([0.4 + (np.arange(68) % 17) * 0.012, 0.22 + (np.arange(68) // 17) * 0.04], axis=1)
    pos[91:112] = np.stack([0.65 + np.arange(21) * 0.005, 0.78 + np.arange(21) * 0.004], axis=1)
    pos[112:133] = np.stack([0.25 + np.arange(21) * 0.005, 0.79 + np.arange(21) * 0.004], axis=1)
    return pos


LAYOUT = _layout()


def content_detector(frame: np.ndarray):
    """A DWPose stand-in whose answer depends on every pixel: the body moves with the frame's red / green / blue
    means, the scores with its brightness; nobody is found in a frame whose red mean is under 1 (a black frame)."""
    f = np.asarray(frame, np.float64)
    r, g, b = f[..., 0].mean(), f[..., 1].mean(), f[..., 2].mean()
    if r < 1.0 and g < 60:
        return None
    h, w = frame.shape[:2]
    shift = np.array([(r - b) / 255 * 0.08, (g - 128) / 255 * 0.05])
    kpts = (LAYOUT + shift) * np.array([w, h])
    scores = np.full(133, 0.5 + 0.4 * f.mean() / 255)
    return wholebody_to_released(kpts[None], scores[None], (w, h))


def _decoded_whole(path) -> tuple[np.ndarray, float]:
    """The old path's input, decoded here with PyAV directly: every frame in one array, and the stream's rate."""
    import av

    with av.open(str(path)) as container:
        vs = container.streams.video[0]
        fps = float(vs.average_rate or vs.guessed_rate or 25)
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(vs)])
    return frames, fps


def _whole_read_poses(path, detector, on_missing="interpolate", fps=None, max_frames=None):
    """What ``video_poses`` computed before it streamed: the whole video read, then DWPose frame by frame."""
    frames, rate = _decoded_whole(path)
    seq = extract_pose_sequence(frames[:max_frames], detector, on_missing=on_missing, fps=float(fps or rate))
    seq.source = str(path)
    return seq


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    frames = np.zeros((FRAMES, 240, 320, 3), np.uint8)
    frames[..., 1] = 40
    for i in range(FRAMES):
        if i not in NOBODY:
            frames[i, 80:144, 40 + 12 * i:104 + 12 * i] = (255, 0, 0)
    return write_video(tmp_path_factory.mktemp("video") / "moving.mp4", frames, 25.0)


class _Counting:
    """PyAV's container, counting the frames its decoder has handed out and whether it was closed."""

    def __init__(self, container, log):
        self._c, self._log = container, log

    def __getattr__(self, name):
        return getattr(self._c, name)

    def decode(self, *streams):
        for frame in self._c.decode(*streams):
            self._log["decoded"] += 1
            yield frame

    def close(self):
        self._log["closed"] += 1
        self._c.close()


@pytest.fixture
def counted(monkeypatch):
    log = {"decoded": 0, "closed": 0}
    real_open = video_io._open
    monkeypatch.setattr(video_io, "_open", lambda path: _Counting(real_open(path), log))
    return log


# ------------------------------------------------------------------------------------------------ the iterator
def test_video_frames_are_the_decoded_frames_one_at_a_time(moving, shared_data):
    for path in (moving, shared_data / "video" / "driving_a.mp4"):
        want, fps = _decoded_whole(path)
        src = VideoFrames(path)
        assert src.fps == fps and src.size == (want.shape[2], want.shape[1]) and src.estimated_frames == len(want)
        got = list(src)
        assert len(got) == len(want) and all(f.dtype == np.uint8 and f.shape == want.shape[1:] for f in got)
        assert np.array_equal(np.stack(got), want)
        assert np.array_equal(np.stack(list(src)), want)  # iterated again: from the start
        cut = VideoFrames(path, max_frames=5)
        assert cut.estimated_frames == 5 and np.array_equal(np.stack(list(cut)), want[:5])
        clip = read_video(path, with_audio=False)  # the whole-video reader is unchanged
        assert clip.fps == fps and np.array_equal(clip.frames, want)


def test_video_frames_refuse_a_file_without_video(tmp_path):
    wav = write_wav(tmp_path / "a.wav", np.zeros(1600), 16000)
    with pytest.raises(EchoMimicError, match="no video stream"):
        VideoFrames(wav)
    with pytest.raises(EchoMimicError, match="file not found"):
        VideoFrames(tmp_path / "nope.mp4")


def test_video_frames_decode_lazily_and_close_the_file(moving, counted):
    it = iter(VideoFrames(moving))
    assert counted["decoded"] == 0
    next(it), next(it)
    assert counted["decoded"] == 2  # no read-ahead beyond what was asked for
    it.close()
    assert counted["closed"] == 2  # the header probe's and the iteration's


# ------------------------------------------------------------------------------------------------ video_poses
def test_streamed_poses_equal_the_whole_video_path(moving, shared_data):
    for path, kwargs in ((moving, {}), (moving, {"on_missing": "hold", "fps": 12.5}), (moving, {"max_frames": 7}),
                         (shared_data / "video" / "driving_a.mp4", {})):
        want = _whole_read_poses(path, content_detector, **kwargs)
        got = video_poses(path, content_detector, **kwargs)
        assert got.identical(want), (path, kwargs)
        assert got.source == want.source == str(path)
        assert got.report.missing_frames == want.report.missing_frames
        assert got.report.image_size == want.report.image_size and got.report.crop == want.report.crop
        if path == moving and "max_frames" not in kwargs:
            assert got.report.missing_frames == list(NOBODY) and len(got) == FRAMES


def test_streamed_poses_equal_the_whole_video_path_with_the_dwpose_stand_in(moving):
    """The real DWPose code (ONNX Runtime, letterbox, SimCC decoding) with the tiny stand-in models of the DWPose tests."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from echomimic_lib.pose.dwpose import DWPoseDetector
    from tests.test_pose_dwpose import build_peak_pose, build_red_detector, layout_positions

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        det = DWPoseDetector(build_red_detector(Path(d) / "det.onnx"), build_peak_pose(Path(d) / "pose.onnx", layout_positions()))
        want = _whole_read_poses(moving, det)
        got = video_poses(moving, det)
    assert got.identical(want) and got.report.missing_frames == want.report.missing_frames == list(NOBODY)


def test_dwpose_sees_each_frame_as_it_is_decoded(moving, counted):
    seen = []

    def detector(frame):
        seen.append(counted["decoded"])  # frames decoded when DWPose is called on frame len(seen) - 1
        return content_detector(frame)

    progress = []
    video_poses(moving, detector, progress=lambda done, total: progress.append((done, total)))
    assert seen == list(range(1, FRAMES + 1))  # the whole-video path: [14, 14, ...]
    assert counted["decoded"] == FRAMES and counted["closed"] == 2
    assert progress == [(i, FRAMES) for i in range(1, FRAMES + 1)]  # the container's count is exact here


def test_progress_never_reads_finished_before_the_last_frame(moving, monkeypatch):
    class Underestimating(VideoFrames):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.estimated_frames = 5

    monkeypatch.setattr(video_io, "VideoFrames", Underestimating)
    calls = []
    video_poses(moving, content_detector, progress=lambda done, total: calls.append((done, total)))
    assert [d for d, _ in calls] == list(range(1, FRAMES + 1)) and calls[-1] == (FRAMES, FRAMES)
    assert all(done < total for done, total in calls[:-1])  # a bar is closed once done reaches total


def test_the_video_is_closed_when_dwpose_stops_early(moving, counted):
    def failing(frame):
        if counted["decoded"] == 3:
            raise RuntimeError("DWPose failed")
        return content_detector(frame)

    with pytest.raises(RuntimeError, match="DWPose failed"):
        video_poses(moving, failing)
    assert counted["decoded"] == 3 and counted["closed"] == 2  # not decoded on, and the file closed at once
