"""OS refusals, round 3: the writers that fill a temporary file with np.save / np.savez (pose and landmark files, the
gesture index, a V3 render's kept chunks, a prepared clip) name the file the user asked for when the system refuses
the write -- ``cannot write PATH: <what the system said>; <fix>.`` -- never the temporary file, which is removed; a
file already there is unchanged. Full disks and read-only folders are simulated (monkeypatch: tests run as root)."""
from __future__ import annotations

import errno
import logging

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError


def _refuse(code=errno.ENOSPC):
    """A stand-in for np.save / np.savez*: starts the file (as a real full disk leaves it), then the system says no."""
    def write(file, *a, **k):
        if hasattr(file, "write"):
            file.write(b"half")
            name = getattr(file, "name", None)
        else:
            with open(file, "wb") as fh:
                fh.write(b"half")
            name = str(file)
        raise OSError(code, errno.errorcode[code], name)
    return write


def _said_of(msg: str, path, said="no space left on the disk; free some space") -> None:
    assert msg.startswith(f"cannot write {path}: {said}"), msg
    assert ".partial" not in msg and "\n" not in msg, msg


def _others(folder, keep) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ------------------------------------------------------------------------------------------ the helper
def test_writing_staged_says_an_inner_refusal_again_of_the_destination(tmp_path):
    from echomimic_lib.io.os_errors import WriteError, writing

    inner, final = tmp_path / ".out.partial.npz", tmp_path / "out.npz"
    with pytest.raises(WriteError) as info:
        with writing(final, staged=True), writing(inner):
            raise OSError(errno.EROFS, "Read-only file system", str(inner))
    _said_of(str(info.value), final, "the file system is read-only; choose a folder on a writable disk")
    assert info.value.path == final and str(info.value).count("Nothing partial was kept") == 1
    with pytest.raises(WriteError, match=rf"^cannot write {inner}: "):  # without staged: the innermost name stays
        with writing(final), writing(inner):
            raise OSError(errno.EROFS, "Read-only file system")


# ------------------------------------------------------------------------------------------ each writer
def _pose_seq(n=4):
    from echomimic_lib.pose import PoseSequence
    from echomimic_lib.pose.sequence import _SHAPES

    arrays = {k: np.zeros((n, *shape), np.int64 if k in ("draw_pose_params", "frame_ids") else np.float32)
              for k, shape in _SHAPES.items()}
    arrays["draw_pose_params"][:] = [768, 768, 0, 768, 0, 768]  # the whole canvas
    return PoseSequence(**arrays)


def test_a_pose_file_on_a_full_disk_is_named_and_the_earlier_one_kept(tmp_path, monkeypatch):
    from echomimic_lib.pose import save_pose_npz

    path = save_pose_npz(_pose_seq(), tmp_path / "walk.npz")
    before = path.read_bytes()
    monkeypatch.setattr(np, "savez_compressed", _refuse())
    with pytest.raises(EchoMimicError) as info:  # was an OSError naming .walk.npz.<random>.partial.npz
        save_pose_npz(_pose_seq(), path)
    _said_of(str(info.value), path)
    assert "Nothing partial was kept" in str(info.value)
    assert path.read_bytes() == before and _others(tmp_path, {path.name}) == []


def test_a_pose_folder_frame_refused_names_the_frame_file(tmp_path, monkeypatch):
    from echomimic_lib.pose import io as pose_io

    monkeypatch.setattr(pose_io, "_write_object_npy", lambda path, holder: _refuse(errno.EACCES)(path))
    with pytest.raises(EchoMimicError) as info:
        pose_io.save_released_folder(_pose_seq(), tmp_path / "walk")
    _said_of(str(info.value), tmp_path / "walk" / "0.npy", "permission denied; check the permissions")
    assert list((tmp_path / "walk").iterdir()) == []


def _landmarks():
    from echomimic_lib.landmarks.sequence import LandmarkSequence

    return LandmarkSequence(lmks=np.zeros((3, 478, 3)), valid=np.ones(3, bool), face_counts=np.ones(3, int), policy="hold")


def test_a_landmark_file_on_a_full_disk_is_named_and_the_earlier_one_kept(tmp_path, monkeypatch):
    from echomimic_lib.landmarks.io import save_sequence

    path = save_sequence(tmp_path / "drive.npz", _landmarks())
    before = path.read_bytes()
    monkeypatch.setattr(np, "savez_compressed", _refuse())
    with pytest.raises(EchoMimicError) as info:
        save_sequence(path, _landmarks())
    _said_of(str(info.value), path)
    assert "Nothing partial was kept" in str(info.value)
    assert path.read_bytes() == before and _others(tmp_path, {path.name}) == []


def test_a_gesture_index_refused_names_the_index_and_the_library_goes_on(tmp_path, monkeypatch, caplog):
    from echomimic_lib.pose.gestures import library

    path = tmp_path / ".fight.gestures.npz"
    path.write_bytes(b"an earlier index")
    monkeypatch.setattr(np, "savez_compressed", _refuse(errno.EROFS))
    with caplog.at_level(logging.WARNING):
        library._write_index(path, "fp", _pose_seq(), {k: np.zeros(4) for k in library.UNIT_FIELDS})
    said = [r.getMessage() for r in caplog.records if "gesture index not cached" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0] == (f"gesture index not cached: cannot write {path}: the file system is read-only; choose a folder "
                       "on a writable disk. The library is used without it."), said[0]
    assert path.read_bytes() == b"an earlier index" and _others(tmp_path, {path.name}) == []


