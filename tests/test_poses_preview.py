"""`echomimic poses --preview`: the sequence is moved into place first and the preview after it, and a failure of
either step leaves nothing new (the outputs --force was replacing are put back); `--preview-audio` gives a
`--video` preview its sound track, and its wrong uses are refused before any model loads."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from echomimic_lib.cli import main as cli  # noqa: E402
from echomimic_lib.io.video_io import probe  # noqa: E402
from echomimic_lib.io.video_writer import Mp4Writer, OutputError  # noqa: E402
from echomimic_lib.pose import load_pose  # noqa: E402
from tests.test_poses_cli import FRAMES, driving, library, models, speech  # noqa: F401,E402  (fixtures)


def _gestures(speech, library, out, *extra):
    return ["poses", "--audio", str(speech), "--gesture-library", str(library), "-o", str(out), "-q", *extra]


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def _fail_commit(monkeypatch, seen=None, look=None):
    """The preview's last step fails (a full disk at the very end), after recording ``look()`` (what -o is by then)."""
    def commit(self):
        if seen is not None:
            seen.append(look())
        self.abort()
        raise OutputError("no space left on the device (stand-in)")

    monkeypatch.setattr(Mp4Writer, "commit", commit)


def test_the_sequence_is_in_place_before_the_preview_is(speech, library, tmp_path, monkeypatch):
    out, prev = tmp_path / "g.npz", tmp_path / "g.mp4"
    real, seen = Mp4Writer.commit, []

    def commit(self):
        seen.append(out.exists())
        return real(self)

    monkeypatch.setattr(Mp4Writer, "commit", commit)
    assert cli(_gestures(speech, library, out, "--preview", str(prev), "--width", "64")) == 0
    assert seen == [True] and len(load_pose(out)) == probe(prev)["frames"] == 36
    assert _names(tmp_path) == ["g.mp4", "g.npz"]


@pytest.mark.parametrize("folder", [False, True])
def test_a_failed_sequence_move_leaves_no_preview(speech, library, tmp_path, monkeypatch, capsys, folder):
    import echomimic_lib.jobs.poses as job

    def refuse(*a, **k):
        raise OutputError("the sequence cannot be moved into place (stand-in)")

    if folder:  # the folder is renamed into place by os.rename: fail the first rename of a staged folder
        real = job.os.rename

        def rename(src, dst, *a, **k):
            if ".partial" in str(src):
                refuse()
            return real(src, dst, *a, **k)

        monkeypatch.setattr(job.os, "rename", rename)
    else:
        monkeypatch.setattr(job, "publish", refuse)
    out, prev = tmp_path / ("g" if folder else "g.npz"), tmp_path / "g.mp4"
    assert cli(_gestures(speech, library, out, "--preview", str(prev), "--width", "64")) == 2
    assert "cannot be moved into place" in capsys.readouterr().err
    assert _names(tmp_path) == []  # no preview without its sequence, and no staging left


@pytest.mark.parametrize("folder", [False, True])
def test_a_failed_preview_puts_back_what_force_was_replacing(speech, library, tmp_path, monkeypatch, capsys, folder):
    out, prev = tmp_path / ("old" if folder else "old.npz"), tmp_path / "old.mp4"
    if folder:
        out.mkdir()
        for i in range(3):
            (out / f"{i}.npy").write_bytes(b"old %d" % i)
    else:
        out.write_bytes(b"old sequence")
    prev.write_bytes(b"old preview")
    seen = []
    _fail_commit(monkeypatch, seen, lambda: len(load_pose(out)))
    assert cli(_gestures(speech, library, out, "--preview", str(prev), "--width", "64", "--force")) == 2
    assert "no space left" in capsys.readouterr().err
    assert seen == [36]  # the new sequence was in place when the preview failed: it was taken back
    assert prev.read_bytes() == b"old preview"
    if folder:
        assert _names(out) == ["0.npy", "1.npy", "2.npy"] and (out / "2.npy").read_bytes() == b"old 2"
    else:
        assert out.read_bytes() == b"old sequence"
    assert _names(tmp_path) == sorted([out.name, prev.name])  # nothing hidden left beside them


def test_a_failed_preview_leaves_nothing_new(speech, library, tmp_path, monkeypatch):
    _fail_commit(monkeypatch)
    assert cli(_gestures(speech, library, tmp_path / "g.npz", "--preview", str(tmp_path / "g.mp4"))) == 2
    assert _names(tmp_path) == []


def test_force_with_a_preview_replaces_both_and_leaves_nothing_aside(speech, library, tmp_path):
    out, prev = tmp_path / "p", tmp_path / "p.mp4"
    out.mkdir()
    for i in range(50):
        (out / f"{i}.npy").write_bytes(b"old")
    prev.write_bytes(b"old")
    assert cli(_gestures(speech, library, out, "--preview", str(prev), "--width", "64", "--force")) == 0
    assert len(_names(out)) == 36 and probe(prev)["frames"] == 36
    assert _names(tmp_path) == ["p", "p.mp4"]


