"""Phone videos are read upright, as a player shows them: a clip stored sideways with a display matrix (PyAV's
``set_display_rotation``, as an iPhone or Android portrait clip) gives upright frames, its displayed size and frame
count through every reader (:class:`VideoFrames` from the start and after a seek, :func:`read_video`, :func:`probe`,
:func:`count_frames`, the trainer's reader), mirror images included; ``echomimic dub`` on such a source writes an
upright video of the displayed size without a display matrix; an unrotated video's frames are PyAV's, bit for bit."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.io.orientation import Turn, turn_of
from echomimic_lib.io.video_io import VideoFrames, count_frames, probe, read_video

W, H, N, GOP = 40, 64, 20, 6  # the displayed (upright, portrait) size; frames; a keyframe every GOP frames


def _upright(n: int = N, size=(W, H)) -> np.ndarray:
    """(n, H, W, 3) upright frames with a mark only at the top left (orientation is plain) and a per-frame level."""
    w, h = size
    rng = np.random.default_rng(1)
    base = np.repeat(np.repeat(rng.integers(40, 120, (h // 8, w // 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    frames = np.repeat(base[None], n, 0)
    frames[:, :16, :8] = 250  # a tall white bar at the top left
    frames[:, -8:, -24:] = 0  # a wide black bar at the bottom right
    for i in range(n):
        frames[i, 24:32, 8:16] = 10 * i
    return frames


def _stored(displayed: np.ndarray, degrees: int, hflip: bool = False) -> np.ndarray:
    """What a camera stores for ``displayed`` with the display matrix of ``set_display_rotation(degrees, hflip)``: a
    player turns it ``degrees`` counter-clockwise (then mirrors it)."""
    frames = displayed[:, :, ::-1] if hflip else displayed
    return np.rot90(frames, -degrees // 90, axes=(1, 2))


def _write(path: Path, frames: np.ndarray, degrees: int | None = None, hflip: bool = False, fps: int = 24) -> Path:
    """H.264 4:4:4 (crf 4), a keyframe every GOP frames, with the display matrix when ``degrees`` is given."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.options = "yuv444p", {"crf": "4", "g": str(GOP), "keyint_min": str(GOP)}
        if degrees is not None:
            stream.set_display_rotation(degrees, hflip=hflip)
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        out.mux(stream.encode())
    return path


def _pyav_frames(path) -> list[np.ndarray]:
    """The frames as stored (PyAV's own conversion, no turn)."""
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def _close(a, b, tol: float = 3.0) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(np.int16) - b).mean()) < tol


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """{(degrees, hflip): (rotated clip, the same frames written without a display matrix)}"""
    root, displayed = tmp_path_factory.mktemp("rotated"), _upright()
    out = {}
    for degrees, hflip in ((0, False), (90, False), (-90, False), (180, False), (0, True), (90, True)):
        stored = _stored(displayed, degrees, hflip)
        out[degrees, hflip] = (_write(root / f"r{degrees}_{int(hflip)}.mp4", stored, degrees, hflip),
                               _write(root / f"plain{degrees}_{int(hflip)}.mp4", stored))
    return out


