"""A video file is scored streamed (``load_clip`` keeps a ``VideoFrames``, decoded a frame at a time by the evaluation's
passes): the report equals, to the last digit, the one of the same frames held as an array (``clip_from_arrays``),
learned metrics and FID / FVD against real videos (streamed or arrays) included; the peak memory of scoring a file
stays far below the clip's size and does not grow with its length; bad input still fails early and clearly."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.evaluate import LearnedModels, clip_from_arrays, evaluate, load_clip
from echomimic_lib.evaluate.i3d import I3D
from echomimic_lib.evaluate.inception import InceptionV3
from echomimic_lib.evaluate.syncnet import SyncNet
from echomimic_lib.io.audio_file import read_audio
from echomimic_lib.io.video_io import VideoFrames, read_video, write_video
from echomimic_lib.landmarks.extractor import assemble_sequence
from tests.test_evaluate_learned import _arcface_onnx

MP_MODEL = "mediapipe/face_landmarker_v2_with_blendshapes.task"


# Small stand-ins of the learned networks (the real classes, so evaluate takes them as loaded models): random, cheap,
# and like the real ones they see whole batches, so a different batching would change their float results.
class TinyInception(InceptionV3):
    def __init__(self, features: int = 2048):
        torch.nn.Module.__init__(self)
        torch.manual_seed(0)
        self.p = torch.nn.Conv2d(3, features, 4, 4)

    def forward(self, x):
        return self.p(F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)).mean((2, 3))


class TinyI3D(I3D):
    def __init__(self):
        torch.nn.Module.__init__(self)
        torch.manual_seed(1)
        self.p = torch.nn.Conv3d(3, 400, (4, 28, 28), (4, 28, 28))

    def forward(self, x):
        return self.p(x).mean((2, 3, 4))


class TinySyncNet(SyncNet):
    def __init__(self):
        torch.nn.Module.__init__(self)
        torch.manual_seed(2)
        self.lip, self.aud = torch.nn.Linear(3 * 5 * 64, 64), torch.nn.Linear(13 * 20, 64)

    def forward_lip(self, x):
        return self.lip(F.adaptive_avg_pool3d(x / 255, (5, 8, 8)).flatten(1))

    def forward_aud(self, x):
        return self.aud(x.flatten(1))


@pytest.fixture(scope="module")
def videos(tmp_path_factory, shared_data):
    """A 40-frame talking clip with speech and two real videos (128 px), written with the project's writer."""
    import cv2

    d = tmp_path_factory.mktemp("stream")
    v = read_video(shared_data / "video" / "driving_a.mp4", max_frames=88, with_audio=False).frames
    small = np.stack([cv2.resize(f, (128, 128), interpolation=cv2.INTER_AREA) for f in v])
    wav, sr = read_audio(shared_data / "audio" / "pose_demo_clip.wav")
    gen = write_video(d / "gen.mp4", small[:40], 24.0, wav[:, : int(40 / 24 * sr)], sr)
    real = [write_video(d / "real_a.mp4", small[30:70], 24.0), write_video(d / "real_b.mp4", small[52:88], 24.0)]
    return gen, real, _arcface_onnx(d / "arcface.onnx")


@pytest.mark.slow
def test_a_streamed_video_scores_exactly_as_its_frames_held_in_memory(videos, shared_data):
    from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor

    gen, real, arcface = videos
    whole = read_video(gen)
    in_memory = clip_from_arrays(whole.frames, whole.audio, whole.sample_rate, whole.fps, source=str(gen))
    streamed = load_clip(gen)
    assert isinstance(streamed.frames, VideoFrames) and streamed.frame_count is None  # nothing decoded and kept
    real_arrays = [read_video(p, with_audio=False).frames for p in real]
    real_streams = [VideoFrames(p) for p in real]
    learned = LearnedModels(TinySyncNet(), str(arcface), inception=TinyInception(), i3d=TinyI3D())
    reports = {}
    with FaceLandmarkExtractor(shared_data / MP_MODEL) as ex:
        for name, clip, reals in (("array", in_memory, real_arrays), ("stream", streamed, real_streams)):
            reports[name] = [evaluate(clip, ref, ex, learned, real=reals).to_dict()
                             for ref in (None, shared_data / "images" / "portrait_a.png")]
            reports[name].append(evaluate(clip, None, None, LearnedModels(inception=TinyInception()), real=reals).to_dict())
    assert reports["stream"] == reports["array"]  # exact: every float equal, the notes in the same order
    first = reports["stream"][0]
    assert first["frames"] == 40 and first["face_rate"] == 1.0 and streamed.frame_count == 40
    assert all(first[k] is not None for k in ("av_offset_ms", "flicker", "shape_drift", "lse_c", "lse_d", "csim", "fid", "fvd"))
    assert "FID from 40 generated and 76 real frames" in " ".join(first["notes"])
    assert reports["stream"][2]["flicker"] != first["flicker"]  # no landmarks: the whole frame counts
    assert any("no face region known" in n for n in reports["stream"][2]["notes"])


