"""``echomimic dub`` reads a jump back in the source (``loop``, ``ping-pong``) by seeking to the nearest keyframe
(:meth:`echomimic_lib.io.video_io.VideoFrames.frames_from` through :class:`echomimic_lib.jobs.dub_stream.SourceWindow`):
the frames are those of a decode from the start, bit for bit, for B-frame and open-GOP H.264, timestamps that do
not start at 0, a variable frame rate, MPEG-TS (whose seeks land late) and the shared MPEG-4 video; the frames decoded
stay about one per frame used (plus a keyframe interval per jump) instead of growing with the square of the length;
and a seek that fails or lands wrong falls back to decoding from the start."""
from __future__ import annotations

import hashlib
import logging
from fractions import Fraction

import numpy as np
import pytest

from echomimic_lib.io import video_io
from echomimic_lib.io.video_io import VideoFrames
from echomimic_lib.jobs.dub_stream import SourceWindow
from echomimic_lib.retime import retime_indices

GOP = 12


def _write(path, n=200, pts=None, fmt=None, codec="libx264", options=None):
    """A small video with a keyframe every GOP frames; ``pts(i)`` in milliseconds gives frame i's own timestamp."""
    import av

    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": str(GOP), **({"keyint_min": str(GOP)} if codec == "libx264" else {}), **(options or {})}
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        base = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        for i in range(n):
            image = np.roll(base, 3 * i, axis=1)
            image[:8, :8] = i % 256
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts(i), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _digests(frames):
    return [hashlib.blake2b(np.ascontiguousarray(f).tobytes(), digest_size=16).digest() for f in frames]


