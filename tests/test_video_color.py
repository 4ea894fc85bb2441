"""The colour description of the videos the pack writes (echomimic_lib.io.video_color).

Before, every video was converted RGB -> YUV with swscale's default BT.601 matrix and written untagged: players guess
(BT.601 for SD, BT.709 for HD) and showed generated and dubbed HD videos with shifted colours, and ``echomimic dub``
re-encoded a BT.709 source as untagged BT.601. Now generated videos are BT.709 (matrix, primaries, transfer), limited
range, tagged; a dub keeps its source's description (an untagged source stays untagged, converted as before)."""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.io.video_color import GENERATED, UNTAGGED, ColorDescription, read_color
from echomimic_lib.io.video_io import read_video, write_video
from tests._media import write_wav

PATCH = 16  # each chart colour fills a 16x16 block (8x8 in the 4:2:0 chroma planes)
CHART = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 255, 255),
                  (0, 0, 0), (200, 40, 40), (40, 160, 60), (50, 70, 190), (128, 128, 128)], np.uint8)


def _chart(frames: int = 3) -> np.ndarray:
    """A saturated colour chart: a 6x2 grid of flat 16 px blocks (96x32)."""
    img = np.zeros((2 * PATCH, 6 * PATCH, 3), np.uint8)
    for i, c in enumerate(CHART):
        r, k = divmod(i, 6)
        img[r * PATCH:(r + 1) * PATCH, k * PATCH:(k + 1) * PATCH] = c
    return np.repeat(img[None], frames, axis=0)


def _limited_yuv(rgb: np.ndarray, kr: float, kb: float) -> np.ndarray:
    """Y'CbCr (8-bit, limited range) of RGB by the matrix with luma weights kr, kb (BT.709: .2126, .0722)."""
    e = rgb.astype(np.float64) / 255.0
    y = kr * e[..., 0] + (1 - kr - kb) * e[..., 1] + kb * e[..., 2]
    cb, cr = (e[..., 2] - y) / (2 * (1 - kb)), (e[..., 0] - y) / (2 * (1 - kr))
    return np.stack([16 + 219 * y, 128 + 224 * cb, 128 + 224 * cr], axis=-1)


