"""The odd media real users bring, through the readers the commands and nodes use: each is read right (frames,
colours, length) or refused with a message naming the file, the problem and the fix, before any weight loads and
without a huge allocation. Every sample is made here, in tmp_path (PyAV, numpy, PIL)."""
from __future__ import annotations

import logging
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.cli import main as cli
from echomimic_lib.errors import EchoMimicError
from tests._media import write_wav
from tests.test_cli_bad_input import MP_MODEL, loads  # noqa: F401  (the fixture that fails any weight access)


def _rgb(h: int = 120, w: int = 160) -> np.ndarray:
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, w)[None]
    rgb[..., 1] = np.linspace(0, 255, h)[:, None]
    rgb[20:60, 30:90] = (200, 100, 50)
    return rgb


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(path: Path, side: int = 20000) -> Path:
    """A real PNG of side x side black pixels (1-bit grey): about 100 kB that decode to side * side * 3 bytes."""
    row = b"\x00" * (side // 8 + 1)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row * 100) for _ in range(side // 100)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


def _jpeg_declaring(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose frame header declares width x height (OpenCV allocates that much and fills it with grey)."""
    from PIL import Image

    Image.fromarray(_rgb()).save(path, quality=90)
    data = bytearray(path.read_bytes())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    path.write_bytes(bytes(data))
    return path


def _read(path, caplog=None):
    from echomimic_lib.jobs.animate_checks import read_reference

    return read_reference(path)


# ------------------------------------------------------------------------------------------------- reference images
@pytest.mark.parametrize("make", [_png_bomb, lambda p: _jpeg_declaring(p.with_suffix(".jpg"), 20000, 20000)],
                         ids=["png-bomb", "jpeg-header-20000x20000"])
def test_a_decompression_bomb_is_refused_from_its_header_without_decoding_it(tmp_path, make):
    path = make(tmp_path / "bomb.png")
    tracemalloc.start()
    try:
        with pytest.raises(EchoMimicError) as err:
            _read(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"--reference {path}: 20000x20000 px (400 megapixels)" in str(err.value)
    assert "scale it down" in str(err.value) and "1.2 GB" in str(err.value)
    assert peak < 50e6  # decoding would hold 1.2 GB (2.4 GB with the RGB copy)


def test_an_image_under_the_limit_is_still_read(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4000, 3000, 3), np.uint8)).save(tmp_path / "photo.png")  # 12 MP, a phone photo
    assert _read(tmp_path / "photo.png").shape == (4000, 3000, 3)


def test_a_bomb_given_to_animate_is_named_before_any_weight(tmp_path, loads, capsys, shared_data):  # noqa: F811
    ref = _png_bomb(tmp_path / "scan.png")
    wav = write_wav(tmp_path / "speech.wav", 0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000))
    out = tmp_path / "out.mp4"
    rc = cli(["animate", "--reference", str(ref), "--audio", str(wav), "-o", str(out), "--models", str(tmp_path),
              "--offline", "--mediapipe-model", str(shared_data / "mediapipe" / MP_MODEL)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "20000x20000 px" in err and "scale it down" in err, err
    assert loads == [] and not out.exists()


def _truncated(path: Path, fraction: float, **save) -> Path:
    from PIL import Image

    Image.fromarray(_rgb()).save(path, **save)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize("name,fraction,save", [
    ("cut.jpg", 0.6, {"quality": 90}), ("cut_progressive.jpg", 0.8, {"quality": 90, "progressive": True}),
    ("cut_header.jpg", 0.05, {"quality": 90}), ("cut.png", 0.7, {}), ("cut_end.png", 0.99, {}),
])
def test_a_truncated_image_is_named_truncated_not_read_with_grey(tmp_path, name, fraction, save):
    """OpenCV decodes a JPEG cut short with its missing part grey (a reference that is a third grey was animated);
    a cut PNG was 'unsupported or corrupt'."""
    path = _truncated(tmp_path / name, fraction, **save)
    with pytest.raises(EchoMimicError, match=r"--reference .*: the file is truncated \(.*interrupted download or copy\); "
                                             r"copy or download it again"):
        _read(path)


@pytest.mark.parametrize("suffix", ["", "SEFHxxxxSEFT", "\0" * 300], ids=["whole", "camera-trailer", "zero-padding"])
def test_a_whole_jpeg_is_read_as_before(tmp_path, suffix):
    import cv2
    from PIL import Image

    path = tmp_path / "photo.jpg"
    Image.fromarray(_rgb()).save(path, quality=90)
    path.write_bytes(path.read_bytes() + suffix.encode())
    want = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(_read(path), want)


@pytest.mark.parametrize("text,words", [
    ("<!DOCTYPE html>\n<html><head><title>Sign in - Google Accounts</title>", "an HTML page, not an image"),
    ("\ufeffportrait of me, see attachment\n", "a text file, not an image"),
    ('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="512"/>', "an SVG drawing (vector graphics), "
                                                                                    "which OpenCV cannot read; export it"),
], ids=["html", "text", "svg"])
def test_a_web_page_text_or_drawing_saved_as_a_picture_is_named(tmp_path, text, words):
    path = tmp_path / "portrait.jpg"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(EchoMimicError, match=words.replace("(", r"\(").replace(")", r"\)")):
        _read(path)


def test_an_animated_png_says_its_first_frame_is_the_reference(tmp_path, caplog):
    from PIL import Image

    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "wave.png", save_all=True, append_images=[Image.fromarray(255 - rgb)] * 2)
    with caplog.at_level(logging.WARNING):
        got = _read(tmp_path / "wave.png")
    assert np.array_equal(got, rgb)
    assert "wave.png is an animation of 3 frames; its first frame is the reference" in caplog.text


@pytest.mark.parametrize("kind", ["rgb16", "rgba16", "la", "palette-trns", "cmyk", "exif-rotated", "webp-as-png"])
def test_the_colour_formats_editors_save_give_the_right_colours(tmp_path, kind):
    import cv2
    from PIL import Image

    rgb = _rgb()
    path, want = tmp_path / f"{kind}.png", rgb
    if kind == "rgb16":
        cv2.imwrite(str(path), rgb[..., ::-1].astype(np.uint16) * 257)
    elif kind == "rgba16":
        cv2.imwrite(str(path), np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 255, np.uint8)]).astype(np.uint16) * 257)
    elif kind == "la":
        Image.fromarray(np.dstack([rgb[..., 1], np.full(rgb.shape[:2], 255, np.uint8)]), "LA").save(path)
        want = np.repeat(rgb[..., 1:2], 3, axis=2)
    elif kind == "palette-trns":
        pal = Image.fromarray(rgb).quantize(64)
        pal.save(path, transparency=255)
        want = np.asarray(pal.convert("RGB"))
    elif kind == "cmyk":
        path = path.with_suffix(".jpg")
        Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
    elif kind == "exif-rotated":
        path, exif = path.with_suffix(".jpg"), Image.Exif()
        exif[0x0112] = 6  # stored sideways: shown turned 90 degrees clockwise
        Image.fromarray(rgb).save(path, quality=95, exif=exif)
        want = np.rot90(rgb, -1)
    elif kind == "webp-as-png":
        Image.fromarray(rgb).save(path, format="WEBP", lossless=True)
    got = _read(path)
    assert got.shape == want.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want).mean() < 3, kind


# ---------------------------------------------------------------------------------------------------------- videos
def _video(path: Path, n: int = 30, size=(64, 48), codec: str = "libx264", pix: str = "yuv420p", fmt=None,
           options=None, audio: int = 0) -> Path:
    """A smooth moving gradient (so that the encoder makes predicted frames), with ``audio`` silent AAC tracks."""
    import av

    w, h = size
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = w, h, pix
        s.options = options or {}
        tracks = [c.add_stream("aac", rate=44100) for _ in range(audio)]
        base = np.tile(np.linspace(0, 255, w).astype(np.uint8)[None, :, None], (h, 1, 3))
        for i in range(n):
            for packet in s.encode(av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
        for t in tracks:
            for k in range(10):
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 44100, k * 1024
                for packet in t.encode(frame):
                    c.mux(packet)
            for packet in t.encode(None):
                c.mux(packet)
    return path


def _subtitles_only(path: Path) -> Path:
    import av

    srt = path.with_suffix(".srt")
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nHello\n\n2\n00:00:01,000 --> 00:00:02,000\nthere\n")
    with av.open(str(srt)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(src.streams[0])
        for packet in src.demux(src.streams[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return path


def _data_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w", format="mpegts") as c:
        stream = c.add_data_stream()
        for i in range(5):
            packet = av.Packet(b"telemetry")
            packet.stream, packet.pts, packet.dts = stream, i * 3000, i * 3000
            c.mux(packet)
    return path


def _without_moov(path: Path) -> Path:
    """An MP4 cut in half: the camera (or the copy) stopped before the index it writes last."""
    _video(path, 60)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("make,words", [
    (lambda d: _without_moov(d / "IMG_0042.MP4"), "an MP4/MOV file without its index (no 'moov' box): the recording was "
                                                  "interrupted, or the file was copied or downloaded only in part; copy it "
                                                  "again from the original"),
    (lambda d: _subtitles_only(d / "talk.mkv"), "no video stream (a subtitle file: it holds only subtitles)"),
    (lambda d: _data_only(d / "gopro.ts"), "no video stream (it holds only data streams)"),
], ids=["mp4-without-moov", "subtitles-only", "data-only"])
def test_dub_names_a_video_file_without_a_readable_video(make, words, tmp_path, loads, capsys, shared_data):  # noqa: F811
    """A cut phone recording was 'damaged or not audio/video: use a wav, mp3, flac, m4a or mp4 file' (it is an mp4); a
    subtitle or data file was 'no video frames (an audio file?)'."""
    video = make(tmp_path)
    wav = write_wav(tmp_path / "speech.wav", 0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000))
    out = tmp_path / "out.mp4"
    rc = cli(["dub", "--video", str(video), "--audio", str(wav), "-o", str(out), "--offline", "--models", str(tmp_path),
              "--mediapipe-model", str(shared_data / "mediapipe" / MP_MODEL)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and f"--video {video}: {words}" in err, err
    assert "an audio file?" not in err and "use a wav" not in err, err
    assert loads == [] and not out.exists()


@pytest.mark.parametrize("name,pix,size,codec,kw", [
    ("odd.mp4", "yuv444p", (641, 479), "libx264", {}), ("yuv444.mp4", "yuv444p", (64, 48), "libx264", {}),
    ("ten_bit.mp4", "yuv420p10le", (64, 48), "libx264", {}), ("full_range.mp4", "yuvj420p", (64, 48), "libx264", {}),
    ("two_tracks.mp4", "yuv420p", (64, 48), "libx264", {"audio": 2}), ("one_frame.mp4", "yuv420p", (64, 48), "libx264", {"n": 1}),
    ("mid_gop.ts", "yuv420p", (64, 48), "libx264", {"fmt": "mpegts", "options": {"g": "25", "bf": "0"}, "cut": 0.3}),
])
def test_the_videos_users_have_are_read_with_their_frames_and_colours(tmp_path, name, pix, size, codec, kw):
    from echomimic_lib.io.video_io import VideoFrames, probe

    cut = kw.pop("cut", None)
    n = kw.setdefault("n", 30)
    path = _video(tmp_path / name, size=size, codec=codec, pix=pix, **kw)
    if cut:  # a recording whose first packets are no keyframes (a broadcast or stream capture cut mid-GOP)
        data = path.read_bytes()
        path.write_bytes(data[188 * int(len(data) / 188 * cut):])
    frames = list(VideoFrames(path))
    info = probe(path)
    assert frames[0].shape == (size[1], size[0], 3) and (info["width"], info["height"]) == size
    assert info["frames"] == len(frames) and (len(frames) == n if not cut else 0 < len(frames) < n)
    w = size[0]
    ramp = np.linspace(0, 255, w)
    for frame in frames[:: max(1, len(frames) // 4)]:
        row = frame[size[1] // 2, :, 0].astype(float)
        shift = int(np.argmin(row[: w // 2 + 1])) if not cut else None  # the gradient rolls one pixel a frame
        if shift is not None:
            assert np.abs(row - np.roll(ramp, shift)).mean() < 8, name  # colours and range right (full range too)
    assert info["audio_seconds"] == (None if "audio" not in kw else pytest.approx(10 * 1024 / 44100, abs=0.05))