class FakeLandmarker:
    """Takes the frames one at a time (as MediaPipe's extractor does) and finds the same face in each."""

    def __init__(self, face: dict):
        self.face, self.frames_seen = face, 0

    def extract(self, frames, policy="fail", fps=None, progress=None, total=None):
        results, size = [], None
        for frame in frames:
            size = size or (frame.shape[1], frame.shape[0])
            results.append(self.face)
            self.frames_seen += 1
        return assemble_sequence(results, [1] * len(results), policy, size, fps)


@pytest.fixture(scope="module")
def face(shared_data):
    """MediaPipe's face of the portrait (512 px), the one a FakeLandmarker finds in every frame."""
    import cv2

    from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor

    img = cv2.resize(cv2.imread(str(shared_data / "images" / "portrait_a.png"))[..., ::-1], (512, 512))
    with FaceLandmarkExtractor(shared_data / MP_MODEL) as ex:
        faces = ex.detect(img)
    assert len(faces) == 1
    return faces[0]


def _long_video(path, frames: int, size: int = 512):
    """A clip of ``frames`` frames (a gradient sliding sideways, cheap to encode) with a tone, written with the
    project's writer frame by frame."""
    from echomimic_lib.io.video_writer import Mp4Writer

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    base = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))], -1)
    t = np.arange(int(frames / 25 * 16000)) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)[None]
    with Mp4Writer(path, 25.0, tone, 16000, crf=30) as w:
        for i in range(frames):
            w.write(np.roll(base, 4 * i, axis=1).astype(np.uint8)[None])
        return w.commit()


def _peak_scoring(path, face, arcface, learned_metrics: bool) -> tuple[int, dict]:
    landmarker = FakeLandmarker(face)
    # 64 features, not Inception's 2048: FID's two 2048 x 2048 covariances (67 MB whatever the clip's length) would
    # hide what this measures, the frames held
    learned = LearnedModels(TinySyncNet(), str(arcface), inception=TinyInception(64), i3d=TinyI3D()) if learned_metrics \
        else None
    real = [VideoFrames(path)] if learned_metrics else None
    tracemalloc.start()
    try:
        rep = evaluate(load_clip(path), None, landmarker, learned, real=real)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert landmarker.frames_seen == rep.frames  # the landmarks came from every frame, one at a time
    return peak, rep.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("learned_metrics", [False, True], ids=["weight-free", "learned"])
def test_scoring_a_file_holds_a_few_frames_whatever_its_length(tmp_path, face, videos, learned_metrics):
    n, frame_bytes = 60, 512 * 512 * 3
    peaks = {}
    for frames in (n, 4 * n):
        path = _long_video(tmp_path / f"long_{frames}.mp4", frames)
        peaks[frames], doc = _peak_scoring(path, face, videos[2], learned_metrics)
        assert doc["frames"] == frames and doc["flicker"] > 1.0 and doc["face_rate"] == 1.0
        if learned_metrics:
            assert all(doc[k] is not None for k in ("lse_c", "csim", "fid", "fvd"))
            assert doc["fid"] == pytest.approx(0.0, abs=1e-4)  # the video against itself
    # The whole 240-frame clip is 189 MB (the old whole-array read held all of it): scoring it streamed holds a small
    # part of that (a frame and the previous one, a network batch's frames, crops or faces; torch's own tensors are
    # not traced, numpy's are) ...
    assert peaks[4 * n] < 0.2 * 4 * n * frame_bytes, peaks
    # ... and 4x the frames raise the peak by per-frame numbers only (landmarks, features: tens of kB a frame), not
    # by frames (180 more frames are 142 MB)
    assert peaks[4 * n] - peaks[n] < 0.1 * 3 * n * frame_bytes, peaks