def _planes(path: Path, index: int = 0):
    """The first video frame's (Y, U, V) planes as stored (yuv420p), and the frame's colour tags."""
    import av

    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i == index:
                assert frame.format.name in ("yuv420p", "yuvj420p")  # yuvj: full range, as the h264 decoder says it
                yuv = frame.to_ndarray()  # (H * 3 / 2, W): Y, then U and V at quarter size
                h, w = frame.height, frame.width
                u = yuv[h:h + h // 4].reshape(h // 2, w // 2)
                v = yuv[h + h // 4:].reshape(h // 2, w // 2)
                return (yuv[:h], u, v), (frame.colorspace, frame.color_primaries, frame.color_trc, frame.color_range)
    raise AssertionError(f"{path} has no frame {index}")


def _patch_means(y, u, v) -> np.ndarray:
    """Each chart block's mean Y, U, V over its inside (2 px / 1 chroma px margin: the 4:2:0 and codec edges)."""
    out = []
    for i in range(len(CHART)):
        r, k = divmod(i, 6)
        ys, xs = slice(r * PATCH + 2, (r + 1) * PATCH - 2), slice(k * PATCH + 2, (k + 1) * PATCH - 2)
        cs, cx = slice(r * PATCH // 2 + 1, (r + 1) * PATCH // 2 - 1), slice(k * PATCH // 2 + 1, (k + 1) * PATCH // 2 - 1)
        out.append((y[ys, xs].mean(), u[cs, cx].mean(), v[cs, cx].mean()))
    return np.array(out)


def _rgb_patch_means(img: np.ndarray) -> np.ndarray:
    """Each chart block's mean RGB over its inside (2 px margin)."""
    return np.array([img[r * PATCH + 2:(r + 1) * PATCH - 2, k * PATCH + 2:(k + 1) * PATCH - 2].reshape(-1, 3).mean(0)
                     for r, k in (divmod(i, 6) for i in range(len(CHART)))])


def test_written_video_is_bt709_limited_range_and_tagged_so(tmp_path):
    out = write_video(tmp_path / "chart.mp4", _chart(), 25)
    assert read_color(out) == GENERATED  # the stream: bt709 matrix, primaries, transfer; tv range
    (y, u, v), tags = _planes(out)
    assert tags == (1, 1, 1, 1)  # the decoded frames say the same
    got = _patch_means(y, u, v)
    bt709, bt601 = _limited_yuv(CHART, 0.2126, 0.0722), _limited_yuv(CHART, 0.299, 0.114)
    assert np.abs(got - bt709).max() < 1.5  # the BT.709 matrix, within rounding
    assert np.abs(got - bt601).max() > 15  # not BT.601 (red's Y: 63 against 82)
    back = read_video(out, with_audio=False).frames[0]  # decoded by its tags: the chart back
    assert np.abs(_rgb_patch_means(back) - CHART).max() < 4


def test_round_trip_error_is_small_for_natural_frames(shared_data, tmp_path):
    src = read_video(shared_data / "video" / "driving_a.mp4", max_frames=4, with_audio=False).frames
    back = read_video(write_video(tmp_path / "v.mp4", src, 24), with_audio=False).frames
    assert back.shape == src.shape
    assert np.abs(back.astype(int) - src).mean() < 2.0


def test_an_untagged_description_writes_as_before(tmp_path):
    """UNTAGGED (a dub of an untagged source): no tags, swscale's default BT.601 matrix, limited range."""
    from echomimic_lib.io.video_writer import Mp4Writer

    with Mp4Writer(tmp_path / "u.mp4", 25, color=UNTAGGED) as w:
        w.write(_chart())
        out = w.commit()
    assert read_color(out) == UNTAGGED
    (y, u, v), tags = _planes(out)
    assert tags == (2, 2, 2, 0)
    assert np.abs(_patch_means(y, u, v) - _limited_yuv(CHART, 0.299, 0.114)).max() < 1.5


def test_a_full_range_bt601_description_is_kept(tmp_path):
    from echomimic_lib.io.video_writer import Mp4Writer

    full601 = ColorDescription(6, 6, 6, 2)  # smpte170m matrix, primaries and transfer; pc range
    with Mp4Writer(tmp_path / "f.mp4", 25, color=full601) as w:
        w.write(_chart())
        out = w.commit()
    assert read_color(out) == full601
    (y, u, v), tags = _planes(out)
    assert tags == (6, 6, 6, 2)
    e = CHART.astype(float)
    luma = 0.299 * e[:, 0] + 0.587 * e[:, 1] + 0.114 * e[:, 2]  # full range: 0..255, chroma 128 +- 127.5
    assert np.abs(_patch_means(y, u, v)[:, 0] - luma).max() < 1.5


# ---------------------------------------------------------------------------------------------------------- dub
SOURCES = {  # name: (swscale matrix, swscale range, stream tags (matrix, primaries, transfer, range))
    "bt709": (1, 1, (1, 1, 1, 1)),
    "untagged": (None, None, (2, 2, 2, 0)),
    "bt601-full": (5, 2, (6, 6, 6, 2)),
}
STRIP = 64  # saturated colour bars right of the face, far from the crop


def _tagged_source(path: Path, shared: Path, kind: str) -> Path:
    """8 frames of the driving video (the face, 320 px) with a 64 px strip of colour bars on its right, encoded yuv420p
    with the given matrix and range and tagged (or untagged) accordingly."""
    import av
    import cv2

    matrix, rng, tags = SOURCES[kind]
    clip = read_video(shared / "video" / "driving_a.mp4", max_frames=8, with_audio=False)
    bars = np.repeat(CHART[(np.arange(320) // PATCH) % len(CHART)][:, None], STRIP, axis=1)  # (320, STRIP, 3)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt, stream.options = 320 + STRIP, 320, "yuv420p", {"crf": "12"}
        if kind != "untagged":
            cc = stream.codec_context
            cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = tags
        for frame in clip.frames:
            canvas = np.zeros((320, 320 + STRIP, 3), np.uint8)
            canvas[:, :320] = cv2.resize(frame, (320, 320), interpolation=cv2.INTER_AREA)
            canvas[:, 320:] = bars
            f = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            if kind != "untagged":
                f = f.reformat(format="yuv420p", dst_colorspace=matrix, dst_color_range=rng)
                f.colorspace, f.color_primaries, f.color_trc, f.color_range = tags
            for packet in stream.encode(f):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _inside_bars(n: int, bar: int) -> np.ndarray:
    """Row numbers inside the strip's bars of ``bar`` rows (an 8th of a bar left out at each edge: decoding and encoding
    again blurs the 4:2:0 chroma across a bar's edge)."""
    return np.flatnonzero(np.isin(np.arange(n) % bar, np.arange(bar // 8 + 1, bar - bar // 8 - 1)))


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SOURCES))
def test_dub_keeps_the_sources_colour_description(kind, tiny_comfy_models, shared_data, tmp_path):
    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.jobs.dub import DubRequest, run_dub

    video = _tagged_source(tmp_path / "src.mp4", shared_data, kind)
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    speech = write_wav(tmp_path / "s.wav", wav[0, : int(0.3 * sr)], sr)
    req = DubRequest(video=str(video), audio=str(speech), output=str(tmp_path / "out.mp4"),
                     models=str(tiny_comfy_models / "echomimic"), width=64, height=64, steps=1, cfg=1.0,
                     context_frames=8, context_overlap=0, download=False)
    summary = run_dub(req)
    out = Path(summary["output"])
    assert read_color(out) == read_color(video) == ColorDescription(*SOURCES[kind][2])
    src_planes, src_tags = _planes(video)
    out_planes, out_tags = _planes(out)
    assert out_tags == src_tags
    x0 = 320 + 8  # inside the strip (the 4:2:0 edge next to the face left out); the crop lies in the face's 320 px
    assert summary["crop"][2] <= 320
    for i, (s, o) in enumerate(zip(src_planes, out_planes)):  # the stored bytes: the same matrix and range
        rows, x = _inside_bars(len(s), PATCH >> min(i, 1)), x0 >> min(i, 1)
        assert np.abs(s[rows, x:].astype(int) - o[rows, x:]).mean() < 1.0
    src_rgb = read_video(video, max_frames=1, with_audio=False).frames[0]
    out_rgb = read_video(out, max_frames=1, with_audio=False).frames[0]
    rows = _inside_bars(len(src_rgb), PATCH)
    assert np.abs(src_rgb[rows, x0:].astype(int) - out_rgb[rows, x0:]).mean() < 1.5  # and the colours as decoded


def _chart_source(path: Path, pix_fmt: str, tags: tuple[int, int, int, int]) -> Path:
    """The chart encoded in ``pix_fmt`` with the matrix and range of ``tags`` (matrix, primaries, transfer, range)."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt, stream.options = 6 * PATCH, 2 * PATCH, pix_fmt, {"crf": "12"}
        cc = stream.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = tags
        for k, rgb in enumerate(_chart()):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt, dst_colorspace=9, dst_color_range=1)
            f.pts = k
            for packet in stream.encode(f):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_a_10_bit_hdr_source_is_written_8_bit_with_its_tags_and_said_once(tmp_path, caplog):
    """As the dub writes it: the source's frames decoded by its tags (PQ-coded BT.2020 RGB, no tone mapping) and written
    with its description: the same tags (8-bit), the same code values."""
    from echomimic_lib.io.video_color import describe_source
    from echomimic_lib.io.video_writer import Mp4Writer

    src = _chart_source(tmp_path / "pq.mp4", "yuv420p10le", (9, 9, 16, 1))  # bt2020nc, bt2020, PQ, tv
    color = read_color(src)
    assert color == ColorDescription(9, 9, 16, 1, bits=10) and color.hdr
    with caplog.at_level(logging.INFO, logger="echomimic_lib"):
        describe_source(color, f"the source video {src}")
        describe_source(read_color(_chart_source(tmp_path / "sdr.mp4", "yuv420p", (1, 1, 1, 1))), "the source video y")
    assert caplog.text.count("8-bit H.264 with the same colour tags") == 1
    assert "10-bit HDR, PQ" in caplog.text and "pq.mp4" in caplog.text
    decoded = read_video(src, with_audio=False).frames
    with Mp4Writer(tmp_path / "out.mp4", 25, color=color) as w:
        w.write(decoded)
        out = w.commit()
    assert read_color(out) == ColorDescription(9, 9, 16, 1)  # 8 bits, the source's tags
    (y, u, v), _ = _planes(out)
    got = _patch_means(y, u, v)  # the BT.2020 matrix (within the 10 -> 8 bit rounding of the decoded RGB), not BT.709
    assert np.abs(got - _limited_yuv(CHART, 0.2627, 0.0593)).max() < 3.5 < 8 < np.abs(got - _limited_yuv(CHART, 0.2126, 0.0722)).max()
    assert np.abs(_rgb_patch_means(read_video(out, with_audio=False).frames[0]) - _rgb_patch_means(decoded[0])).max() < 4