def test_a_kept_v3_chunk_on_a_full_disk_names_the_chunk_file(tmp_path, monkeypatch, caplog):
    from echomimic_lib.pipeline.wan.chunk_state import ChunkCheckpoint, chunk_state_path

    state = chunk_state_path(tmp_path / "v3.mp4")
    ck = ChunkCheckpoint(state, "fp", [4, 4], (8, 8), 1, False)
    ck.save(0, np.zeros((4, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.float32), None)
    kept = {p.name: p.read_bytes() for p in state.iterdir()}
    monkeypatch.setattr(np, "save", _refuse())
    with caplog.at_level(logging.WARNING):  # never fatal: said once, the render goes on
        ck.save(1, np.zeros((4, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.float32), None)
    said = [r.getMessage() for r in caplog.records if "could not keep chunk 2" in r.getMessage()]
    assert len(said) == 1 and f"(cannot write {state / 'chunk_00001.npy'}: no space left on the disk; " in said[0], said
    assert ".partial" not in said[0] and ck.done == 1
    assert {p.name: p.read_bytes() for p in state.iterdir()} == kept  # the state before: one chunk, still valid


def _clip_writer(final, frames=2):
    from trainer.data.store import ClipWriter

    w = ClipWriter(final)
    for _ in range(frames):
        w.add_frame(np.zeros((16, 16, 3), np.uint8))
    return w


def test_a_prepared_clip_on_a_full_disk_names_the_clip_and_the_earlier_one_kept(tmp_path, monkeypatch):
    from echomimic_lib.io.os_errors import WriteError
    from trainer.data.prepare import _the_clips_fault

    final = tmp_path / "shard-00000" / "c1"
    _clip_writer(final).finish({"id": "c1"}, {"audio16k": np.zeros(4, np.float32)})
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    monkeypatch.setattr(np, "save", _refuse())
    w = _clip_writer(final, 3)
    with pytest.raises(WriteError) as info:  # was an OSError naming c1.partial/frames.idx.npy
        w.finish({"id": "c1"}, {"audio16k": np.zeros(4, np.float32)})
    w.abort()
    _said_of(str(info.value), final)
    assert str(info.value).endswith(" Nothing partial was kept (a clip already there is unchanged).")
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before and _others(final.parent, {"c1"}) == []
    refused = WriteError("cannot write ...", errno.EACCES, final)  # permissions on the dataset: the run's problem
    assert not _the_clips_fault(info.value, tmp_path) and not _the_clips_fault(refused, tmp_path)


# ------------------------------------------------------------------------------------------ the command lines
def test_the_trainer_says_a_refused_clip_write_once(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from trainer import cli

    final = tmp_path / "shard-00000" / "c1"

    def prepare(args):
        w = _clip_writer(final)
        try:
            w.finish({"id": "c1"}, {})
        except BaseException:
            w.abort()
            raise

    monkeypatch.setattr(np, "save", _refuse())
    monkeypatch.setattr(cli, "build_parser", lambda: SimpleNamespace(parse_args=lambda argv: SimpleNamespace(
        func=prepare, command="fit", verbose=False)))
    assert cli._main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {final}: no space left on the disk; free some space"), err
    assert err.count("Nothing partial was kept") == 1 and err.count("\n") == 1 and ".partial" not in err, err
    assert list(final.parent.iterdir()) == []


def test_trainer_os_error_adds_nothing_to_a_write_error(capsys):
    from echomimic_lib.io.os_errors import write_refused
    from trainer.cli import _os_error

    assert _os_error(write_refused(OSError(errno.ENOSPC, "No space left on device"), "/d/c1")) == 2
    err = capsys.readouterr().err
    assert err.count("Nothing partial was kept") == 1 and err.startswith("error: cannot write /d/c1: "), err
    assert _os_error(OSError(errno.ENOSPC, "No space left on device", "/d/x")) == 2  # a bare one: said once too
    assert capsys.readouterr().err.count("Nothing partial was kept") == 1


@pytest.mark.parametrize("name", ["walk.npz", "walk"])
def test_poses_on_a_full_disk_prints_one_line_naming_the_output(tmp_path, monkeypatch, capsys, name):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from echomimic_lib.cli import main as cli
    from echomimic_lib.io.video_io import write_video
    from echomimic_lib.pose import io as pose_io
    from tests.test_pose_dwpose import build_peak_pose, build_red_detector, layout_positions

    models = tmp_path / "models"
    (models / "dwpose").mkdir(parents=True)
    build_red_detector(models / "dwpose" / "yolox_l.onnx")
    build_peak_pose(models / "dwpose" / "dw-ll_ucoco_384.onnx", layout_positions())
    frames = np.zeros((4, 120, 160, 3), np.uint8)
    frames[:, 40:80, 60:100] = (255, 0, 0)
    video = write_video(tmp_path / "drive.mp4", frames, 24.0)
    work = tmp_path / "out"
    work.mkdir()
    out = work / name
    if name.endswith(".npz"):
        out.write_bytes(b"an earlier sequence")
        monkeypatch.setattr(np, "savez_compressed", _refuse())
    else:
        out.mkdir()
        (out / "0.npy").write_bytes(b"an earlier frame")
        monkeypatch.setattr(pose_io, "_write_object_npy", lambda path, holder: _refuse()(path))
    rc = cli(["poses", "--video", str(video), "-o", str(out), "--models", str(models), "--offline", "--force", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: cannot write {out}: no space left on the disk; free some space"), err
    assert "Nothing partial was kept" in err and ".partial" not in err
    assert _others(work, {name}) == []  # no staged file or folder left
    if out.is_dir():
        assert [p.read_bytes() for p in out.iterdir()] == [b"an earlier frame"]
    else:
        assert out.read_bytes() == b"an earlier sequence"
