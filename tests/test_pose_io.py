"""Pose sequences: released-folder loader, our .npz format, safety, bad input, retiming."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError, UnsafeFileError
from echomimic_lib.pose import PoseSequence, load_pose, load_pose_npz, load_released_folder, save_pose_npz, save_released_folder
from echomimic_lib.pose.io import convert_released_folder
from echomimic_lib.retime import POLICIES
from echomimic_lib.io.safe_pickle import load_npy


def _pose_folders(shared_data):
    folders = sorted(p for p in (shared_data / "pose").iterdir() if p.is_dir())
    assert folders, "no pose folders in the shared data"
    return folders


@pytest.fixture(scope="module")
def seq01(shared_data):
    return load_released_folder(shared_data / "pose" / "01")


def _save_obj_npy(path: Path, obj) -> None:
    holder = np.empty((), dtype=object)
    holder[()] = obj
    np.save(path, holder, allow_pickle=True)


def _small_folder(seq, folder: Path, n: int) -> Path:
    return save_released_folder(seq[:n], folder)


# ---------------------------------------------------------------------------------------------- loader
def test_every_released_folder_round_trips(shared_data, tmp_path):
    for folder in _pose_folders(shared_data):
        seq = load_released_folder(folder)
        n_files = len([f for f in folder.iterdir() if f.name.endswith(".npy")])
        assert len(seq) == n_files and seq.report.gaps == []
        # values are exactly those of the files, frame i = file i.npy
        for i in (0, 1, 10, len(seq) - 1):
            raw = load_npy(folder / f"{i}.npy")
            got = seq[i]
            assert seq.frame_ids[i] == i
            np.testing.assert_array_equal(got["hands"], raw["hands"])
            np.testing.assert_array_equal(got["hands_score"], raw["hands_score"])
            np.testing.assert_array_equal(got["bodies"]["candidate"], raw["bodies"]["candidate"])
            np.testing.assert_array_equal(got["bodies"]["subset"], raw["bodies"]["subset"])
            np.testing.assert_array_equal(got["faces"], raw["faces"])
            assert got["draw_pose_params"] == list(raw["draw_pose_params"])
        path = save_pose_npz(seq, tmp_path / f"{folder.name}.npz")
        back = load_pose_npz(path)
        assert back.identical(seq), folder
        assert back.fps == 24.0 and back.canvas_size == (768, 768)
        # and through the released format again
        again = load_released_folder(save_released_folder(seq, tmp_path / f"released_{folder.name}"))
        assert again.identical(seq), folder


def test_convert_and_load_dispatch(shared_data, tmp_path):
    path, report = convert_released_folder(shared_data / "pose" / "fight", tmp_path / "fight")
    assert path.suffix == ".npz" and report.n_frames == len(load_pose(path))
    one = load_pose(shared_data / "pose" / "fight" / "3.npy")
    assert len(one) == 1
    np.testing.assert_array_equal(one.hands[0], load_npy(shared_data / "pose" / "fight" / "3.npy")["hands"])


def test_numeric_order_and_stray_files(seq01, tmp_path):
    folder = _small_folder(seq01, tmp_path / "p", 12)
    (folder / ".DS_Store").write_bytes(b"\x00\x01junk")
    (folder / "notes.txt").write_text("hello")
    (folder / "sub").mkdir()
    seq = load_released_folder(folder)
    assert list(seq.frame_ids) == list(range(12))  # 0, 1, 2, ..., 10, 11 (not 0, 1, 10, 11, 2, ...)
    np.testing.assert_array_equal(seq.hands[10], seq01.hands[10])
    np.testing.assert_array_equal(seq.hands[2], seq01.hands[2])
    assert sorted(seq.report.skipped_files) == [".DS_Store", "notes.txt", "sub"]


def test_gap_in_numbering_is_reported(seq01, tmp_path, caplog):
    folder = _small_folder(seq01, tmp_path / "p", 8)
    (folder / "3.npy").unlink()
    (folder / "4.npy").unlink()
    seq = load_released_folder(folder)
    assert seq.report.gaps == [(3, 4)] and seq.report.missing_count == 2
    assert list(seq.frame_ids) == [0, 1, 2, 5, 6, 7]
    assert any("gaps" in r.message for r in caplog.records)
    with pytest.raises(EchoMimicError, match="gaps"):
        load_released_folder(folder, on_gap="error")
    (folder / "0.npy").unlink()
    assert load_released_folder(folder).report.gaps == [(0, 0), (3, 4)]


def test_duplicate_frame_number(seq01, tmp_path):
    folder = _small_folder(seq01, tmp_path / "p", 3)
    shutil.copy(folder / "1.npy", folder / "01.npy")
    with pytest.raises(EchoMimicError, match="both frame 1"):
        load_released_folder(folder)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_npy_is_refused_and_named(seq01, tmp_path):
    folder = _small_folder(seq01, tmp_path / "p", 3)
    marker = tmp_path / "pwned"
    _save_obj_npy(folder / "1.npy", {"hands": _Evil(marker)})
    assert b"system" in (folder / "1.npy").read_bytes()  # the payload really reduces to os.system
    with pytest.raises(UnsafeFileError) as err:
        load_released_folder(folder)
    assert "1.npy" in str(err.value) and "system" in str(err.value)
    assert not marker.exists()
    # a bare pickle stream disguised as .npy, and our .npz with a pickled member, are refused too
    (folder / "1.npy").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(EchoMimicError, match="1.npy"):
        load_released_folder(folder)
    np.savez(tmp_path / "evil.npz", meta=np.array([_Evil(marker)], dtype=object))
    with pytest.raises(UnsafeFileError, match="evil.npz"):
        load_pose_npz(tmp_path / "evil.npz")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- bad input
def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EchoMimicError, match="no pose frames found"):
        load_released_folder(tmp_path / "empty")
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(EchoMimicError, match=r"\.DS_Store"):
        load_released_folder(tmp_path / "empty")
    with pytest.raises(EchoMimicError, match="not found"):
        load_released_folder(tmp_path / "nope")


def test_missing_keys_named(seq01, tmp_path):
    folder = _small_folder(seq01, tmp_path / "p", 3)
    d = seq01.frame_dict(2)
    del d["hands_score"]
    del d["bodies"]["subset"]
    _save_obj_npy(folder / "2.npy", d)
    with pytest.raises(EchoMimicError) as err:
        load_released_folder(folder)
    msg = str(err.value)
    assert "2.npy" in msg and "hands_score" in msg and "bodies.subset" in msg
    _save_obj_npy(folder / "2.npy", [1, 2, 3])
    with pytest.raises(EchoMimicError, match="expected a dict"):
        load_released_folder(folder)
    d = seq01.frame_dict(2)
    d["hands"] = np.zeros((2, 20, 2))
    _save_obj_npy(folder / "2.npy", d)
    with pytest.raises(EchoMimicError, match=r"'hands' has shape \(2, 20, 2\)"):
        load_released_folder(folder)


def test_nan_coordinates(seq01, tmp_path):
    folder = _small_folder(seq01, tmp_path / "p", 3)
    d = seq01.frame_dict(1)
    d["hands"][0, 5] = np.nan
    d["faces"][0, 3, 1] = np.inf
    _save_obj_npy(folder / "1.npy", d)
    seq = load_released_folder(folder)
    assert seq.report.nan_frames == [1]
    assert np.all(seq.hands[1, 0, 5] == -1) and seq.hands_score[1, 0, 5] == 0
    assert np.all(seq.faces[1, 3] == -1) and seq.faces_score[1, 3] == 0
    np.testing.assert_array_equal(seq.hands[1, 1], seq01.hands[1, 1])  # the rest is untouched
    assert np.isfinite(seq.hands).all()
    with pytest.raises(EchoMimicError, match=r"1\.npy: NaN/Inf values in hands, faces"):
        load_released_folder(folder, on_nan="error")


def test_draw_pose_params_validation(seq01, tmp_path):
    folder = _small_folder(seq01, tmp_path / "p", 2)
    d = seq01.frame_dict(1)
    d["draw_pose_params"] = [768, 512, 0, 768, 128, 640]  # non-square draw area, consistent: accepted
    _save_obj_npy(folder / "1.npy", d)
    seq = load_released_folder(folder)
    assert list(seq.draw_pose_params[1]) == [768, 512, 0, 768, 128, 640]
    d["draw_pose_params"] = [768, 512, 0, 768, 0, 768]  # width 512 vs paste box 768: refused
    _save_obj_npy(folder / "1.npy", d)
    with pytest.raises(EchoMimicError, match=r"1\.npy.*invalid draw_pose_params"):
        load_released_folder(folder)
    d["draw_pose_params"] = [768, 768, 0, 768]
    _save_obj_npy(folder / "1.npy", d)
    with pytest.raises(EchoMimicError, match="6 integers"):
        load_released_folder(folder)


def test_multi_person_frame_keeps_most_confident(seq01, tmp_path):
    folder = _small_folder(seq01, tmp_path / "p", 1)
    a, b = seq01.frame_dict(0), seq01.frame_dict(5)
    b["bodies"]["score"] = b["bodies"]["score"] + 0.5  # person 2 more confident
    d = {
        "bodies": {
            "candidate": np.concatenate([a["bodies"]["candidate"], b["bodies"]["candidate"]]),
            "subset": np.concatenate([a["bodies"]["subset"], np.where(b["bodies"]["subset"] >= 0, b["bodies"]["subset"] + 18, -1)]),
            "score": np.concatenate([a["bodies"]["score"], b["bodies"]["score"]]),
        },
        "hands": np.concatenate([a["hands"][:1], b["hands"][:1], a["hands"][1:], b["hands"][1:]]),
        "hands_score": np.concatenate([a["hands_score"][:1], b["hands_score"][:1], a["hands_score"][1:], b["hands_score"][1:]]),
        "faces": np.concatenate([a["faces"], b["faces"]]),
        "faces_score": np.concatenate([a["faces_score"], b["faces_score"]]),
        "draw_pose_params": a["draw_pose_params"],
    }
    _save_obj_npy(folder / "0.npy", d)
    seq = load_released_folder(folder)
    assert seq.report.multi_person_frames == [0]
    np.testing.assert_array_equal(seq.hands[0], seq01.hands[5])
    np.testing.assert_array_equal(seq.body_subset[0], seq01.body_subset[5])


# ---------------------------------------------------------------------------------------------- retiming
@pytest.mark.parametrize("n_out", [50, 336, 1000])
@pytest.mark.parametrize("policy", POLICIES)
def test_retime(seq01, policy, n_out):
    n = len(seq01)
    assert n == 336
    if policy == "fail" and n_out > n:
        with pytest.raises(EchoMimicError, match="336 frames but 1000"):
            seq01.retime(n_out, policy)
        return
    out = seq01.retime(n_out, policy)
    ids = out.frame_ids
    assert len(out) == n_out and out.hands.shape == (n_out, 2, 21, 2)
    np.testing.assert_array_equal(out.hands, seq01.hands[ids])  # content follows the indices
    i = np.arange(n_out)
    if policy == "loop":
        np.testing.assert_array_equal(ids, i % n)
    elif policy == "ping-pong":
        assert np.all(np.abs(np.diff(ids)) == 1)  # no duplicated frame, no jump at either seam
        assert ids[0] == 0 and (n_out <= n or ids[n - 1] == n - 1 and ids[n] == n - 2)
    elif policy == "hold-last":
        np.testing.assert_array_equal(ids, np.minimum(i, n - 1))
    elif policy == "stretch":
        step = int(np.ceil(n / n_out))  # the whole sequence is spread evenly over the output
        assert ids[0] < step and ids[-1] >= n - step and np.all(np.diff(ids) >= 0) and np.diff(ids).max() <= step
        assert len(np.unique(ids)) == min(n, n_out)
    elif policy == "fail":
        np.testing.assert_array_equal(ids, i)


def test_retime_fps_conversion(seq01):
    out = seq01.retime(90, "ping-pong", out_fps=30)  # 336 frames at 24 fps = 14 s = 420 frames at 30 fps
    assert out.fps == 30 and len(out) == 90
    np.testing.assert_array_equal(out.frame_ids, np.floor(np.arange(90) * 24 / 30 + 1e-9).astype(int))
    slow = seq01.retime(500, "loop", out_fps=12)  # 336 @ 24 -> 168 frames @ 12, then looped
    assert slow.frame_ids[167] == 334 and slow.frame_ids[168] == 0
    with pytest.raises(EchoMimicError, match="unknown retiming policy"):
        seq01.retime(10, "bounce")
    with pytest.raises(EchoMimicError, match="at least one frame"):
        seq01.retime(0)


def test_sequence_validation():
    z = lambda *s: np.zeros(s)  # noqa: E731
    kw = dict(body=z(2, 18, 2), body_score=z(2, 18), body_subset=z(2, 18), hands=z(2, 2, 21, 2), hands_score=z(2, 2, 21),
              faces=z(2, 68, 2), faces_score=z(2, 68), draw_pose_params=np.tile([768, 768, 0, 768, 0, 768], (2, 1)), frame_ids=[0, 1])
    seq = PoseSequence(**kw)
    assert len(seq) == 2 and len(seq[[0, 0, 1]]) == 3
    with pytest.raises(EchoMimicError, match="'hands' has shape"):
        PoseSequence(**{**kw, "hands": z(2, 2, 20, 2)})
    with pytest.raises(EchoMimicError, match="empty"):
        PoseSequence(**{k: (v[:0] if k != "frame_ids" else []) for k, v in kw.items()})
    with pytest.raises(EchoMimicError, match="out of range"):
        seq.frame_dict(5)
