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
    from echomimic_lib.jobs.reference_input import read_reference

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
    (lambda d: _without_moov(d / "IMG_0042.MP4"), "an MP4/MOV/M4A file without its index (no 'moov' box): the recording was "
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


# ---------------------------------------------------------------------------------------------------------- audio
def _tone(n: int, rate: int) -> np.ndarray:
    return 0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / rate)


def _riff(path: Path, data: bytes, channels: int, rate: int, bits: int, tag: int = 1, declared: int | None = None) -> Path:
    """A wav written byte by byte: any sample format, and a data size that may lie (``declared``)."""
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    size = len(data) if declared is None else declared
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt "
                     + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data)
    return path


def _encoded(path: Path, codec: str, rate: int, layout: str = "mono", metadata=None) -> Path:
    import av

    with av.open(str(path), "w") as c:
        c.metadata.update(metadata or {})
        s = c.add_stream(codec, rate=rate)
        s.layout = layout
        channels, fmt = len(av.AudioLayout(layout).channels), s.format.name
        step = s.codec_context.frame_size or 1024
        x = _tone(rate, rate).astype(np.float32)
        for pos in range(0, rate, step):
            block = np.tile(x[pos:pos + step], (channels, 1))
            block = block if fmt.endswith("p") else block.T.reshape(1, -1)
            if fmt.startswith(("s16", "s32")):
                block = (block * 32767).astype(np.int16) if fmt.startswith("s16") else (block * 2**31).astype(np.int32)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format=fmt, layout=layout)
            frame.sample_rate, frame.pts = rate, pos
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    return path


def _audio_sample(d: Path, name: str) -> Path:
    sr, x = 16000, _tone(16000, 16000)
    pcm16 = (x * 32767).astype("<i2").tobytes()
    make = {
        "u8.wav": lambda p: _riff(p, (x * 127 + 128).astype(np.uint8).tobytes(), 1, sr, 8),
        "s32.wav": lambda p: _riff(p, (x * (2**31 - 1)).astype("<i4").tobytes(), 1, sr, 32),
        "f64.wav": lambda p: _riff(p, x.astype("<f8").tobytes(), 1, sr, 64, tag=3),
        "lying.wav": lambda p: _riff(p, pcm16, 1, sr, 16, declared=10**9),  # says 8.7 h, holds 1 s
        "6ch.wav": lambda p: _riff(p, np.repeat((x * 32767).astype("<i2")[:, None], 6, 1).tobytes(), 6, sr, 16),
        "id3.mp3": lambda p: _encoded(p, "libmp3lame", 44100, "stereo", {"title": "Take 3", "artist": "Me"}),
        "voice.flac": lambda p: _encoded(p, "flac", 44100),
        "voice.ogg": lambda p: _encoded(p, "libopus", 48000),
        "audio_only.mp4": lambda p: _encoded(p, "aac", 44100, "stereo"),
    }[name]
    return make(d / name)


@pytest.mark.parametrize("name", ["u8.wav", "s32.wav", "f64.wav", "lying.wav", "6ch.wav", "id3.mp3", "voice.flac",
                                  "voice.ogg", "audio_only.mp4"])
def test_the_sound_files_users_have_are_read_at_their_level_and_length(tmp_path, name):
    from echomimic_lib.io.video_io import probe
    from echomimic_lib.jobs.speech_input import frame_count, probe_speech, read_speech

    path = _audio_sample(tmp_path, name)
    probe_speech(path)
    wav, sr, raw = read_speech(path, 24.0)
    assert wav.dtype == np.float32 and 0.27 < float(np.abs(wav).max()) < 0.34, name
    assert wav.shape[0] == (6 if name == "6ch.wav" else 2 if name in ("id3.mp3", "audio_only.mp4") else 1)
    assert wav.shape[1] / sr == pytest.approx(1.0, abs=0.06) and probe(path)["audio_seconds"] == wav.shape[1] / sr
    assert frame_count(raw, 24.0, None) in (23, 24, 25)


