"""Loose ends that earlier sessions noticed and left alone. Before: the command line's ``--fps`` check said its range in
other words than the nodes' (and ``--fps abc`` only "must be a number"); ``read_video`` opened its file once more just to
ask whether it has audio (dub and evaluate too); batch planning decoded a shared dub recording once per row; ``prepare``
kept no record of ``--whisper``, so preparing again with another audio encoder (or none) mixed features in one dataset;
``export`` mixed a model's files into a folder of other files, and ``v3-export`` left the folders it had created behind
when it failed; an audio stream whose sample rate changes partway was measured and read with its later part at the
wrong rate (PyAV's resampler passes those frames through)."""
from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from tests.conftest import DATA
from tests.test_trainer_mistakes_3 import _train, no_weights  # noqa: F401 - no_weights: a fixture
from tests.test_trust import _fake_checkpoint
from tests.test_trust_audit3_train import _fresh_state, _tree, _v3  # noqa: F401 - _fresh_state: autouse fixture

# ------------------------------------------------------------------ 1. one frame-rate rule
@pytest.mark.parametrize("value", [0.0, 500.0, float("nan"), float("inf"), "abc", -3])
def test_the_command_line_and_the_nodes_say_the_frame_rate_rule_in_one_shape(value):
    from echomimic_lib.jobs.animate_checks import check_fps
    from echomimic_lib.modes import check_frame_rate

    with pytest.raises(EchoMimicError) as flag:
        check_fps(value)
    with pytest.raises(EchoMimicError) as node:
        check_frame_rate(value, "fps")
    assert str(flag.value) == f"--fps {value}: the frame rate must be a number between 1 and 120 (24 or 25 is typical)."
    assert str(flag.value) == "--" + str(node.value)  # the same words, each naming its own input
    assert check_fps("25") == check_frame_rate("25") == 25.0


# ------------------------------------------------------------------ 2. read_video opens its file once less
@pytest.fixture
def opens(monkeypatch):
    import av

    seen, real = [], av.open

    def counted(*a, **k):
        seen.append(str(a[0]))
        return real(*a, **k)
    monkeypatch.setattr(av, "open", counted)
    return seen


def _talking_video(path: Path) -> Path:
    from echomimic_lib.io.video_io import write_video

    t = np.arange(16000, dtype=np.float32) / 16000
    frames = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    return write_video(path, frames, 12.0, (0.3 * np.sin(2 * np.pi * 220 * t))[None], 16000)


@pytest.mark.parametrize("with_audio,want", [(True, 3), (False, 2)])
def test_read_video_learns_about_the_audio_from_the_header_it_already_read(with_audio, want, tmp_path, opens):
    from echomimic_lib.io.video_io import read_video

    video = _talking_video(tmp_path / "talk.mp4")
    opens.clear()
    clip = read_video(video, with_audio=with_audio)
    assert len(opens) == want, opens  # the header, the frames (and the audio): before one more, for "has it audio?"
    assert clip.frames.shape[0] == 12 and (clip.audio is not None) == with_audio
    if with_audio:
        assert clip.sample_rate == 16000 and abs(clip.audio.shape[1] - 16000) < 2048


def test_dub_without_new_speech_reads_the_sources_sound_without_asking_twice(tmp_path, opens):
    from types import SimpleNamespace

    from echomimic_lib.io.video_io import VideoFrames
    from echomimic_lib.jobs.dub import _speech

    video = str(_talking_video(tmp_path / "talk.mp4"))
    header = VideoFrames(video)
    opens.clear()
    audio, sr, *_ = _speech(SimpleNamespace(audio=None, length=None), video, 12, 12.0, 12.0, header.has_audio)
    assert sr == 16000 and audio is not None and len(opens) == 1


