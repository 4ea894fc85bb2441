"""The files users really have, given to ``echomimic animate`` / ``echomimic batch``: accepted as they are, or refused
with a message that names the problem and the fix, before any weight is touched.

Manifests as spreadsheets save them (BOM, CRLF, semicolons, tabs, UTF-16, the Windows code page, repeated columns,
Windows paths), reference images as phones and editors save them (HEIC, transparency, animations, 16-bit, tiny and
oversized), and audio that would make a video longer than ``--length`` allows (refused from the file's header).
"""
from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.cli import main as cli
from echomimic_lib.errors import EchoMimicError
from echomimic_lib.jobs.batch.manifest import ManifestError, crossed, read_manifest
from tests._media import write_wav
from tests.test_cli_bad_input import MP_MODEL, loads  # noqa: F401  (the fixture that fails any weight access)

HEIC_BYTES = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)


@pytest.fixture
def folder(tmp_path):
    """A manifest folder: a portrait-sized grey PNG, 1 s of speech-like tone, and one in a folder with a space,
    a comma and an accent in its name."""
    import cv2

    d = tmp_path / "m"
    (d / "my dir, é").mkdir(parents=True)
    cv2.imwrite(str(d / "ref.png"), np.full((96, 96, 3), 127, np.uint8))
    cv2.imwrite(str(d / "my dir, é" / "ref é.png"), np.full((96, 96, 3), 90, np.uint8))
    write_wav(d / "speech.wav", 0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000))
    return d


def _jobs(folder: Path, name: str, data: bytes):
    p = folder / name
    p.write_bytes(data)
    return read_manifest(p, folder / "out")


def _summary(jobs):
    return [(j.line, j.name, j.request.reference, j.request.audio, j.request.seed, j.request.cfg) for j in jobs]


PLAIN = "name,reference,audio,seed,cfg\na,ref.png,speech.wav,3,2.5\nb,ref.png,speech.wav,4,\n"


@pytest.mark.parametrize("text,encoding", [
    ("\ufeffname,reference,audio,seed,cfg\r\na,ref.png,speech.wav,3,2.5\r\nb,ref.png,speech.wav,4,\r\n,,,,\r\n,,,,\r\n", "utf-8"),
    (" Name , Reference ,AUDIO,Seed , CFG ,,\na,ref.png,speech.wav,3,2.5,,\nb,ref.png,speech.wav,4,,,\n", "utf-8"),
    ("name;reference;audio;seed;cfg\r\na;ref.png;speech.wav;3;2.5\r\nb;ref.png;speech.wav;4;\r\n", "utf-8"),
    ("name\treference\taudio\tseed\tcfg\r\na\tref.png\tspeech.wav\t3\t2.5\r\nb\tref.png\tspeech.wav\t4\t\r\n", "utf-16"),
    ("name,reference,audio,seed,cfg\na,ref.png,speech.wav,3,2.5,,\nb,ref.png,speech.wav,4\n", "utf-8"),
], ids=["excel-csv-utf8-bom-crlf-blank-rows", "header-spaces-case-empty-columns", "semicolons-european-excel",
        "utf16-tabs-unicode-text", "empty-cells-past-the-header"])
def test_spreadsheet_exports_give_the_jobs_of_a_plain_csv(folder, text, encoding):
    assert _summary(_jobs(folder, "x.csv", text.encode(encoding))) == _summary(_jobs(folder, "plain.csv", PLAIN.encode()))


def test_a_semicolon_file_keeps_quoted_cells_and_a_decimal_comma_is_told(folder):
    jobs = _jobs(folder, "q.csv", 'reference;audio\r\n"my dir, é/ref é.png";speech.wav\r\n'.encode())
    assert jobs[0].request.reference == str(folder / "my dir, é" / "ref é.png")
    with pytest.raises(ManifestError, match=r"line 2: cfg: '2,5' is not a number; write decimals with a point: 2\.5"):
        _jobs(folder, "dec.csv", b"reference;audio;cfg\nref.png;speech.wav;2,5\n")