# ------------------------------------------------------------------------------------------------ --preview-audio
def test_preview_audio_gives_a_video_preview_its_sound(models, driving, speech, tmp_path, capsys):
    base = ["poses", "--video", str(driving), "--models", str(models), "--offline", "-q", "--width", "64"]
    assert cli(base + ["-o", str(tmp_path / "silent.npz"), "--preview", str(tmp_path / "silent.mp4")]) == 0
    assert cli(base + ["-o", str(tmp_path / "v.npz"), "--preview", str(tmp_path / "v.mp4"), "--preview-audio", str(speech)]) == 0
    assert load_pose(tmp_path / "v.npz").identical(load_pose(tmp_path / "silent.npz"))  # the poses: the video's
    info = probe(tmp_path / "v.mp4")
    assert info["frames"] == FRAMES and info["audio_seconds"] == pytest.approx(FRAMES / 24, abs=0.05)  # cut to the preview
    assert probe(tmp_path / "silent.mp4")["audio_seconds"] is None
    from echomimic_lib.io.video_io import read_video

    a, b = (read_video(tmp_path / n, with_audio=False).frames for n in ("v.mp4", "silent.mp4"))
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 1  # the same drawing, only with sound


def test_preview_audio_refusals_come_before_any_model(models, driving, speech, library, tmp_path, capsys, monkeypatch):
    import echomimic_lib.jobs.poses as job

    def loaded(*a, **k):
        raise AssertionError("a model / the gesture library was loaded before the refusal")

    monkeypatch.setattr(job, "dwpose_detector", loaded)
    monkeypatch.setattr(job, "speech_gestures", loaded)
    w = tmp_path / "work"
    w.mkdir()
    (w / "old.mp4").write_bytes(b"old")
    v = ["poses", "--video", str(driving), "--models", str(models), "--offline", "-o", str(w / "new.npz")]
    cases = [
        (v + ["--audio", str(speech)], "not both", "--preview-audio"),
        (v + ["--preview-audio", str(speech)], "--preview-audio is only the sound of the --preview video", "add --preview"),
        (_gestures(speech, library, w / "new.npz", "--preview", str(w / "p.mp4"), "--preview-audio", str(speech)),
         "--preview-audio is for --video", "drop --preview-audio"),
        (v + ["--preview", str(w / "p.mp4"), "--preview-audio", str(w / "nope.wav")], "--preview-audio", "file not found"),
        (v + ["--preview", str(w / "p.mp4"), "--preview-audio", str(w)], "--preview-audio", "is a folder"),
        (v + ["--preview", str(w / "p.mp4"), "--preview-audio", str(driving)], "--preview-audio", "no audio stream"),
        (v + ["--preview", str(w / "p.mp4"), "--preview-audio", str(w / "old.mp4"), "--force"], "--preview-audio",
         "cannot be opened"),
        # the preview over its own sound track: said before that track is read (cliuser6: the outputs come first)
        (v + ["--preview", str(w / "old.mp4"), "--preview-audio", str(w / "old.mp4"), "--force"],
         "is the same file as --preview-audio"),
    ]
    for args, *words in cases:
        assert cli(args) == 2, args
        err = capsys.readouterr().err
        assert all(word in err for word in words), (args, err)
        assert _names(w) == ["old.mp4"], args
    # a preview that would be written over its own sound track
    sound = w / "sound.mp4"
    from echomimic_lib.io.video_io import write_video
    from echomimic_lib.io.audio_file import read_audio

    wav, sr = read_audio(speech)
    write_video(sound, np.zeros((12, 64, 64, 3), np.uint8), 24.0, wav, sr)
    assert cli(v + ["--preview", str(sound), "--preview-audio", str(sound), "--force"]) == 2
    assert "is the same file as --preview-audio" in capsys.readouterr().err and _names(w) == ["old.mp4", "sound.mp4"]


def test_force_on_a_link_to_a_pose_folder_puts_the_link_aside(speech, library, tmp_path):
    """-o a symlink to a pose folder: the new folder takes the link's place, the folder it pointed to is not touched
    (it used to stop with IsADirectoryError: a link cannot be renamed onto the empty folder put aside for it)."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "0.npy").write_bytes(b"old")
    link = tmp_path / "link"
    link.symlink_to(real)
    assert cli(_gestures(speech, library, link, "--force")) == 0
    assert not link.is_symlink() and len(load_pose(link)) == 36
    assert _names(real) == ["0.npy"] and (real / "0.npy").read_bytes() == b"old"
    assert _names(tmp_path) == ["link", "real"]
