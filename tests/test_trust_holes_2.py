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


_LOAD_LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a runaway load fails here, not on the test machine
from echomimic_lib.io.safe_pickle import load_pickle
try:
    load_pickle(sys.argv[1])
    print("LOADED")
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def _load_limited(path) -> str:
    import os
    import subprocess
    import sys

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", _LOAD_LIMITED, str(path)], capture_output=True, text=True, env=env,
                          timeout=300).stdout


def _call(module: str, name: str, *args: bytes) -> bytes:
    """Protocol-2 opcodes: module.name(*args), each arg already pickled."""
    return b"c" + f"{module}\n{name}\n".encode() + b"(" + b"".join(args) + b"tR"


def _int(n: int) -> bytes:
    return b"I" + str(n).encode() + b"\n"


@pytest.mark.parametrize("case", ["set-of-range", "list-of-memo-again-and-again", "bytes-of-a-count", "reconstruct-huge",
                                  "str-of-a-big-list"])
def test_tiny_pickle_cannot_build_gigabytes(case, tmp_path):
    """The allow-list unpickler ran no code, but a few bytes could still build gigabytes: ``set(range(2e9))`` (42 bytes),
    ``list(b)`` on one memoised megabyte ten thousand times, ``bytes(10**10)``, numpy's ``_reconstruct`` of a huge
    shape, ``str`` of a list repeating one big string. A V1 .pkl landmark folder or a released-format pose folder from
    a workflow took the ComfyUI server's memory (here: a 3 GiB limit, so a MemoryError instead)."""
    proto = b"\x80\x02"
    if case == "set-of-range":
        body = _call("builtins", "set", _call("builtins", "range", _int(2 * 10**9)))
    elif case == "list-of-memo-again-and-again":
        big = b"B" + (1 << 20).to_bytes(4, "little") + bytes(1 << 20) + b"q\x01"  # BINBYTES, memo 1
        body = b"]" + big + b"0(" + _call("builtins", "list", b"h\x01") * 10_000 + b"e"
    elif case == "bytes-of-a-count":
        body = _call("builtins", "bytes", _int(10**10))
    elif case == "reconstruct-huge":
        body = _call("numpy.core.multiarray", "_reconstruct", b"cnumpy\nndarray\n", b"(" + _int(10**10) + b"t", b"U\x01b")
    else:
        s = b"X" + (1 << 20).to_bytes(4, "little") + b"a" * (1 << 20) + b"q\x01"
        body = b"]" + s + b"0(" + b"h\x01" * 5000 + b"e" + b"q\x02" + b"0" + _call("builtins", "str", b"h\x02")
    path = tmp_path / "0.pkl"
    path.write_bytes(proto + body + b".")
    assert path.stat().st_size < 2 << 20
    out = _load_limited(path)
    assert out.startswith("UnsafeFileError") and str(path) in out and "refused" in out, out


def test_allow_list_unpickler_still_reads_real_data_pickles(tmp_path):
    import collections
    import pickle

    from echomimic_lib.io.safe_pickle import load_pickle

    data = {"bodies": {"candidate": np.random.rand(18, 2), "subset": np.arange(18.0)[None]}, "hands": np.zeros((2, 21, 2)),
            "faces": np.ones((1, 68, 2), np.float32), "names": ["a", "b"], "set": {1, 2}, "frozen": frozenset({3}),
            "ordered": collections.OrderedDict(a=1), "raw": bytearray(b"xy"), "blob": b"\x00\x01", "n": np.float64(2.5),
            "i": np.int64(3), "flag": np.bool_(True), "obj": np.array([{"k": np.eye(3)}], dtype=object)}
    for protocol in (3, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        back = load_pickle(path)
        assert back.keys() == data.keys()
        assert np.array_equal(back["bodies"]["candidate"], data["bodies"]["candidate"]) and back["faces"].dtype == np.float32
        assert back["set"] == {1, 2} and back["frozen"] == frozenset({3}) and back["ordered"] == data["ordered"]
        assert back["raw"] == bytearray(b"xy") and back["blob"] == b"\x00\x01" and back["n"] == 2.5 and back["flag"]
        assert np.array_equal(back["obj"][0]["k"], np.eye(3))
    (tmp_path / "p2.pkl").write_bytes(pickle.dumps({"lmks": np.random.rand(478, 3), "b": b"\x00" * 9}, protocol=2))
    assert load_pickle(tmp_path / "p2.pkl")["lmks"].shape == (478, 3)


def _laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\npreset: v1_stage1\n"


def test_training_config_billion_laughs_is_refused_before_it_is_spelled_out(tmp_path):
    """``load_config`` copies the YAML through json.dumps, which spells every alias out: nine levels (443 bytes) took
    over 3 GiB and 90 s before a MemoryError; seven levels (here, 4.8 million values) still went through whole."""
    from trainer.config import ConfigError
    from trainer.config_file import load_config

    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs(7))
    assert path.stat().st_size < 500
    with pytest.raises(ConfigError, match=r"laughs.yaml: its YAML aliases .* expand to more than 1000000 values"):
        load_config(path)