# ------------------------------------------------------------------ 3. batch planning: a shared recording decoded once
def test_dub_rows_that_share_a_recording_decode_it_once_while_planning(tmp_path, monkeypatch):
    import echomimic_lib.io.audio_file as audio_file
    from echomimic_lib.jobs.batch.manifest import check_jobs
    from echomimic_lib.jobs.batch.manifest_row import build_job

    decoded, real = [], audio_file.read_audio

    def counted(path, *a, **k):
        decoded.append(Path(path).name)
        return real(path, *a, **k)
    monkeypatch.setattr(audio_file, "read_audio", counted)
    silent = tmp_path / "silent.wav"
    _wav(silent, np.zeros(16000, np.float32))
    face = DATA / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"
    rows = [{"video": str(DATA / "video" / "driving_a.mp4"), "audio": str(audio), "mediapipe_model": str(face),
             "models": str(tmp_path / "m"), "name": f"row{n}"}
            for n, audio in enumerate([DATA / "audio" / "echomimic_en.wav"] * 3 + [silent] * 2 + [tmp_path / "gone.wav"])]
    _wav(tmp_path / "gone.wav", np.zeros(16000, np.float32))
    built = [build_job(r, n + 2, Path.cwd(), tmp_path / "out") for n, r in enumerate(rows)]
    (tmp_path / "gone.wav").unlink()  # removed after the manifest was read
    jobs = check_jobs(built)
    assert sorted(decoded) == ["echomimic_en.wav", "silent.wav"]  # before: once per row (5 decodes)
    assert [j.error is None for j in jobs] == [True, True, True, False, False, False]
    assert jobs[3].error == jobs[4].error and "no audible sound" in jobs[3].error
    assert "gone.wav" in jobs[5].error and "file not found" in jobs[5].error


def _wav(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())


