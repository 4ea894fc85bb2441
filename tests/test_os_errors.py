"""When the operating system says no (simulated: we run as root, so permission bits do not stop reads): one line naming
the path, what the system said and the fix; no traceback; nothing half-written; a long output name never fails for
its temporary file's even longer one."""
from __future__ import annotations

import builtins
import errno
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

    from echomimic_lib.io.audio_file import read_audio

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

    from echomimic_lib.io.audio_file import read_audio

    def no_handles(path, *a, **k):
        raise OSError(errno.EMFILE, "Too many open files", str(path))

    monkeypatch.setattr(av, "open", no_handles)
    with pytest.raises(EchoMimicError, match=r"too many open files; raise the limit on open files \(ulimit -n\)"):
        read_audio(shared_data / "audio" / "echomimic_en.wav")


def test_a_damaged_file_is_still_called_damaged(tmp_path):
    from echomimic_lib.io.audio_file import read_audio

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


# ------------------------------------------------------------------------------------------ weight files
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_weight_file_that_cannot_be_opened_is_not_called_truncated(tmp_path, monkeypatch, suffix):
    import safetensors.torch
    import torch

    from echomimic_lib.errors import WeightsError
    from echomimic_lib.io.weights import read_state_dict, save_state_dict

    path = save_state_dict({"w": torch.ones(2)}, tmp_path / f"m{suffix}")

    def refused(p, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(p))

    monkeypatch.setattr(safetensors.torch, "load_file", refused)
    _deny(monkeypatch, path)
    with pytest.raises(WeightsError) as info:
        read_state_dict(path)
    msg = str(info.value)
    assert msg.startswith(f"cannot read {path}: permission denied;") and "truncated" not in msg and "again" not in msg
    monkeypatch.undo()
    assert torch.equal(read_state_dict(path)["w"], torch.ones(2))


# ------------------------------------------------------------------------------------------ batch results
def test_a_results_line_the_disk_refuses_is_said_once_and_the_next_starts_on_its_own_line(tmp_path, monkeypatch, caplog):
    import logging

    from echomimic_lib.jobs.batch import results as R

    rf = R.ResultsFile(tmp_path)
    rf.append({"name": "a", "status": "ok"})
    full = [True]

    class Torn:  # the disk fills part way through a line, twice
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            if full[0]:
                self.fh.write(bytes(data[:7]))
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    rf._fh = Torn(rf._fh)
    with caplog.at_level(logging.WARNING):
        rf.append({"name": "b", "status": "ok"})  # never raises: the batch goes on
        rf.append({"name": "c", "status": "ok"})
    said = [r.getMessage() for r in caplog.records if "results.jsonl" in r.getMessage()]
    assert len(said) == 1 and "cannot write" in said[0] and "no space left on the disk" in said[0]
    full[0] = False  # space again
    rf.append({"name": "d", "status": "ok"})
    assert sorted(R.read_results(tmp_path)) == ["a", "d"]  # the torn lines skipped, d on a line of its own
    rf._fh = rf._fh.fh
    rf.rewrite([{"name": n, "status": "ok"} for n in "abcd"])  # the end of the batch: the whole file
    assert sorted(R.read_results(tmp_path)) == ["a", "b", "c", "d"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


def test_an_error_in_the_batch_event_handler_is_not_taken_for_a_dead_worker(tmp_path):
    import multiprocessing as mp
    import os

    from echomimic_lib.jobs.batch.workers import LocalPool, _Worker

    ours, theirs = mp.Pipe()
    never_r, never_w = os.pipe()
    proc = SimpleNamespace(sentinel=never_r, is_alive=lambda: True, join=lambda timeout=None: None, kill=lambda: None)
    pool = LocalPool.__new__(LocalPool)
    from echomimic_lib.jobs.batch.crash_rule import CrashRule

    CrashRule.__init__(pool, 1, 3, respawns=0)
    pool.workers, pool.row_timeout = [_Worker(0, "cpu", proc, ours)], None
    pool.workers[0].idle = True
    job = SimpleNamespace(weight_key=("k",), line=2, attempts=0, name="a")
    theirs.send(("done", "a", {"status": "ok"}))

    def on_event(kind, w, j, payload):
        if kind == "done":
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results.jsonl"))

    try:
        with pytest.raises(OSError, match="No space left"):  # was swallowed with the pipe's errors: the batch ended "ok"
            pool.run([job], on_event)
    finally:
        for fd in (never_r, never_w):
            os.close(fd)
        ours.close()
        theirs.close()
