"""Variable frame rate (VFR) videos retimed where they were still read frame after frame (tests/test_vfr_retime.py has
the driving videos and ``evaluate``): ``echomimic dub``'s source video (it only warned: the dub of a screen recording
that paused drifted from its sound by seconds), FID / FVD's real videos (``evaluate --real``), and the library's
readers that take a video path themselves (the face landmark extractor, DWPose). Each test video paints its frame
number into its frames (in binary, a black or white stripe a bit), so the frames a reader took can be told apart; a
constant rate video stays bit for bit what it was."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from tests.test_vfr_retime import PAUSED, SLOWED, STEADY, _decoded_times, _nearest, _number, _painted


class _Planned(Exception):
    """Raised where the dub plans the face track: everything before it has read the source."""


def _painted_gop(path, times_ms, bframes=0, gop=10):
    """:func:`_painted` with a keyframe every ``gop`` frames (a jump back is sought near its frame)."""
    import av

    _painted(path, times_ms, bframes)
    with av.open(str(path)) as c:  # re-encoded from the painted frames, with their timestamps
        frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        base = c.streams.video[0].time_base
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        s.options = {"bf": str(bframes), "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        s.codec_context.time_base = base
        for pts, image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, base
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


def _plan_only(monkeypatch, seen, reference_frame=0):
    """prepare_dub up to the face track (checks and tracking faked): what the plan was handed lands in ``seen``; the
    fake plan cuts the reference frame ``reference_frame`` whole (a 64 x 64 crop of a 64 x 64 video)."""
    from echomimic_lib.jobs import dub, dub_plan

    checked = SimpleNamespace(settings=SimpleNamespace(width=64, height=64, fps=24.0), parts=frozenset(),
                              mediapipe_model=None)
    monkeypatch.setattr(dub, "_validate", lambda req: checked)
    geometry = SimpleNamespace(box=(0, 0, 64, 64), output_size=(64, 64))

    def plan(read, n_src, src_fps, n_model, model_fps, n_out, *a, **k):
        seen.update(read=read, n_src=n_src, src_fps=src_fps, n_out=n_out)
        return SimpleNamespace(geometry=geometry, source_size=(64, 64), reference_frame=reference_frame)

    monkeypatch.setattr(dub_plan, "plan_dub_stream", plan)


# ------------------------------------------------------------------------------------------ dub
@pytest.mark.parametrize("bframes", [0, 3])
@pytest.mark.parametrize("times", [PAUSED, SLOWED], ids=["paused", "slowed"])
def test_dub_places_a_variable_rate_source_on_the_clock(tmp_path, monkeypatch, caplog, times, bframes):
    """The face track, the reference frame and the frames composited under each output frame are the ticks of the
    source's rate (each the frame shown nearest ``k / fps``), not the frames one after another: the landmark-only dub
    (the source's own length) has one output frame a tick."""
    from echomimic_lib.io.video_io import VideoFrames
    from echomimic_lib.jobs import dub
    from echomimic_lib.jobs.dub_stream import SourceWindow

    path = _painted_gop(tmp_path / "vfr.mp4", times, bframes)
    fps = VideoFrames(path).fps
    want = _nearest(_decoded_times(path), fps)
    seen: dict = {}
    _plan_only(monkeypatch, seen, reference_frame=50)
    with caplog.at_level(logging.WARNING):
        job = dub.prepare_dub(dub.DubRequest(video=str(path), audio=None, output=str(tmp_path / "out.mp4")))
    assert seen["n_src"] == seen["n_out"] == len(want) and seen["src_fps"] == job.fps == fps
    assert want != list(range(len(want)))
    assert [_number(f) for f in seen["read"](len(want))] == want  # the face track's frames
    assert [_number(f) for f in seen["read"](7)] == want[:7]
    assert _number(job.reference) == want[50]  # --reference-frame counts ticks
    assert [_number(f) for f in job.frames(len(want))] == want
    # compositing: in order, then jumps back (ping-pong) that seek near the tick's frame, bit for bit a plain read
    window = SourceWindow(job.frames, len(want), 6)
    order = list(range(len(want))) + list(range(len(want) - 1, -1, -1)) + [40, 3, 77]
    plain = list(job.frames(len(want)))
    for i in order:
        assert np.array_equal(window.get(i), plain[i]), i
    window.close()
    # a backward window read again from a keyframe near it (from the start: over 8 times the frames)
    assert job.clocked.index.decoded < 5 * len(want)
    assert "the source video" in caplog.text and "placed by their timestamps" in caplog.text
    assert "so the dub's frame k shows the source at k / fps, in step with the sound" in caplog.text
    assert "ffmpeg" not in caplog.text


@pytest.mark.parametrize("times", [STEADY], ids=["steady"])
def test_dub_reads_a_constant_rate_source_as_before(tmp_path, monkeypatch, caplog, times):
    """Parity: a constant rate source gives every frame once, in order, the very arrays of a plain decode; no warning,
    the file decoded no more than before (its header, one counting pass, the reference)."""
    from echomimic_lib.io.video_io import VideoFrames
    from echomimic_lib.jobs import dub

    path = _painted(tmp_path / "cfr.mp4", times)
    seen: dict = {}
    _plan_only(monkeypatch, seen, reference_frame=50)
    with caplog.at_level(logging.WARNING):
        job = dub.prepare_dub(dub.DubRequest(video=str(path), audio=None, output=str(tmp_path / "out.mp4")))
    assert seen["n_src"] == 90 and not caplog.text
    plain = list(VideoFrames(path))
    for got in (list(seen["read"](90)), list(job.frames(90)), list(job.frames(None))):
        assert len(got) == 90 and all(np.array_equal(a, b) for a, b in zip(got, plain))
    assert type(job.frames(5)) is VideoFrames and np.array_equal(job.reference, plain[50])


def _face_video(path, shared, times_ms):
    """A face video (driving_a's frames, 128 x 128 under a 16-px band) whose frame i is shown at ``times_ms[i]`` and
    paints i in binary in the band (8 stripes 16 px wide)."""
    import fractions

    import av
    import cv2

    from echomimic_lib.io.video_io import VideoFrames

    faces = [f for f, _ in zip(VideoFrames(shared / "video" / "driving_a.mp4"), times_ms)]
    ms = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt, s.options = 128, 144, "yuv444p", {"crf": "10"}
        s.codec_context.time_base = ms
        for i, (t, face) in enumerate(zip(times_ms, faces)):
            image = np.zeros((144, 128, 3), np.uint8)
            image[16:] = cv2.resize(face, (128, 128), interpolation=cv2.INTER_AREA)
            image[:16] = np.repeat(((i >> np.arange(8)) & 1) * 255, 16)[None, :, None]
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, ms
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


def test_a_dubbed_variable_rate_video_shows_each_moments_frame(tiny_comfy_models, shared_data, tmp_path):
    """End to end (tiny random weights): ``echomimic dub`` of a video that stood still for 1 s writes, as its frame k,
    the source frame shown nearest k / fps (it wrote the frames one after another: 1 s early after the pause)."""
    from echomimic_lib.io.video_io import VideoFrames
    from echomimic_lib.jobs.dub import DubRequest, run_dub

    times = [i * 40 for i in range(12)] + [1480 + i * 40 for i in range(12)]  # 25 fps, 1 s still, 25 fps
    path = _face_video(tmp_path / "paused.mp4", shared_data, times)
    fps = VideoFrames(path).fps
    want = _nearest(_decoded_times(path), fps)
    req = DubRequest(video=str(path), audio=None, output=str(tmp_path / "out.mp4"), models=str(tiny_comfy_models / "echomimic"),
                     width=64, height=64, steps=1, cfg=1.0, context_frames=12, context_overlap=0, download=False)
    summary = run_dub(req)
    out = VideoFrames(tmp_path / "out.mp4")
    got = [_number(f[:16]) for f in out]
    assert summary["frames"] == len(got) == len(want) > len(times) and out.fps == pytest.approx(fps, rel=1e-3)
    assert got == want


# ------------------------------------------------------------------------------------------ FID / FVD
def test_fid_fvd_real_videos_are_placed_on_their_clock(tmp_path, caplog):
    """``evaluate --real``: a real video's frames (FID) and 16-frame clips (FVD) are those shown at each tick."""
    from echomimic_lib.cli.evaluate import _read_real
    from echomimic_lib.evaluate.passes import score_against_real
    from echomimic_lib.io.video_io import VideoFrames

    paused, steady = _painted(tmp_path / "paused.mp4", PAUSED), _painted(tmp_path / "steady.mp4", STEADY)

    class Metric:
        failed, frames, ends = False, [], 0

        def guard(self, fn, *a):
            return fn(*a)

        def add_real(self, frame):
            self.frames.append(_number(frame))

        def end_video(self):
            self.ends += 1

        def score(self):
            pass

    m = Metric()
    with caplog.at_level(logging.WARNING):
        real = _read_real([paused, steady])
    score_against_real([m], real)
    want = _nearest(_decoded_times(paused), VideoFrames(paused).fps)
    assert m.frames == want + list(range(90)) and m.ends == 2
    assert "paused.mp4 has a variable frame rate" in caplog.text and "placed by their timestamps" in caplog.text
    assert "steady.mp4" not in caplog.text and type(real[1]) is VideoFrames


# ------------------------------------------------------------------------------------------ readers given a path
def test_the_landmark_extractor_given_a_video_path_places_its_frames(tmp_path, caplog):
    """FaceLandmarkExtractor.extract(path): the library reader takes each tick's frame (was: one after another)."""
    from echomimic_lib.io.video_io import VideoFrames
    from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor

    seen = []
    ex = FaceLandmarkExtractor.__new__(FaceLandmarkExtractor)
    ex._extract_stream = lambda frames, policy, fps: (seen.extend(_number(f) for f in frames), fps)[1]
    path = _painted(tmp_path / "paused.mp4", PAUSED)
    with caplog.at_level(logging.WARNING):
        fps = ex.extract(str(path))
    assert seen == _nearest(_decoded_times(path), VideoFrames(path).fps) and fps == VideoFrames(path).fps
    assert "placed by their timestamps" in caplog.text
    seen.clear()
    ex.extract(str(_painted(tmp_path / "steady.mp4", STEADY)))
    assert seen == list(range(90))


def test_dwpose_given_a_video_path_places_its_frames(tmp_path, monkeypatch, caplog):
    from echomimic_lib.io.video_io import VideoFrames
    from echomimic_lib.pose import dwpose

    seen = []

    def detect(frame):
        seen.append(_number(frame))
        return None

    monkeypatch.setattr(dwpose, "fill_missing", lambda raw, policy: (_ for _ in ()).throw(_Planned()))
    path = _painted(tmp_path / "paused.mp4", PAUSED)
    with caplog.at_level(logging.WARNING), pytest.raises(_Planned):
        dwpose.extract_pose_sequence(str(path), detect, on_missing="hold", max_frames=60)
    assert seen == _nearest(_decoded_times(path), VideoFrames(path).fps)[:60]
    assert "placed by their timestamps" in caplog.text


# ------------------------------------------------------------------------------------------ the trainer
def test_trainer_prepare_already_takes_the_frame_nearest_each_tick(tmp_path):
    """``echomimic-train prepare`` reads a clip at its own ``fps`` by the frames' timestamps (trainer/data/video.py):
    its frames stay in step with the clip's audio on a variable frame rate clip too (nothing to change: checked; the
    last tick is its own rule's, the last frame held half a source frame)."""
    from trainer.data.video import iter_frames

    path = _painted(tmp_path / "paused.mp4", PAUSED)
    for fps in (25.0, 12.0):
        got, want = [_number(f) for f in iter_frames(path, fps)], _nearest(_decoded_times(path), fps)
        assert got == want[:len(got)] and len(want) - 1 <= len(got) <= len(want)  # (its own rule for the last tick)