def test_quoted_paths_with_spaces_commas_accents_backslashes_and_home(folder, monkeypatch):
    monkeypatch.setenv("HOME", str(folder))
    rows = ('reference,audio\n"my dir, é/ref é.png",speech.wav\n"my dir, é\\ref é.png",speech.wav\n'
            '~/ref.png,~/speech.wav\n')
    got = [(j.request.reference, j.request.audio) for j in _jobs(folder, "paths.csv", rows.encode())]
    accented = str(folder / "my dir, é" / "ref é.png")
    assert got == [(accented, str(folder / "speech.wav"))] * 2 + [(str(folder / "ref.png"), str(folder / "speech.wav"))]


def test_a_windows_drive_path_is_named_as_one(folder):
    with pytest.raises(ManifestError, match=r"line 2: reference: C:\\Users\\me\\ref.png is a Windows path.*a relative one "
                                            r"is read from .*m\)"):
        _jobs(folder, "win.csv", b"reference,audio\nC:\\Users\\me\\ref.png,speech.wav\n")


@pytest.mark.parametrize("suffix,data", [
    (".csv", 'name,reference,audio\r\ncaf\u00e9,ref.png,speech.wav\r\n'.encode("cp1252")),
    (".jsonl", '{"name": "caf\u00e9", "reference": "ref.png", "audio": "speech.wav"}\n'.encode("latin-1")),
])
def test_another_encoding_is_refused_naming_the_line_and_the_fix(folder, suffix, data, capsys):
    (folder / f"m{suffix}").write_bytes(data)
    rc = cli(["batch", str(folder / f"m{suffix}"), "-o", str(folder / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err  # was a UnicodeDecodeError traceback, exit 1
    assert ("line 2" if suffix == ".csv" else "line 1") in err
    for words in ("is not UTF-8 text (byte 0xE9", "caf", "CSV UTF-8", "run the same command again"):
        assert words in err, err
    assert not (folder / "out").exists()


@pytest.mark.parametrize("header,first,second", [
    ("name,reference,audio,seed,seed", "'seed' (column 4)", "'seed' (column 5)"),
    ("reference,audio,no-face-crop,No_Face_Crop", "'no-face-crop' (column 3)", "'No_Face_Crop' (column 4)"),
    ("reference,audio,face_crop,no-face-crop", "'face_crop' (column 3)", "'no-face-crop' (column 4)"),
])
def test_a_column_named_twice_is_refused_not_guessed(folder, header, first, second):
    cells = ",".join({"name": "a", "reference": "ref.png", "audio": "speech.wav"}.get(h, "1") for h in header.split(","))
    with pytest.raises(ManifestError, match="line 1: the header names column") as exc:
        _jobs(folder, "dup.csv", f"{header}\n{cells}\n".encode())
    assert first in str(exc.value) and second in str(exc.value) and "keep one of them" in str(exc.value)


def test_a_value_under_an_unnamed_column_is_refused(folder):
    with pytest.raises(ManifestError, match="line 3: column 3 has a value but no name in the header"):
        _jobs(folder, "unnamed.csv", b"reference,audio,,\nref.png,speech.wav,,\nref.png,speech.wav,7,\n")


def test_jsonl_with_a_bom_blank_lines_and_crlf_is_read_and_repeated_keys_refused(folder):
    rows = '\ufeff{"name": "a", "reference": "ref.png", "audio": "speech.wav"}\r\n\r\n\n{"name": "b", "reference": "ref.png", ' \
           '"audio": "speech.wav"}\r\n\r\n'
    assert [(j.line, j.name) for j in _jobs(folder, "m.jsonl", rows.encode())] == [(1, "a"), (4, "b")]
    with pytest.raises(ManifestError, match=r"line 1: the line names column 'seed' twice: 'seed' \(key 3\) and 'seed' "):
        _jobs(folder, "dup.jsonl", b'{"reference": "ref.png", "audio": "speech.wav", "seed": 1, "seed": 2}\n')


def test_a_folder_of_heic_photos_says_why_nothing_is_picked_up(folder, caplog):
    photos = folder / "photos"
    photos.mkdir()
    (photos / "IMG_0001.HEIC").write_bytes(HEIC_BYTES)
    with pytest.raises(EchoMimicError, match=r"no png/jpg/jpeg/webp/bmp files in it; its \.heic files are not picked up.*"
                                             "convert them to PNG or JPEG"):
        crossed(folder / "out", folder, images=photos)
    (photos / "ok.png").write_bytes((folder / "ref.png").read_bytes())
    with caplog.at_level(logging.WARNING):
        jobs = crossed(folder / "out", folder, images=photos)
    assert [Path(j.request.reference).name for j in jobs] == ["ok.png"] and ".heic files are not picked up" in caplog.text


# ------------------------------------------------------------------------------------------------- reference images
def _png_header_only(path: Path, width: int, height: int) -> Path:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("make,words", [
    (lambda d: (d / "IMG_0001.HEIC").write_bytes(HEIC_BYTES) and d / "IMG_0001.HEIC",
     ["a HEIC/HEIF photo", "OpenCV cannot read", "convert it to PNG or JPEG"]),
    (lambda d: (d / "renamed.jpg").write_bytes(HEIC_BYTES) and d / "renamed.jpg", ["a HEIC/HEIF photo", "PNG or JPEG"]),
    (lambda d: (d / "empty.png").write_bytes(b"") == 0 and d / "empty.png", ["the file is empty (0 bytes)"]),
    (lambda d: _png_header_only(d / "huge.png", 40000, 30000), ["40000x30000 px (1200 megapixels)", "scale it down"]),
    (lambda d: (d / "tiny.png", __import__("cv2").imwrite(str(d / "tiny.png"), np.zeros((32, 48, 3), np.uint8)))[0],
     ["48x32 px is too small", "at least 64 px on the short side", "larger image"]),
], ids=["heic", "heic-named-jpg", "empty", "over-opencv-pixel-limit", "32-px"])
def test_unusable_reference_images_are_named_before_any_weight(make, words, tmp_path, loads, capsys, shared_data):  # noqa: F811
    ref = make(tmp_path)
    wav = write_wav(tmp_path / "speech.wav", 0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000))
    out = tmp_path / "out.mp4"
    rc = cli(["animate", "--reference", str(ref), "--audio", str(wav), "-o", str(out), "--models", str(tmp_path),
              "--offline", "--mediapipe-model", str(shared_data / "mediapipe" / MP_MODEL)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "cannot be read as an image" not in err, err
    assert all(w in err for w in words), err
    assert loads == [] and not out.exists()


def test_readable_images_decode_as_before_with_warnings_for_transparency_and_animation(tmp_path, caplog):
    import cv2
    from PIL import Image

    from echomimic_lib.jobs.reference_input import read_reference

    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[16:48, 16:48] = (200, 100, 50)
    rgba = np.dstack([rgb, np.where(rgb[..., :1] > 0, 255, 0).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    Image.fromarray(rgb).save(tmp_path / "anim.gif", save_all=True, append_images=[Image.fromarray(255 - rgb)])
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(rgb).save(tmp_path / "jpeg_named.png", format="JPEG")
    cv2.imwrite(str(tmp_path / "deep.png"), rgb.astype(np.uint16) * 257)
    for name in ("cutout.png", "anim.gif", "cmyk.jpg", "palette.png", "gray.png", "jpeg_named.png", "deep.png"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            got = read_reference(tmp_path / name)
        want = cv2.cvtColor(cv2.imread(str(tmp_path / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert got.dtype == np.uint8 and got.shape == (64, 64, 3) and np.array_equal(got, want), name  # as before
        warned = {"cutout.png": "has a transparent background (75% of the pixels)", "anim.gif": "an animation of 2 frames"}
        assert (warned[name] in caplog.text) if name in warned else not caplog.text, (name, caplog.text)
    assert np.abs(read_reference(tmp_path / "cmyk.jpg")[32, 32].astype(int) - (200, 100, 50)).max() <= 3


# ---------------------------------------------------------------------------------------------------------- audio
def test_audio_longer_than_a_video_can_be_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    import echomimic_lib.io.audio_file as audio_file
    from echomimic_lib.jobs import speech_input, speech_length

    wav = write_wav(tmp_path / "talk.wav", 0.3 * np.sin(2 * np.pi * 200 * np.arange(32000) / 16000))  # 2 s
    monkeypatch.setattr(speech_length, "MAX_LENGTH", 30)
    decoded = []
    real = audio_file.read_audio
    monkeypatch.setattr(audio_file, "read_audio", lambda p, *a, **k: decoded.append(p) or real(p, *a, **k))
    with pytest.raises(EchoMimicError, match=r"talk.wav lasts 0 min: 48 frames at 24 fps, more than the 30 a video can "
                                             r"have; cut it into parts.*or pass --length N"):
        speech_input.read_speech(wav, 24.0)
    assert decoded == []  # 1.6 times too long: said from the header, nothing decoded
    assert speech_input.read_speech(wav, 24.0, 30)[0].shape == (1, 32000)  # --length: the first 30 frames
    assert speech_input.read_speech(wav, 15.0)[0].shape == (1, 32000)  # 30 frames: allowed
    decoded.clear()
    with pytest.raises(EchoMimicError, match="40 frames at 20 fps"):  # 1.33 times: a header may estimate; decoded, exact
        speech_input.read_speech(wav, 20.0)
    assert decoded == [wav]


def _encode(path: Path, codec: str, rate: int, layout: str = "mono", seconds: float = 1.0, fmt: str | None = None) -> Path:
    """A 220 Hz tone written with PyAV (any codec and channel layout the files users have come in)."""
    import av

    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate)
        s.layout = layout
        channels = len(av.AudioLayout(layout).channels)
        n = int(seconds * rate)
        x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / rate)).astype(np.float32)
        sample_fmt = s.format.name
        for pos in range(0, n, 1024):
            block = np.tile(x[pos:pos + 1024], (channels, 1))
            block = block if sample_fmt.endswith("p") else block.T.reshape(1, -1)
            kind = sample_fmt.rstrip("p")
            block = {"s16": lambda b: (b * 32767).astype(np.int16), "s32": lambda b: (b * 2**31 * 0.999).astype(np.int32),
                     "dbl": lambda b: b.astype(np.float64)}.get(kind, lambda b: b)(block)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format=sample_fmt, layout=layout)
            frame.sample_rate, frame.pts = rate, pos
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    return path


@pytest.mark.parametrize("name,codec,rate,layout,fmt", [
    ("phone.m4a", "aac", 44100, "stereo", None), ("raw.aac", "aac", 48000, "mono", "adts"),
    ("voice.opus", "libopus", 48000, "mono", None), ("telephone.wav", "pcm_s16le", 8000, "mono", None),
    ("studio.wav", "pcm_s24le", 96000, "stereo", None), ("surround.wav", "pcm_s16le", 48000, "5.1", None),
    ("float.wav", "pcm_f32le", 44100, "mono", None),
])
def test_the_audio_files_users_have_are_read_with_the_frames_of_their_length(tmp_path, name, codec, rate, layout, fmt):
    from echomimic_lib.jobs.speech_input import frame_count, probe_speech, read_speech

    path = _encode(tmp_path / name, codec, rate, layout, fmt=fmt)
    probe_speech(path)
    wav, sr, raw = read_speech(path, 24.0)
    assert sr == rate and wav.dtype == np.float32 and 0.25 < float(np.abs(wav).max()) < 0.5
    assert frame_count(raw, 24.0, None) == 24


def test_a_long_seed_a_spreadsheet_rounded_and_a_workbook_are_refused_with_the_fix(folder):
    with pytest.raises(ManifestError, match=r"line 2: seed: '1\.23457E\+11' is a whole number in scientific notation.*"
                                            "format the column as Text"):
        _jobs(folder, "sci.csv", b"reference,audio,seed\nref.png,speech.wav,1.23457E+11\n")
    assert _jobs(folder, "ok.csv", b"reference,audio,seed,cfg\nref.png,speech.wav,123457000000,2.5e0\n")[0].request.seed == 123457000000
    with pytest.raises(EchoMimicError, match="a spreadsheet workbook, not a manifest; save the sheet as CSV"):
        _jobs(folder, "jobs.xlsx", b"PK\x03\x04")
    assert _summary(_jobs(folder, "t.tsv", PLAIN.replace(",", "\t").encode())) == _summary(_jobs(folder, "p.csv", PLAIN.encode()))


def test_an_accented_path_opencv_cannot_open_is_decoded_from_its_bytes(folder, monkeypatch):
    """OpenCV's imread on Windows opens no path outside the ANSI code page; the bytes decode the same image."""
    import cv2

    from echomimic_lib.jobs.reference_input import read_reference

    path = folder / "my dir, é" / "ref é.png"
    want = read_reference(path)
    real = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda name, flags=cv2.IMREAD_COLOR: None if not name.isascii() else real(name, flags))
    assert np.array_equal(read_reference(path), want) and want.shape == (96, 96, 3) and int(want[0, 0, 0]) == 90


def test_version_and_mode_cells_are_read_as_written_by_hand(folder):
    """'V1' as the README names the versions, 'Audio' capitalised by a spreadsheet, 'v1, audio' typed with a space:
    the other cells were always trimmed; these two were refused as unknown."""
    body = "reference,audio,version,mode\nref.png,speech.wav,V1,Audio\nref.png, speech.wav, v1, audio\n"
    assert [j.request.mode for j in _jobs(folder, "hand.csv", body.encode())] == ["v1-audio", "v1-audio"]
    with pytest.raises(ManifestError, match="unknown version 'v4'"):
        _jobs(folder, "v4.csv", b"reference,audio,version\nref.png,speech.wav,V4\n")


def test_command_line_paths_are_read_from_the_current_folder_and_pose_auto_is_no_file(folder, tmp_path, monkeypatch):
    """``echomimic batch m/jobs.csv --models models`` looked for (and, online, downloaded) the weights in m/models."""
    (tmp_path / "models").mkdir()
    (folder / "jobs.csv").write_text("reference,audio\nref.png,speech.wav\n")
    monkeypatch.chdir(tmp_path)
    job = read_manifest(Path("m") / "jobs.csv", "out", {"models": "models", "mediapipe_model": "face.task"})[0]
    assert (job.request.models, job.request.mediapipe_model) == (str(tmp_path / "models"), str(tmp_path / "face.task"))
    assert job.request.reference == str(Path("m") / "ref.png")  # the manifest's own cells: from its folder, as before
    monkeypatch.chdir(folder)  # the manifest in the current folder: the values as they were (same fingerprints)
    assert read_manifest("jobs.csv", "out", {"models": "models"})[0].request.models == "models"
    (folder / "v2.csv").write_text("reference,audio,version,pose\nref.png,speech.wav,v2,auto\n")
    assert read_manifest("v2.csv", "out")[0].request.pose == "auto"  # was "pose: .../auto not found"


def test_v3_a_reference_under_16_px_is_an_input_error_and_a_small_one_is_told_its_size(tmp_path, caplog):
    """EchoMimicV3 never enlarges the reference (the official size rule): under 16 px was a ValueError reported as a
    bug; a reference smaller than --width x --height gave a smaller video without a word."""
    import cv2

    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3

    wav = write_wav(tmp_path / "speech.wav", 0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000))
    for name, shape in (("tiny.png", (8, 12, 3)), ("small.png", (32, 32, 3))):
        cv2.imwrite(str(tmp_path / name), np.full(shape, 128, np.uint8))
    req = V3Request(reference=str(tmp_path / "tiny.png"), audio=str(wav), output=str(tmp_path / "o.mp4"),
                    models=str(tmp_path), size=(64, 64), length=9)
    with pytest.raises(EchoMimicError, match="12x8 px is too small; EchoMimicV3 needs at least 16 px on each side"):
        plan_v3(req)
    with caplog.at_level(logging.WARNING):
        plan = plan_v3(V3Request(**{**req.__dict__, "reference": str(tmp_path / "small.png")}))
    assert plan.size == (32, 32) and "renders at the reference's size, 32x32" in caplog.text
