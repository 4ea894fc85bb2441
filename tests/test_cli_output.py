"""`echomimic animate --smoke` end to end, the video length rule, `--length` limiting the encoded audio,
and the output file under failure: disk full, Ctrl-C, two writers on one path, a genuine bug."""
import errno
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.cli import main as cli
from echomimic_lib.io.audio_file import read_audio
from echomimic_lib.io.video_io import probe
from echomimic_lib.io.video_writer import Mp4Writer, OutputError
from tests._media import write_wav


@pytest.fixture(scope="module")
def clips(tmp_path_factory, shared_data):
    d = tmp_path_factory.mktemp("clips")
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    return {"speech": shared_data / "audio" / "echomimic_en.wav",
            "half": write_wav(d / "half.wav", wav[0, : sr // 2], sr),  # exactly 0.5 s
            "long": write_wav(d / "long.wav", np.tile(wav[0], 7), sr),  # 36.7 s: two 30-s whisper segments
            "tiny": tmp_path_factory.mktemp("smoke_models") / "tiny"}


@pytest.fixture
def smoke(clips, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ECHOMIMIC_MODELS", str(tmp_path / "no_models"))  # no MediaPipe model anywhere

    def run(*extra, audio="speech", out=None):
        out = out or tmp_path / "smoke.mp4"
        args = ["animate", "--smoke", "--reference", str(shared_data / "images" / "portrait_a.png"), "--audio",
                str(clips[audio]), "-o", str(out), "--models", str(clips["tiny"]), *extra]
        return cli(args), out

    return run


def _leftovers(folder: Path) -> list:
    return [p.name for p in folder.iterdir() if "partial" in p.name or p.name.startswith(".")]


@pytest.mark.slow
def test_smoke_run_streams_frames_and_works_offline_without_mediapipe(smoke, capsys, monkeypatch):
    batches = []
    real_write = Mp4Writer.write

    def write(self, frames):
        batches.append(len(frames))
        return real_write(self, frames)

    monkeypatch.setattr(Mp4Writer, "write", write)
    rc, out = smoke()
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    info = probe(out)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (24, 64, 64, 24)  # the first second, 64 px
    assert abs(info["audio_seconds"] - 1.0) < 0.05
    assert "no MediaPipe face model" in cap.err and "animating the whole image" in cap.err
    assert "2 steps" in cap.err and "smoke run" in cap.err and cap.out.startswith("wrote ")
    # the bar starts with sampling, after the weights were loaded; no C++ log lines
    assert cap.err.index("loading the v1_audio weights") < cap.err.index("sampling")
    assert "W0000" not in cap.err and "TensorFlow Lite" not in cap.err and "Traceback" not in cap.err
    # decoded frames went to the writer batch by batch, never as one video tensor
    assert sum(batches) == 24 and len(batches) >= 3 and max(batches) <= 8
    assert _leftovers(out.parent) == []


def test_video_length_follows_the_audio(clips, shared_data, tmp_path, monkeypatch):
    from echomimic_lib.jobs.animate import AnimateRequest
    from echomimic_lib.jobs.animate_checks import preflight
    from echomimic_lib.audio import audio_frame_count

    monkeypatch.setenv("ECHOMIMIC_MODELS", str(tmp_path))
    wav, sr = read_audio(clips["half"])
    assert audio_frame_count(wav, 24, sample_rate=sr) == 14  # the reference's chunk count: 2 frames past the sound
    req = AnimateRequest(reference=str(shared_data / "images" / "portrait_a.png"), audio=str(clips["half"]),
                         output=str(tmp_path / "o.mp4"), face_crop=False, download=False)
    assert preflight(req).settings.num_frames == 12  # floor(0.5 s x 24 fps)
    assert preflight(AnimateRequest(**{**req.__dict__, "fps": 25.0})).settings.num_frames == 12  # 12.5 -> 12
    assert preflight(AnimateRequest(**{**req.__dict__, "length": 5})).settings.num_frames == 5
    assert preflight(AnimateRequest(**{**req.__dict__, "length": 500})).settings.num_frames == 12  # never past the audio
    assert preflight(AnimateRequest(**{**req.__dict__, "smoke": True})).settings.num_frames == 12  # the 1 s cap is longer


@pytest.mark.slow
def test_length_limits_the_encoded_audio(smoke, monkeypatch):
    import echomimic_lib.audio as audio

    seen = []
    real = audio.encode_audio

    def recording(*args, **kwargs):
        feats = real(*args, **kwargs)
        seen.append((kwargs.get("frames"), feats.encoded_rows, feats.num_rows))
        return feats

    monkeypatch.setattr(audio, "encode_audio", recording)
    rc, out = smoke("--length", "4", audio="long")
    assert rc == 0 and probe(out)["frames"] == 4
    frames, encoded, total = seen[0]
    assert frames == 4 and encoded == 1500 and total > 1800  # one 30-s segment of two went through whisper


@pytest.mark.slow
def test_disk_full_leaves_nothing_and_says_so(smoke, capsys, monkeypatch):
    import av

    real_open = av.open

    class FullDisk:  # the real container, whose writes fail once the first packets are on disk
        def __init__(self, container):
            self._c, self.packets = container, 0

        def __getattr__(self, name):
            return getattr(self._c, name)

        def mux(self, packet):
            self.packets += 1
            if self.packets > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self._c.mux(packet)

    def full_open(path, *args, **kwargs):
        if kwargs.get("mode") != "w":  # reading the inputs works
            return real_open(path, *args, **kwargs)
        assert Path(path).name.endswith(".partial.mp4") and Path(path).exists()
        return FullDisk(real_open(path, *args, **kwargs))

    monkeypatch.setattr(av, "open", full_open)
    rc, out = smoke()
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert f"cannot write {out}: no space left on the disk; free some space" in err and "Nothing partial was kept" in err
    assert not out.exists() and _leftovers(out.parent) == []


def test_interrupt_exits_130(smoke, capsys, monkeypatch):
    import echomimic_lib.jobs.animate as animate

    def interrupted(plan):
        raise KeyboardInterrupt

    monkeypatch.setattr(animate, "describe", interrupted)
    rc, out = smoke()
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted" in err and "Traceback" not in err and not out.exists()


def test_interrupt_while_writing_removes_the_temporary_file(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt):
        with Mp4Writer(target, 24) as w:
            w.sink(0, np.zeros((4, 16, 16, 3), np.float32))
            assert _leftovers(tmp_path)  # the temporary file is being written
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_genuine_bug_shows_the_traceback_and_asks_for_a_report(smoke, capsys, monkeypatch):
    import echomimic_lib.jobs.animate as animate

    def broken(plan):
        raise RuntimeError("boom")

    monkeypatch.setattr(animate, "describe", broken)
    rc, out = smoke()
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err and "RuntimeError: boom" in err and "Please report it" in err
    assert not out.exists()


def test_two_writers_on_one_path_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "same.mp4"
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    a, b = Mp4Writer(target, 24), Mp4Writer(target, 24)
    a.write(frames)
    b.write(frames + 200)
    assert a._tmp != b._tmp and a._tmp.parent == b._tmp.parent == tmp_path
    b.write(frames + 200)
    assert a.commit() == target and probe(target)["frames"] == 3
    b.commit()
    assert probe(target)["frames"] == 6 and sorted(p.name for p in tmp_path.iterdir()) == ["same.mp4"]


def test_the_target_turning_into_a_folder_is_never_replaced(tmp_path):
    target = tmp_path / "out.mp4"
    w = Mp4Writer(target, 24)
    w.write(np.zeros((2, 16, 16, 3), np.uint8))
    target.mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        w.commit()
    assert target.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
