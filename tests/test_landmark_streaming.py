"""Face landmarks from a driving video, streamed: ``FaceLandmarkExtractor.extract`` takes a path (decoded one frame at
a time by :class:`echomimic_lib.io.video_io.VideoFrames`) or any iterator lazily, and so do the V1 driving-video paths
(``animate --landmarks VIDEO`` through ``conditions_from_driving_video``, ``echomimic landmarks VIDEO``) and DWPose's
``extract_pose_sequence(path)``. The results are the ones of the whole-video path (every frame decoded into one array,
then MediaPipe on each), with the real MediaPipe model on a short cut of the shared driving video (non-square, so the
V1 centre crop matters, with two black frames the bad-frame policy fills)."""
from __future__ import annotations

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io import video_io
from echomimic_lib.io.video_io import VideoFrames, write_video

pytest.importorskip("mediapipe")
cv2 = pytest.importorskip("cv2")

from echomimic_lib.landmarks.conditions import center_square, conditions_from_driver, conditions_from_driving_video  # noqa: E402
from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor, _face_area, assemble_sequence  # noqa: E402
from tests.test_poses_streaming import _Counting, _decoded_whole, content_detector  # noqa: E402

MP = "face_landmarker_v2_with_blendshapes.task"
FRAMES, BLANK = 12, (5, 6)
KEYS = ("lmks", "lmks3d", "trans_mat", "blendshapes", "valid", "face_counts")


@pytest.fixture(scope="module")
def model(shared_data):
    return shared_data / "mediapipe" / MP


@pytest.fixture(scope="module")
def extractor(model):
    ex = FaceLandmarkExtractor(model_path=model)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def short(tmp_path_factory, shared_data):
    """The first frames of the driving video, widened to 576x512 (grey bars: the centre crop cuts them), two black."""
    frames = np.stack(list(VideoFrames(shared_data / "video" / "driving_a.mp4", max_frames=FRAMES)))
    wide = np.full((FRAMES, frames.shape[1], frames.shape[2] + 64, 3), 90, np.uint8)
    wide[:, :, 32:-32] = frames
    wide[list(BLANK)] = 0
    return write_video(tmp_path_factory.mktemp("lmstream") / "short.mp4", wide, 24.0)


@pytest.fixture(scope="module")
def portrait(shared_data):
    return np.ascontiguousarray(cv2.imread(str(shared_data / "images" / "portrait_b.png"))[:, :, ::-1])


def _whole_read(extractor, frames, policy, fps):
    """What extraction computed before it streamed: every frame in memory, then MediaPipe on each in turn."""
    results, counts = [], []
    for f in frames:
        faces = extractor.detect(f)
        counts.append(len(faces))
        results.append(max(faces, key=_face_area) if len(faces) == 1 else None)
    return assemble_sequence(results, counts, policy, (frames.shape[2], frames.shape[1]), fps)


@pytest.fixture(scope="module")
def reference(extractor, short):
    """The whole-read results: the frames as decoded, and the V1 driver's (each frame centre-cropped to 512)."""
    frames, fps = _decoded_whole(short)
    squares = np.stack([center_square(f) for f in frames])
    return {"frames": frames, "fps": fps, "raw": _whole_read(extractor, frames, "hold", fps),
            "driver": _whole_read(extractor, squares, "interpolate", fps)}


def _same(a, b):
    for k in KEYS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert (a.fps, a.policy, a.image_size, a.blendshape_names) == (b.fps, b.policy, b.image_size, b.blendshape_names)


@pytest.fixture
def counted(monkeypatch):
    """Frames decoded so far (PyAV's decoder counted), and the count each time MediaPipe is called on a frame."""
    log = {"decoded": 0, "closed": 0, "seen": []}
    real_open, real_detect = video_io._open, FaceLandmarkExtractor.detect

    def detect(self, image):
        log["seen"].append(log["decoded"])
        return real_detect(self, image)

    monkeypatch.setattr(video_io, "_open", lambda path: _Counting(real_open(path), log))
    monkeypatch.setattr(FaceLandmarkExtractor, "detect", detect)
    return log