@pytest.mark.parametrize("degrees,hflip", [(90, False), (-90, False), (180, False), (0, False), (0, True), (90, True)])
def test_every_reader_gives_the_upright_frames_and_size(clips, degrees, hflip):
    rotated, plain = clips[degrees, hflip]
    want = _upright()
    stored = np.stack(_pyav_frames(plain))  # the same bitstream without the matrix: the frames as stored
    assert stored.shape[1:3] == ((W, H) if degrees % 180 else (H, W))
    turn = _stored(want, degrees, hflip)
    assert _close(stored, turn)  # (the writer stored them sideways: the test means what it says)

    source = VideoFrames(rotated)
    assert source.size == (W, H) and source.estimated_frames == N
    got = np.stack(list(source))
    assert _close(got, want)  # upright within the codec's error ...
    assert np.array_equal(got, np.rot90(stored, degrees // 90, axes=(1, 2))[:, :, ::-1] if hflip
                          else np.rot90(stored, degrees // 90, axes=(1, 2)))  # ... and exactly the stored frames turned
    assert got[:, :16, :8].mean() > 200 and got[:, -8:, -24:].mean() < 30  # the marks where they were drawn

    clip = read_video(rotated)
    assert np.array_equal(clip.frames, got)
    info = probe(rotated)
    assert (info["width"], info["height"], info["frames"]) == (W, H, N)
    assert count_frames(rotated, 10**6) == N
    # frames_from after a full read seeks to a keyframe; the frames are the same arrays, upright
    decoded = source.index.decoded
    for start in (N - 3, GOP + 1, 2 * GOP):
        tail = np.stack(list(source.frames_from(start)))
        assert np.array_equal(tail, got[start:])
    assert source.index.decoded - decoded < 3 * N  # seeks, not three decodes from the start each


def test_an_unrotated_video_is_read_as_pyav_decodes_it(clips):
    """No display matrix: the frames are PyAV's own conversion, bit for bit, and the size the header's."""
    rotated, plain = clips[90, False]
    frames = list(VideoFrames(plain))
    assert all(np.array_equal(a, b) for a, b in zip(frames, _pyav_frames(plain), strict=True))
    assert VideoFrames(plain).size == (H, W) and (probe(plain)["width"], probe(plain)["height"]) == (H, W)


def test_the_display_matrix_maps_as_ffmpeg_turns_it():
    """ffmpeg's layout, 16.16: the iPhone portrait matrix (rotation -90) turns clockwise, +90 counter-clockwise."""
    one = 1 << 16
    img = np.arange(6).reshape(2, 3)
    iphone = [0, one, 0, -one, 0, 0, 0, 0, 1 << 30]
    assert np.array_equal(turn_of(iphone).apply(img), np.rot90(img, -1))
    assert np.array_equal(turn_of([0, -one, 0, one, 0, 0, 0, 0, 1 << 30]).apply(img), np.rot90(img, 1))
    assert np.array_equal(turn_of([-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30]).apply(img), np.rot90(img, 2))
    assert np.array_equal(turn_of([-one, 0, 0, 0, one, 0, 0, 0, 1 << 30]).apply(img), img[:, ::-1])  # hflip
    assert np.array_equal(turn_of([one, 0, 0, 0, -one, 0, 0, 0, 1 << 30]).apply(img), img[::-1])  # vflip
    assert turn_of([one, 0, 0, 0, one, 0, 0, 0, 1 << 30]) is None
    assert Turn(True, False, True).size(1920, 1080) == (1080, 1920)
    c = int(round(np.cos(np.pi / 4) * one))
    with pytest.raises(ValueError, match="no quarter turn"):
        turn_of([c, c, 0, -c, c, 0, 0, 0, 1 << 30])


def test_a_turn_that_is_no_quarter_turn_reads_the_frames_as_stored_and_says_so_once(tmp_path, caplog):
    stored = _upright(4)
    path = _write(tmp_path / "r30.mp4", stored, 30)
    with caplog.at_level(logging.WARNING, logger="echomimic_lib"):
        frames = list(VideoFrames(path))
    assert all(np.array_equal(a, b) for a, b in zip(frames, _pyav_frames(path), strict=True))
    assert caplog.text.count("no quarter turn") == 1


def test_the_trainers_reader_is_upright_too(clips):
    from trainer.data.video import iter_frames, probe_video

    rotated, _ = clips[-90, False]
    info = probe_video(rotated)
    assert (info["width"], info["height"]) == (W, H)
    frames = np.stack(list(iter_frames(rotated, 24)))
    assert np.array_equal(frames, np.stack(list(VideoFrames(rotated))))


def _face_clip(path: Path, shared: Path, n: int = 8) -> tuple[Path, np.ndarray]:
    """``n`` frames of the shared driving video on a portrait 200x256 canvas, stored as an iPhone does (sideways, with
    rotation -90): (the clip, the upright frames written)."""
    import cv2

    clip = read_video(shared / "video" / "driving_a.mp4", max_frames=n, with_audio=False)
    upright = np.full((n, 256, 200, 3), 90, np.uint8)
    for i, frame in enumerate(clip.frames):
        upright[i, 8:200, 4:196] = cv2.resize(frame, (192, 192), interpolation=cv2.INTER_AREA)
    upright[:, 220:, :40] = 250  # a mark at the bottom left, outside the face crop
    return _write(path, _stored(upright, -90), -90, fps=25), upright


@pytest.mark.slow
def test_dub_of_a_phone_clip_is_upright_at_the_displayed_size(tiny_comfy_models, shared_data, tmp_path):
    import av

    from echomimic_lib.jobs.dub import DubRequest, run_dub
    from tests.test_dub import _wav

    video, upright = _face_clip(tmp_path / "phone.mp4", shared_data)
    req = DubRequest(video=str(video), audio=str(_wav(tmp_path / "s.wav", "echomimic_en.wav", 0.3, shared_data)),
                     output=str(tmp_path / "out.mp4"), models=str(tiny_comfy_models / "echomimic"), width=64, height=64,
                     steps=1, cfg=1.0, context_frames=16, context_overlap=0, download=False)
    summary = run_dub(req)
    assert summary["size"] == (200, 256)
    out = read_video(summary["output"], with_audio=False).frames
    assert out.shape[1:] == (256, 200, 3) and len(out) == summary["frames"]
    with av.open(summary["output"]) as c:  # written upright: no display matrix for a player to apply
        first = next(c.decode(c.streams.video[0]))
        assert first.rotation == 0 and not any(getattr(getattr(d, "type", d), "name", str(d)) == "DISPLAYMATRIX" for d in first.side_data)
    x0, y0, x1, y1 = summary["crop"]
    outside = np.ones((256, 200), bool)
    outside[y0:y1, x0:x1] = False
    assert outside.mean() > 0.2
    for frame in out:  # outside the face crop: a source frame as a player shows it (two encodes apart)
        err = min(float(np.abs(frame[outside].astype(np.int16) - src[outside]).mean()) for src in upright)
        assert err < 6, err