def _packets(path):
    import av

    with av.open(str(path)) as c:
        return [(p.pts, p.dts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.pts is not None]


def _ping_pong(path, capacity=16, upto=None):
    """SourceWindow over a ping-pong three times the source's length: (window, source, order, digests got)."""
    n = upto or len(list(VideoFrames(path)))
    order = retime_indices(n, 3 * n, "ping-pong")
    opened = []
    window = SourceWindow(lambda k: opened.append(VideoFrames(path, k)) or opened[-1], n, capacity)
    got = [_digests([window.get(i)])[0] for i in order]
    window.close()
    assert len(opened) == 1  # opened once: its keyframe index serves every jump
    return window, opened[0], order, got


VIDEOS = {
    "x264": {},  # libx264's defaults: B-frames
    "x264_open_gop": {"options": {"x264-params": "open-gop=1"}},
    "x264_offset": {"pts": lambda i: 5000 + 42 * i},  # timestamps that do not start at 0
    "x264_vfr": {"pts": lambda i: 300 + 40 * i + 13 * (i // 10) + (20 if i % 7 == 0 else 0)},  # irregular steps
    "mpegts": {"fmt": "mpegts"},  # starts at 7500 (90 kHz); a seek lands one keyframe late
    "mkv": {"fmt": "matroska"},
    "mpeg4": {"codec": "mpeg4"},
}


@pytest.mark.parametrize("kind", list(VIDEOS))
def test_random_access_over_a_ping_pong_gives_the_frames_of_a_full_decode(tmp_path, kind):
    spec = VIDEOS[kind]
    suffix = {"mpegts": ".ts", "matroska": ".mkv"}.get(spec.get("fmt"), ".mp4")
    path = _write(tmp_path / f"{kind}{suffix}", **spec)
    packets = _packets(path)
    if kind.startswith("x264"):
        assert any(p != d for p, d, _ in packets)  # reordered frames (B-frames): decode order is not display order
    full = _digests(VideoFrames(path))
    assert len(full) == 200
    window, source, order, got = _ping_pong(path)
    assert got == [full[i] for i in order]
    keys = source.index.keys
    assert source.index.seekable and keys[0] == 0 and len(keys) >= 200 // GOP  # (mpeg4 adds keyframes at its cuts)
    if kind == "x264_offset":
        assert source.index.pts[0] > 0
    steps = np.diff(np.asarray(source.index.pts))
    assert (len(set(steps.tolist())) > 2) == (kind == "x264_vfr")


def _old_cost(n, capacity):
    """Frames a decode from the start at every jump back reads over a three-length ping-pong (the old SourceWindow)."""
    frames = np.arange(n)
    opened = []

    def open_frames(upto):
        opened.append(upto)
        return iter(frames[:upto])

    window = SourceWindow(open_frames, n, capacity)
    for i in retime_indices(n, 3 * n, "ping-pong"):
        window.get(i)
    return window.decoded, len(opened) - 1


@pytest.mark.parametrize("kind", ["x264", "mpegts"])
def test_a_ping_pong_decodes_about_each_frame_once_plus_a_keyframe_interval_per_jump(tmp_path, kind):
    n, capacity = 480, 12
    path = _write(tmp_path / f"long.{'ts' if kind == 'mpegts' else 'mp4'}", n=n, **VIDEOS[kind])
    window, source, order, got = _ping_pong(path, capacity)
    old_decoded, jumps = _old_cost(n, capacity)
    decoded = source.index.decoded  # every frame the decoder made, the frames skipped after a seek included
    assert window.decoded <= len(order)
    bound = len(order) + jumps * (2 * GOP + 1 if kind == "mpegts" else GOP)  # a late TS seek: one keyframe earlier
    assert decoded <= bound < old_decoded / 3
    full = _digests(VideoFrames(path))
    assert got == [full[i] for i in order]


def test_the_shared_video_read_with_seeks_is_bit_equal_and_bounded(shared_data):
    path = shared_data / "video" / "driving_a.mp4"  # MPEG-4 part 2, 512x512, a keyframe every 12 frames
    full = _digests(VideoFrames(path))
    window, source, order, got = _ping_pong(path, capacity=24, upto=len(full))
    assert got == [full[i] for i in order]
    jumps = _old_cost(len(full), 24)[1]
    assert source.index.decoded <= len(order) + jumps * GOP
    # a shorter read (max_frames) stays short, also after a seek
    cut = VideoFrames(path, 100)
    assert _digests(cut.frames_from(0)) == full[:100]
    assert _digests(cut.frames_from(70)) == full[70:100]


class _Container:
    """A PyAV input container whose seeks fail (``raise``), land far after the frame asked for (``late``), or whose
    decoder loses the third frame after a seek (``drop``)."""

    def __init__(self, container, how):
        self._c, self._how, self._sought = container, how, False

    def __getattr__(self, name):
        return getattr(self._c, name)

    def seek(self, offset, **kw):
        import av

        if self._how == "raise":
            raise av.error.ValueError(22, "seek not supported")
        self._sought = True
        self._c.seek(offset + (10_000_000 if self._how == "late" else 0), **kw)

    def decode(self, stream):
        frames = self._c.decode(stream)
        if self._how == "drop" and self._sought:
            return (f for j, f in enumerate(frames) if j != 2)
        return frames


@pytest.mark.parametrize("how", ["raise", "late", "drop"])
def test_a_seek_that_fails_or_lands_wrong_falls_back_to_the_start(tmp_path, monkeypatch, caplog, how):
    path = _write(tmp_path / "v.mp4", n=120)
    full = _digests(VideoFrames(path))
    opened = video_io._open
    monkeypatch.setattr(video_io, "_open", lambda p: _Container(opened(p), how))
    with caplog.at_level(logging.DEBUG, logger="echomimic_lib.io.video_io"):
        window, source, order, got = _ping_pong(path)
    assert got == [full[i] for i in order]
    assert "decoding from the start" in caplog.text
    if how == "drop":
        assert "timestamp" in caplog.text  # matched by timestamp, the lost frame is noticed


def test_frames_without_timestamps_in_order_are_never_sought():
    class Frame:
        def __init__(self, pts, key=False):
            self.pts, self.key_frame = pts, key

    index = video_io.FrameIndex()
    for n, pts in enumerate([0, 10, 20]):
        index.add(n, Frame(pts, n == 0))
    index.add(3, Frame(20))  # a repeated timestamp: which frame it is cannot be told after a seek
    assert not index.seekable and list(index.pts) == [0, 10, 20]
    index = video_io.FrameIndex()
    index.add(0, Frame(None, True))
    assert not index.seekable


def _face_video(path, shared, n=16, size=256):
    """``n`` frames of the shared driving video at ``size`` px, H.264 with B-frames and a keyframe every 4 frames."""
    import av
    import cv2

    clip = VideoFrames(shared / "video" / "driving_a.mp4", n)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.options = {"crf": "14", "g": "4", "keyint_min": "4"}
        for frame in clip:
            image = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.mark.slow
def test_a_ping_pong_dub_that_seeks_matches_the_whole_clip_path(tiny_comfy_models, shared_data, tmp_path, monkeypatch):
    """A whole dub through the real source reader with room for 3 frames: the jumps back land on keyframes after the
    first, and every output frame is that of the whole-clip path (the video decoded once from the start)."""
    from echomimic_lib.jobs import dub, dub_stream
    from echomimic_lib.jobs.dub import DubRequest, run_dub
    from tests.test_dub_stream import TINY, _record, _speech, _whole_clip_frames

    video = _face_video(tmp_path / "person.mp4", shared_data)
    req = DubRequest(video=str(video), audio=str(_speech(tmp_path, shared_data, 1.2)), output=str(tmp_path / "o.mp4"),
                     models=str(tiny_comfy_models / "echomimic"), **dict(TINY, context_frames=16))
    monkeypatch.setattr(dub_stream, "WINDOW_BYTES", 3 * 256 * 256 * 3)
    frames = dub.DubJob.frames
    seen = _record(monkeypatch, (256, 256))
    monkeypatch.setattr(dub.DubJob, "frames", frames)  # the real VideoFrames, not _record's counting generator
    landed, seek = [], video_io._seek_near
    monkeypatch.setattr(video_io, "_seek_near", lambda c, index, start: landed.append(seek(c, index, start)) or landed[-1])
    assert run_dub(req)["frames"] == 29  # 1.2 s at 25 fps, cut to the 28 frames generated at 24 fps
    monkeypatch.undo()
    assert sorted({r[1] for r in landed if r}) == [4, 8]  # 0..15, then back to 2: seeks to the keyframes 8 and 4
    assert np.array_equal(np.concatenate(seen["writes"]), _whole_clip_frames(req, seen["job"], seen["gen"]))