def test_training_config_with_small_aliases_still_loads(tmp_path):
    from trainer.config_checks import read_yaml_mapping

    path = tmp_path / "ok.yaml"
    path.write_text("base: &base {lr: 1.0e-5, steps: 10}\nphases:\n  - {name: a, <<: *base}\n  - {name: b, <<: *base}\n")
    assert read_yaml_mapping(path)["phases"][1] == {"name": "b", "lr": 1e-5, "steps": 10}


def test_training_config_of_gigabytes_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from trainer import config_checks
    from trainer.config import ConfigError

    path = tmp_path / "huge.yaml"
    path.write_text("# a comment\n" * 200)
    monkeypatch.setattr(config_checks, "MAX_CONFIG_BYTES", 1024)
    monkeypatch.setattr(type(path), "read_bytes", lambda self: pytest.fail("read whole"))
    with pytest.raises(ConfigError, match=r"huge.yaml: 2400 bytes is not a training config"):
        config_checks.read_yaml_mapping(path)


def test_latent_cache_never_removes_through_a_linked_cache_folder(tmp_path, monkeypatch):
    """A prepared dataset (shared, downloaded) whose clip's ``latents`` is a link to a folder of the user's: the clean-up
    of stale caches removed the folders there named like another cache of this resolution, or ending in .partial."""
    import os
    import time
    from types import SimpleNamespace

    import torch

    from trainer.data import latent_cache
    from trainer.data.store import ClipEntry

    mine = tmp_path / "my_work"
    for name in ("64x64-renders", "draft.partial"):
        (mine / name).mkdir(parents=True)
        (mine / name / "keep.txt").write_text("mine")
    old = time.time() - 10 * 3600
    os.utime(mine / "draft.partial", (old, old))
    clip = tmp_path / "ds" / "shard-00000" / "c1"
    clip.mkdir(parents=True)
    (clip / "latents").symlink_to(mine, target_is_directory=True)
    monkeypatch.setattr(latent_cache, "cache_key", lambda *a, **k: "64x64-0123456789abcdef")
    monkeypatch.setattr(latent_cache, "write_clip_cache", lambda *a, **k: None)
    entry = ClipEntry("c1", clip, 0, 4, 25.0, "headshot")
    latent_cache.cache_clips([entry], SimpleNamespace(dtype=torch.float32), tmp_path / "vae", 64, 64)
    assert (mine / "64x64-renders" / "keep.txt").is_file() and (mine / "draft.partial" / "keep.txt").is_file()


def test_released_pose_npy_declaring_more_than_it_holds_is_refused(tmp_path):
    """``load_npy`` (released pose folders, through workflows too) handed numpy an in-memory buffer, for which numpy
    allocates the header's shape before reading: 100 bytes declaring 8 TB raised a bare MemoryError."""
    from echomimic_lib.io.safe_pickle import load_npy

    path = tmp_path / "0.npy"
    path.write_bytes(_npy((10**12,), "<f8", b"\x00" * 16))
    with pytest.raises(EchoMimicError, match=r"0\.npy: its header declares 8000000000000 bytes of float64 .* holds 16"):
        load_npy(path)
    path.write_bytes(_saved(np.arange(6.0).reshape(2, 3)))
    assert np.array_equal(load_npy(path), np.arange(6.0).reshape(2, 3))