def test_an_mp3_whose_header_claims_days_is_read_not_refused_for_its_length(tmp_path):
    """The header's duration refuses hours of audio before they are decoded; an mp3 whose Xing header counts 10^8
    frames (27 days) in 17 kB was refused as '43537 min ... cut it into parts'."""
    from echomimic_lib.jobs.speech_input import frame_count, read_speech

    path = _audio_sample(tmp_path, "id3.mp3")
    data = bytearray(path.read_bytes())
    at = max(data.find(b"Xing"), data.find(b"Info"))
    assert at > 0 and struct.unpack(">I", data[at + 4:at + 8])[0] & 1  # the frame count is there
    struct.pack_into(">I", data, at + 8, 10**8)
    path.write_bytes(bytes(data))
    wav, sr, raw = read_speech(path, 24.0)
    assert wav.shape[1] / sr == pytest.approx(1.0, abs=0.06) and frame_count(raw, 24.0, None) in (24, 25)


@pytest.mark.parametrize("data,words", [(b"", "the audio stream is empty"), (bytes(32000), "the audio is silent")],
                         ids=["zero-samples", "all-silent"])
def test_an_empty_or_silent_wav_is_refused_with_the_fix(tmp_path, data, words):
    from echomimic_lib.jobs.speech_input import read_speech

    path = _riff(tmp_path / "take.wav", data, 1, 16000, 16)
    with pytest.raises(EchoMimicError, match=words) as err:
        read_speech(path, 24.0)
    assert str(path) in str(err.value) and ("recording" in str(err.value) or "speech" in str(err.value))


# ----------------------------------------------------------------------------------------- variable frame rate
def _timed(path: Path, times_ms, bframes: int = 0) -> Path:
    """A video whose frames have the given timestamps (ms), with a silent sound track."""
    import fractions

    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt, s.options = 64, 48, "yuv420p", {"bf": str(bframes)}
        s.codec_context.time_base = s.time_base = fractions.Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 2, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, fractions.Fraction(1, 1000)
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    return path


STEADY = [round(i * 1000 / 30) for i in range(90)]
JITTER = [t + (5 if i % 2 else 0) for i, t in enumerate(STEADY)]  # a phone's few milliseconds either way
PAUSED = STEADY[:45] + [t + 2000 for t in STEADY[45:]]  # a screen recording that stood still for 2 s


@pytest.mark.parametrize("times,bframes,worst", [(STEADY, 0, 0.01), (STEADY, 3, 0.01), (JITTER, 0, 0.01),
                                                 (PAUSED, 0, 0.9), (PAUSED, 3, 0.9)],
                         ids=["steady", "steady-bframes", "jitter", "paused", "paused-bframes"])
def test_the_drift_of_a_variable_frame_rate_is_measured_from_the_packets(tmp_path, times, bframes, worst):
    from echomimic_lib.io.video_io import VideoFrames, frame_time_drift

    path = _timed(tmp_path / "clip.mp4", times, bframes)
    drift, at = frame_time_drift(path, VideoFrames(path).fps)
    assert (drift > worst) if times is PAUSED else (drift < worst), drift
    assert at == 45 if times is PAUSED else True


def test_dub_says_a_variable_frame_rate_source_is_placed_on_its_clock(tmp_path, caplog):
    """``dub`` put the source's own sound back under its frames written one after another: a video that paused 2 s
    came out a second off it, without a word. Its frames are now placed by their timestamps (tests/test_vfr_retime_2.py)."""
    from echomimic_lib.io.video_io import VideoFrames, count_frames
    from echomimic_lib.jobs.dub import on_its_clock

    paused, steady = _timed(tmp_path / "paused.mp4", PAUSED), _timed(tmp_path / "steady.mp4", STEADY)
    placed = []
    with caplog.at_level(logging.WARNING):
        for path in (steady, paused):
            count_frames(path, 10**6, times := [])
            placed.append(on_its_clock(VideoFrames(path), times))
            assert caplog.text if path is paused else not caplog.text
    assert placed[0] is None and placed[1] is not None
    assert "paused.mp4 has a variable frame rate: its frame 45 is shown 1.00 s away" in caplog.text
    assert "placed by their timestamps" in caplog.text and "Convert the video" not in caplog.text