# ------------------------------------------------------------------ 4. prepare records --whisper
def test_prepare_records_the_audio_encoder_and_refuses_another_into_the_same_dataset(tmp_path, monkeypatch, capsys):
    from echomimic_lib.io.video_io import write_video

    monkeypatch.setattr("trainer.data.clip.Tools.whisper", property(lambda self: "an encoder"))  # no model loaded
    monkeypatch.setattr("trainer.data.clip.whisper_rows", lambda wave, tools, dtype: np.zeros((len(wave) // 320, 384), dtype))
    videos = tmp_path / "videos"
    videos.mkdir()
    t = np.arange(32000, dtype=np.float32) / 16000
    frames = np.broadcast_to((np.arange(96, dtype=np.uint8) * 2)[None, None, :, None], (50, 48, 96, 3)).copy()
    write_video(videos / "talk.mp4", frames, 25.0, (0.3 * np.sin(2 * np.pi * 220 * t))[None], 16000)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"whisper model A")
    b.write_bytes(b"whisper model B")
    copy = tmp_path / "elsewhere" / "whisper_tiny.pt"
    copy.parent.mkdir()
    copy.write_bytes(a.read_bytes())
    ds = tmp_path / "ds"
    base = ["prepare", videos, ds, "--kind", "full", "--size", "64", "-q"]
    rc, err = _train(base + ["--whisper", a], capsys)
    assert rc == 0, err
    sha = hashlib.sha256(b"whisper model A").hexdigest()
    assert json.loads((ds / "prepare_config.json").read_text())["whisper"] == {"file": "a.pt", "sha256": sha}
    before = {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()}
    for extra, words in (([b], [f"prepared with --whisper a.pt (sha256 {sha[:12]})", "this run asks for --whisper b.pt (sha256 "
                                f"{hashlib.sha256(b'whisper model B').hexdigest()[:12]})"]),
                         ([], ["prepared with --whisper a.pt", "this run asks for --whisper (not given)"])):
        rc, err = _train(base + (["--whisper", *extra] if extra else []), capsys)
        assert rc == 2 and all(w in err for w in words), err
        assert "Prepare into a new folder, or give the dataset's own settings" in err
        assert {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()} == before
    rc, err = _train(base + ["--whisper", copy], capsys)  # the same model under another path and name: goes on
    assert rc == 0, err


def test_a_dataset_prepared_without_whisper_refuses_one_with_it(tmp_path):
    from trainer.config import ConfigError
    from trainer.data.clean import PrepareConfig
    from trainer.data.prepare_settings import check_same_settings, whisper_identity
    from dataclasses import asdict

    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "prepare_config.json").write_text(json.dumps({**asdict(PrepareConfig(size=64)), "whisper": None}))
    model = tmp_path / "whisper_tiny.pt"
    model.write_bytes(b"tiny")
    check_same_settings(ds, PrepareConfig(size=64), None)
    with pytest.raises(ConfigError, match=r"prepared with --whisper \(not given\).*asks for --whisper whisper_tiny.pt"):
        check_same_settings(ds, PrepareConfig(size=64), whisper_identity(model))


# ------------------------------------------------------------------ 5. export: other files, new folders
def test_an_export_into_a_folder_of_other_files_is_refused_before_anything_is_read(tmp_path, no_weights, capsys):  # noqa: F811
    ckpt = _fake_checkpoint(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "holiday.jpg").write_bytes(b"jpeg")
    before = _tree(tmp_path)
    rc, err = _train(["export", ckpt, mine, "--no-verify"], capsys)
    assert rc == 2 and "holds other files (holiday.jpg, notes.txt)" in err and "no earlier export" in err, err
    assert "Give a new or empty folder, or add --force" in err
    assert _tree(tmp_path) == before


def test_an_earlier_export_or_force_may_be_written_into(tmp_path, monkeypatch):
    from trainer.export_paths import refuse_foreign_folder

    done = tmp_path / "done"
    done.mkdir()
    (done / "export.json").write_text("{}")
    (done / "denoising_unet.pth").write_bytes(b"old")
    refuse_foreign_folder(done)  # an earlier export: its files are refused one by one without --force
    refuse_foreign_folder(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"")
    refuse_foreign_folder(tmp_path / "empty")


@pytest.mark.parametrize("command,lora", [("v3-export", True), ("export", True), ("export", False)])
def test_an_export_that_fails_removes_the_folders_it_created(command, lora, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    import echomimic_lib.io.weights as weights
    import trainer.export as ex

    ckpt = _fake_checkpoint(tmp_path, lora)
    if command == "v3-export":
        _v3(ckpt)
    monkeypatch.setattr(ex.EchoConfig, "from_dict", staticmethod(lambda d: None))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr(weights, "save_file", full, raising=False)
    monkeypatch.setattr(ex, "save_state_dict", full)
    dest = tmp_path / "new" / "deeper" / ("me.safetensors" if lora else "model")
    rc, err = _train([command, ckpt, dest, "--no-verify"], capsys)
    assert rc == 2 and "no space left" in err.lower(), err
    assert not (tmp_path / "new").exists()  # before (v3-export): new/deeper/ stayed behind


def test_an_export_says_which_folders_it_creates(tmp_path, caplog, capsys):
    import logging

    ckpt = _v3(_fake_checkpoint(tmp_path, True))
    with caplog.at_level(logging.INFO, logger="trainer.export_paths"):
        rc, err = _train(["v3-export", ckpt, tmp_path / "a" / "b" / "me.safetensors", "--no-verify"], capsys)
    assert rc == 0, err
    assert f"creating the folder {tmp_path / 'a' / 'b'} ({tmp_path / 'a'} did not exist)" in caplog.text


# ------------------------------------------------------------------ 6. a sample rate that changes partway
def _adts(rate: int, seconds: float) -> bytes:
    import io

    import av

    buf = io.BytesIO()
    c = av.open(buf, "w", format="adts")
    s = c.add_stream("aac", rate=rate)
    s.layout = "mono"
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)[None]
    for i in range(0, x.shape[1], 1024):
        f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i:i + 1024]), format="flt", layout="mono")
        f.sample_rate = rate
        for p in s.encode(f):
            c.mux(p)
    for p in s.encode(None):
        c.mux(p)
    c.close()
    return buf.getvalue()


def test_audio_whose_sample_rate_changes_partway_is_named_not_mismeasured(tmp_path):
    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.io.video_io import probe

    joined = tmp_path / "joined.aac"
    joined.write_bytes(_adts(44100, 1.0) + _adts(22050, 1.0))
    for read in (probe, read_audio):  # before: 1.58 s (the 22050 Hz second counted as 44100 Hz samples)
        with pytest.raises(EchoMimicError, match=r"joined.aac: the audio changes from 44100 Hz mono to 22050 Hz mono after "
                                                 r"1.0\d s.*Re-export it at one rate .*-ar 44100 -ac 1"):
            read(joined)
    one = tmp_path / "one.aac"
    one.write_bytes(_adts(22050, 1.0))
    wav, sr = read_audio(one)
    assert sr == 22050 and probe(one)["audio_seconds"] == pytest.approx(wav.shape[1] / sr)