# ------------------------------------------------------------------------------------------------ extract
def test_extract_streams_a_video_path_with_the_whole_read_results(extractor, short, reference, counted):
    progress = []
    got = extractor.extract(short, policy="hold", progress=lambda done, total: progress.append((done, total)))
    _same(got, reference["raw"])
    assert got.bad_frames == list(BLANK) and got.fps == reference["fps"] == 24.0 and got.image_size == (576, 512)
    assert counted["seen"] == list(range(1, FRAMES + 1))  # the whole-video path: [12, 12, ...]
    assert counted["closed"] == 2  # the header probe's and the decoding's
    assert progress == [(i, FRAMES) for i in range(1, FRAMES + 1)]


def test_extract_takes_an_iterator_lazily_and_any_iterable_equally(extractor, reference):
    frames = reference["frames"]
    taken, seen = [], []

    def generator():
        for f in frames:
            taken.append(1)
            yield f

    real = extractor.detect
    extractor.detect = lambda image: (seen.append(len(taken)), real(image))[1]
    try:
        progress = []
        lazy = extractor.extract(generator(), policy="hold", fps=24.0, progress=lambda d, t: progress.append((d, t)))
    finally:
        del extractor.detect
    _same(lazy, reference["raw"])
    assert seen == list(range(1, FRAMES + 1))  # each frame analysed before the next one is asked for
    # no length known: the total is one ahead until the last frame, then the real count
    assert progress == [(i, i + 1) for i in range(1, FRAMES)] + [(FRAMES, FRAMES)]
    hinted = []
    extractor.extract(iter(frames[:4]), policy="hold", total=3, progress=lambda d, t: hinted.append((d, t)))
    assert hinted == [(1, 3), (2, 3), (3, 4), (4, 4)]  # a low hint never reads finished before the last frame
    for given in (list(frames), frames, video_io.VideoClip(frames, 24.0)):
        _same(extractor.extract(given, policy="hold", fps=24.0), reference["raw"])


def test_extract_keeps_its_refusals(extractor, reference, tmp_path):
    with pytest.raises(EchoMimicError, match="the video has no frames"):
        extractor.extract(iter(()))
    frames = reference["frames"]
    with pytest.raises(EchoMimicError, match="frame 2 is 512x512 but frame 0 is 576x512"):
        extractor.extract(x for x in (frames[0], frames[1], frames[2, :, 32:-32]))
    silent = write_video(tmp_path / "tiny.mp4", np.zeros((2, 64, 64, 3), np.uint8), 24.0)
    with pytest.raises(EchoMimicError, match="no single face"):
        extractor.extract(silent, policy="interpolate")


# ------------------------------------------------------------------------------------------------ V1 driving video
def test_animate_landmark_conditions_from_a_video_stream_and_equal_the_whole_read_ones(extractor, short, reference,
                                                                                        portrait, counted):
    progress = []
    images, driver = conditions_from_driving_video(short, portrait, 17, (256, 320), parts="all", out_fps=12.0,
                                                   extractor=extractor, progress=lambda d, t: progress.append((d, t)))
    counted["seen"].pop()  # the reference portrait's own detection, after the video
    assert counted["seen"] == list(range(1, FRAMES + 1)) and counted["closed"] == 2
    _same(driver, reference["driver"])
    assert driver.bad_frames == list(BLANK) and driver.image_size == (512, 512)
    want = conditions_from_driver(reference["driver"], portrait, 17, (256, 320), parts="all", out_fps=12.0,
                                  extractor=extractor)
    assert images.shape == (17, 320, 256, 3) and np.array_equal(images, want)
    assert progress == [(i, FRAMES) for i in range(1, FRAMES + 1)]


