"""Holes a careless or hostile input could hit in the file loaders and the trainer (second round): each test failed
before its fix."""
from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError, UnsafeFileError


def _npy(shape, dtype, data: bytes = b"") -> bytes:
    """A .npy member: a header declaring ``shape`` / ``dtype``, then ``data`` (however short)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def _saved(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _landmark_meta() -> bytes:
    return _saved(np.array(json.dumps({"format": "echomimic-landmarks", "image_size": [512, 512]})))


def _pose_meta() -> bytes:
    meta = {"format": "echomimic-pose-sequence", "version": 1, "fps": 24, "canvas_size": [768, 768]}
    return _saved(np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def _npz(path, members: dict, zeros: dict | None = None):
    """An .npz with ``members`` (name -> bytes) and ``zeros`` (name -> (header, MiB of zeros streamed after it))."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, (header, mib) in (zeros or {}).items():
            with zf.open(name, "w", force_zip64=True) as fh:
                fh.write(header)
                chunk = bytes(1 << 20)
                for _ in range(mib):
                    fh.write(chunk)
    return path


def _loaders():
    from echomimic_lib.landmarks.io import load_sequence
    from echomimic_lib.pose.io import load_pose_npz

    return {"landmarks": (load_sequence, _landmark_meta, "lmks.npy", (478, 2)),
            "pose": (load_pose_npz, _pose_meta, "bodies.npy", (18, 2))}


@pytest.mark.parametrize("kind", ["landmarks", "pose"])
def test_npz_whose_header_declares_a_huge_array_is_refused_before_numpy_allocates_it(kind, tmp_path):
    """A 300-byte .npz declaring a (10**12, ...) float64 array: numpy allocated it (MemoryError, or with overcommit a
    huge mapping) before reading a byte."""
    load, meta, member, row = _loaders()[kind]
    path = _npz(tmp_path / f"{kind}.npz", {"meta.npy": meta(), member: _npy((10**12, *row), "<f8")})
    assert path.stat().st_size < 2000
    with pytest.raises(EchoMimicError) as err:
        load(path)
    msg = str(err.value)
    assert str(path) in msg and re.search(r"unpacks to \d+\.\d [TP]iB", msg) and "zip bomb" in msg
    assert "again with `echomimic" in msg


@pytest.mark.parametrize("kind", ["landmarks", "pose"])
def test_npz_zip_bomb_is_refused_without_unpacking_it(kind, tmp_path, monkeypatch):
    """A member truly unpacking past the cap (the cap lowered so the test stays small): refused from the zip's
    directory, never decompressed (np.load would have unpacked it all)."""
    from echomimic_lib.io import npz_file

    load, meta, member, row = _loaders()[kind]
    n = (48 << 20) // (8 * int(np.prod(row)))
    path = _npz(tmp_path / f"{kind}.npz", {"meta.npy": meta()}, {member: (_npy((n, *row), "<f8"), 48)})
    assert path.stat().st_size < 1 << 20  # about 1000:1
    monkeypatch.setattr(npz_file, "MAX_NPZ_BYTES", 16 << 20)
    read = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: read.append(getattr(name, "filename", name))
                        or real_open(self, name, *a, **k))
    with pytest.raises(EchoMimicError, match=r"unpacks to 48\.\d MiB.*over the 16\.0 MiB.*zip bomb"):
        load(path)
    assert member not in read


def test_npz_with_many_members_is_capped_in_total(tmp_path, monkeypatch):
    from echomimic_lib.io import npz_file

    members = {"meta.npy": _landmark_meta(), **{f"x{i}.npy": _saved(np.zeros(1 << 17)) for i in range(20)}}  # 1 MiB each
    path = _npz(tmp_path / "many.npz", members)
    monkeypatch.setattr(npz_file, "MAX_NPZ_BYTES", 8 << 20)
    with pytest.raises(EchoMimicError, match="so far"):
        npz_file.check_npz(path, "fix")


def test_npz_object_member_is_refused_as_unsafe_up_front(tmp_path):
    from echomimic_lib.landmarks.io import load_sequence

    path = _npz(tmp_path / "obj.npz", {"meta.npy": _landmark_meta(), "lmks.npy": _saved(np.array([{"a": 1}], dtype=object))})
    with pytest.raises(UnsafeFileError, match="lmks.npy holds Python objects"):
        load_sequence(path)


def test_npz_files_this_package_writes_still_load(tmp_path):
    from echomimic_lib.landmarks.io import load_sequence, save_sequence
    from echomimic_lib.landmarks.sequence import LandmarkSequence

    seq = LandmarkSequence(lmks=np.random.rand(5, 478, 3), lmks3d=np.random.rand(5, 468, 3), trans_mat=np.random.rand(5, 4, 4),
                           valid=np.ones(5, bool), fps=25.0)
    back = load_sequence(save_sequence(tmp_path / "ok.npz", seq))
    assert np.array_equal(back.lmks, seq.lmks) and np.array_equal(back.trans_mat, seq.trans_mat) and back.fps == 25.0


def test_gesture_index_bomb_is_rebuilt_not_unpacked(tmp_path, monkeypatch):
    """The gesture library's cached index (beside the user's library, or in the cache folder) goes through the same
    check: a planted bomb is treated as unusable (rebuilt), never decompressed."""
    from echomimic_lib.io import npz_file
    from echomimic_lib.pose.gestures import library

    path = _npz(tmp_path / ".lib.gestures.npz", {"meta.npy": _pose_meta()}, {"bodies.npy": (_npy((1 << 20, 18, 2), "<f8"), 40)})
    monkeypatch.setattr(npz_file, "MAX_NPZ_BYTES", 16 << 20)
    called = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: called.append(a) or real(*a, **k))
    assert library._read_index(path, "fp") is None
    assert not called


@pytest.fixture
def no_models(monkeypatch):
    import trainer.data.prepare as prep

    def no(*a, **k):
        raise AssertionError("models were loaded before the clip ids were checked")
    monkeypatch.setattr(prep, "preflight", no)


@pytest.mark.parametrize("first,second", [("talk.mp4", "talk.mov"), ("a b.mp4", "a_b.mp4"), ("x/y.mp4", "x__y.mp4"),
                                          ("Talk.mp4", "talk.mp4")])
def test_prepare_refuses_two_videos_with_one_clip_id_before_any_model(first, second, tmp_path, no_models, capsys):
    """Two videos mapping to one clip id: the second was skipped as 'done before' (its status file was the first's),
    or with several workers one overwrote the other; nothing said so."""
    from trainer.cli import main

    videos = tmp_path / "videos"
    for name in (first, second):
        (videos / name).parent.mkdir(parents=True, exist_ok=True)
        (videos / name).write_bytes(b"a user's video " + name.encode())
    rc = main(["prepare", str(videos), str(tmp_path / "ds"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert str(videos / first) in err and str(videos / second) in err and "Rename one of them" in err, err
    assert not (tmp_path / "ds").exists()


def test_prepare_clip_ids_that_differ_pass(tmp_path):
    from trainer.data.prepare import check_clip_ids, list_videos

    for name in ("talk.mp4", "talk_2.mov", "x/y.mp4", "x_y.mp4", "a.b.mp4", "a_b.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    check_clip_ids(list_videos(tmp_path), tmp_path)