def _counting(monkeypatch) -> list:
    """Patch VideoFrames so that every frame it decodes is counted."""
    decoded, iterate = [], VideoFrames.__iter__

    def counted(self):
        for frame in iterate(self):
            decoded.append(1)
            yield frame

    monkeypatch.setattr(VideoFrames, "__iter__", counted)
    return decoded


def test_loading_a_video_decodes_two_frames_and_a_still_image_is_refused(tmp_path, shared_data, monkeypatch):
    decoded = _counting(monkeypatch)
    clip = load_clip(shared_data / "video" / "driving_a.mp4")  # 288 frames, no audio track
    assert len(decoded) == 2 and clip.wave16k is None and clip.size == (512, 512) and clip.fps == 24.0
    still = write_video(tmp_path / "still.mp4", np.zeros((1, 64, 64, 3), np.uint8), 24.0)
    with pytest.raises(EchoMimicError, match=r"a still image \(1 frame\), not a video"):
        load_clip(still)
    with pytest.raises(EchoMimicError, match="a still image"):
        load_clip(shared_data / "images" / "portrait_a.png")
    rep = evaluate(load_clip(shared_data / "video" / "driving_a.mp4"), None, FakeLandmarker(_face_of(shared_data)))
    assert rep.frames == 288 and any("no audio" in n for n in rep.notes)


def _face_of(shared_data) -> dict:
    from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor

    img = read_video(shared_data / "video" / "driving_a.mp4", max_frames=1, with_audio=False).frames[0]
    with FaceLandmarkExtractor(shared_data / MP_MODEL) as ex:
        return ex.detect(img)[0]


def test_a_video_that_breaks_while_streamed_is_an_error_not_a_missing_metric(videos, face, monkeypatch):
    iterate = VideoFrames.__iter__

    def breaks(self):
        for i, frame in enumerate(iterate(self)):
            if i == 10:
                raise EchoMimicError(f"{self.path}: the video cannot be decoded after 10 frames (test).")
            yield frame

    clip = load_clip(videos[0])
    monkeypatch.setattr(VideoFrames, "__iter__", breaks)
    for landmarker in (FakeLandmarker(face), None):  # in the landmark pass, and in the metrics' pass
        with pytest.raises(EchoMimicError, match="cannot be decoded after 10 frames"):
            evaluate(clip, None, landmarker)


def test_landmark_frames_given_with_a_longer_video_score_the_frames_both_cover(tmp_path, shared_data):
    pkl = shared_data / "v1_pose_pkl"
    count = len(list(pkl.glob("*.pkl")))
    video = write_video(tmp_path / "long.mp4", np.zeros((count + 5, 64, 64, 3), np.uint8), 24.0)
    clip = load_clip(video, audio=shared_data / "audio" / "pose_demo_clip.wav", landmarks=pkl)
    assert clip.num_frames == len(clip.landmarks) == count
    rep = evaluate(clip)
    assert rep.frames == count and rep.flicker == 0.0


def test_the_batched_feeds_give_the_whole_array_figures_exactly(tmp_path):
    from echomimic_lib.evaluate.arcface import ArcFace, CsimFeed, align
    from echomimic_lib.evaluate.fid import InceptionFeed, _as_float

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (70, 112, 112, 3), dtype=np.uint8)
    pts = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]]) + rng.normal(0, 2, (70, 5, 2))
    for nhwc, batch in ((False, None), (True, 1)):  # batches of 32 (the last one 6), and one face at a time
        model = ArcFace(_arcface_onnx(tmp_path / f"arcface_{batch}.onnx", nhwc, batch))
        feed = CsimFeed(model, frames[0], pts[0])
        for f, p in zip(frames, pts):
            feed.add(f, p)
        whole = model.embed(np.stack([align(f, p) for f, p in zip(frames, pts)])) @ feed.ref
        assert feed.result() == float(whole.mean())
    net = TinyInception().eval()
    feed = InceptionFeed(net)
    for f in frames:
        feed.add(f)
    with torch.no_grad():
        whole = torch.cat([net(_as_float(frames[i:i + 16])).double() for i in range(0, len(frames), 16)]).numpy()
    assert np.array_equal(feed.features(), whole)