def test_an_empty_driving_video_is_refused_before_mediapipe(tmp_path, monkeypatch):
    import echomimic_lib.landmarks.extractor as extractor_module

    def no_model(*a, **k):
        raise AssertionError("MediaPipe loaded")

    monkeypatch.setattr(extractor_module, "FaceLandmarkExtractor", no_model)
    with pytest.raises(EchoMimicError, match="the driving video has no frames"):
        conditions_from_driving_video(iter(()), np.zeros((64, 64, 3), np.uint8), 4)
    with pytest.raises(EchoMimicError, match="file not found"):
        conditions_from_driving_video(tmp_path / "nope.mp4", np.zeros((64, 64, 3), np.uint8), 4)


def test_the_landmarks_command_streams_and_saves_the_whole_read_landmarks(model, short, reference, tmp_path, counted):
    from echomimic_lib.jobs.landmarks_extract import LandmarksRequest, run_landmarks
    from echomimic_lib.landmarks.io import load_sequence

    progress = []
    summary = run_landmarks(LandmarksRequest(str(short), str(tmp_path / "drv.npz"), preview=str(tmp_path / "p.mp4"),
                                             mediapipe_model=str(model), download=False),
                            progress=lambda d, t: progress.append((d, t)))
    assert summary["frames"] == FRAMES and summary["no_face"] == len(BLANK) and summary["fps"] == 24.0
    _same(load_sequence(tmp_path / "drv.npz"), reference["driver"])
    checked = counted["seen"][0] - 1  # frames the up-front check decoded (it counts them, keeping none)
    assert counted["seen"] == [checked + i for i in range(1, FRAMES + 1)]
    assert progress[-1] == (FRAMES, FRAMES) and len(progress) == FRAMES
    assert video_io.probe(tmp_path / "p.mp4")["frames"] == FRAMES


# ------------------------------------------------------------------------------------------------ DWPose
def test_dwpose_pose_sequence_streams_a_video_path(short, counted):
    from echomimic_lib.pose.dwpose import extract_pose_sequence

    seen = []

    def detector(frame):
        seen.append(counted["decoded"])
        return content_detector(frame)

    got = extract_pose_sequence(short, detector, max_frames=9)
    frames, fps = _decoded_whole(short)
    want = extract_pose_sequence(frames[:9], content_detector, fps=fps)
    assert seen == list(range(1, 10)) and counted["closed"] == 2
    assert got.identical(want) and got.source == str(short) and got.report.missing_frames == want.report.missing_frames

    def failing(frame):
        if counted["decoded"] == 3:
            raise RuntimeError("DWPose failed")
        return content_detector(frame)

    counted["decoded"] = counted["closed"] = 0
    with pytest.raises(RuntimeError, match="DWPose failed"):
        extract_pose_sequence(short, failing)
    assert counted["decoded"] == 3 and counted["closed"] == 2  # the file closed at once


def test_landmarks_command_checks_the_video_by_its_first_frame(tmp_path, monkeypatch):
    """An audio file or a damaged file given as VIDEO is refused before MediaPipe, without decoding the whole file."""
    from pathlib import Path

    from echomimic_lib.jobs import landmarks_extract

    with pytest.raises(EchoMimicError, match=r"no video frames \(an audio file\?\)"):
        landmarks_extract._check_video(Path(__file__).resolve().parents[2] / "shared" / "data" / "audio" / "echomimic_en.wav")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(EchoMimicError):
        landmarks_extract._check_video(bad)
    asked = []
    real = video_io.count_frames
    monkeypatch.setattr(video_io, "count_frames", lambda p, upto: (asked.append(upto), real(p, upto))[1])
    monkeypatch.setattr(video_io, "probe", lambda p: pytest.fail("the whole file was decoded to check it"))
    landmarks_extract._check_video(Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "driving_a.mp4")
    assert asked == [1]
