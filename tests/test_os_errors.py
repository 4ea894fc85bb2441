"""When the operating system says no (simulated: we run as root, so permission bits do not stop reads): one line naming
the path, what the system said and the fix; no traceback; nothing half-written; a long output name never fails for
its temporary file's even longer one."""
from __future__ import annotations

import builtins
import errno
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError

LONG = "x" * 240  # a name the file system takes (255 bytes at most), whose ".<name>.XXXXXXXX.partial..." it would not


def _deny(monkeypatch, target, err=errno.EACCES, text="Permission denied"):
    """``open(target)`` raises as the system would for a file it exists but will not open."""
    real = builtins.open

    def guarded(path, *a, **k):
        if str(path) == str(target):
            raise OSError(err, text, str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)


# ------------------------------------------------------------------------------------------ reading inputs
def test_a_reference_that_cannot_be_opened_says_permission_denied(shared_data, monkeypatch):
    from echomimic_lib.io.image_file import read_image_file

    ref = shared_data / "images" / "portrait_a.png"
    _deny(monkeypatch, ref)
    with pytest.raises(EchoMimicError) as info:
        read_image_file(ref, "--reference")
    msg = str(info.value)
    assert msg.startswith("--reference: cannot read") and str(ref) in msg and "permission denied" in msg
    assert "not found" not in msg and "\n" not in msg


def test_an_audio_file_that_cannot_be_opened_is_not_called_damaged(shared_data, monkeypatch):
    import av

    from echomimic_lib.io.video_io import read_audio

    wav = shared_data / "audio" / "echomimic_en.wav"
    real = av.open

    def refused(path, *a, **k):
        if str(path) == str(wav):
            raise av.error.PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(av, "open", refused)
    with pytest.raises(EchoMimicError) as info:
        read_audio(wav)
    msg = str(info.value)
    assert f"cannot read {wav}: permission denied" in msg and "damaged" not in msg and "permissions" in msg


def test_too_many_open_files_says_so_and_the_fix(shared_data, monkeypatch):
    import av

    from echomimic_lib.io.video_io import read_audio

    def no_handles(path, *a, **k):
        raise OSError(errno.EMFILE, "Too many open files", str(path))

    monkeypatch.setattr(av, "open", no_handles)
    with pytest.raises(EchoMimicError, match=r"too many open files; raise the limit on open files \(ulimit -n\)"):
        read_audio(shared_data / "audio" / "echomimic_en.wav")


def test_a_damaged_file_is_still_called_damaged(tmp_path):
    from echomimic_lib.io.video_io import read_audio

    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    with pytest.raises(EchoMimicError, match="damaged or not audio/video"):
        read_audio(bad)


# ------------------------------------------------------------------------------------------ the command lines
@pytest.mark.parametrize("err, said, fix", [
    (errno.ENOSPC, "cannot write /o/x.mp4: no space left on the disk", "free some space"),
    (errno.EROFS, "cannot write /o/x.mp4: the file system is read-only", "writable disk"),
    (errno.EACCES, "cannot use /o/x.mp4: permission denied", "check the permissions"),
    (errno.ENAMETOOLONG, "cannot use /o/x.mp4: the file name is too long", "shorter file name"),
    (errno.EMFILE, "cannot use /o/x.mp4: too many open files", "ulimit -n"),
])
def test_the_command_line_says_what_the_system_said_in_one_line(capsys, err, said, fix):
    from echomimic_lib.cli import _run

    def refused(args):
        raise OSError(err, "system text", "/o/x.mp4")

    assert _run(SimpleNamespace(command="evaluate", func=refused)) == 2
    out = capsys.readouterr().err
    assert out.startswith(f"error: {said}; ") and fix in out and out.count("\n") == 1 and "Traceback" not in out


def test_the_trainer_says_what_the_system_said_and_that_nothing_partial_was_kept(capsys):
    from trainer.cli import _os_error

    assert _os_error(OSError(errno.ENOSPC, "No space left on device", "/runs/a/checkpoints/.tmp-step-00000100")) == 2
    out = capsys.readouterr().err
    assert "cannot write /runs/a/checkpoints/.tmp-step-00000100: no space left on the disk" in out
    assert "Nothing partial was kept." in out and out.count("\n") == 1
    assert _os_error(PermissionError(errno.EACCES, "Permission denied", "/runs/a/config.yaml")) == 2
    assert "cannot use /runs/a/config.yaml: permission denied; check the permissions" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ long output names
def test_a_long_video_name_is_written_though_its_temporary_name_would_be_too_long(tmp_path):
    from echomimic_lib.io.video_io import probe
    from echomimic_lib.io.video_writer import Mp4Writer

    out = tmp_path / f"{LONG}.mp4"
    w = Mp4Writer(out, 24)
    w.write(np.zeros((2, 16, 16, 3), np.uint8))
    assert len(w._tmp.name.encode()) < 255 and w._tmp.parent == tmp_path
    assert w.commit() == out and probe(out)["frames"] == 2
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_long_names_of_files_and_folders_get_temporary_names_that_fit(tmp_path):
    from echomimic_lib.io.file_safety import temp_folder_beside, temp_prefix, write_text_atomic

    assert write_text_atomic(tmp_path / f"{LONG}.json", "{}").read_text() == "{}"
    folder = temp_folder_beside(tmp_path / LONG)
    assert folder.is_dir() and len(folder.name.encode()) < 255
    assert temp_prefix("a.b") == ".a.b."  # short names as before
    # two long names that start alike keep different prefixes; a character is never cut in two
    assert temp_prefix(LONG + "1") != temp_prefix(LONG + "2")
    accented = temp_prefix("é" * 200)
    assert accented.encode().decode() == accented and len(accented.encode()) < 120


def test_a_batch_removes_the_leftover_of_a_killed_render_with_a_long_name(tmp_path):
    from echomimic_lib.io.video_writer import Mp4Writer
    from echomimic_lib.jobs.batch.results import remove_partials

    out = tmp_path / f"{LONG}.mp4"
    w = Mp4Writer(out, 24)
    w.write(np.zeros((2, 16, 16, 3), np.uint8))
    w._container.close()  # a render killed here: its temporary file stays
    w._container = None
    other = Mp4Writer(tmp_path / f"{LONG}.b.mp4", 24)  # another row's, whose name starts the same
    other.write(np.zeros((2, 16, 16, 3), np.uint8))
    assert remove_partials(SimpleNamespace(output=out)) == 1
    assert not w._tmp.exists() and other._tmp.exists()
    other.abort()
