"""The JSON headers of the files the project writes (pose and landmark files, the gesture index, a long render's kept
chunks, a prepared training clip): numpy numbers, paths and tuples are written as plain JSON, and a value JSON cannot
hold (NaN, an arbitrary object) is refused with an error naming the file and the field before anything is written.
Before, ``json.dumps`` raised a bare ``TypeError`` ("Object of type int64 is not JSON serializable") from inside the
write, or wrote ``NaN`` into the file."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError


def _pose(n: int = 2, **kw):
    from echomimic_lib.pose.sequence import _SHAPES, ARRAY_FIELDS, PoseSequence

    arrays = {name: np.zeros((n, *_SHAPES[name])) for name in ARRAY_FIELDS}
    arrays["frame_ids"] = np.arange(n)
    arrays["draw_pose_params"] = np.tile([768, 768, 0, 768, 0, 768], (n, 1))  # the whole default canvas
    return PoseSequence(**arrays, **kw)


def _landmarks(**kw):
    from echomimic_lib.landmarks.sequence import LandmarkSequence

    return LandmarkSequence(lmks=np.random.default_rng(0).random((2, 478, 3)), **kw)


def test_plain_meta_converts_numpy_paths_and_tuples_and_names_the_bad_field():
    from echomimic_lib.io.json_meta import MetadataError, meta_json

    text = meta_json({"fps": np.float32(25.0), "size": (np.int64(640), np.int32(480)), "src": Path("a/b.mp4"),
                      "ok": np.bool_(True), "nested": {"x": np.arange(2)}}, "out.npz")
    assert json.loads(text) == {"fps": 25.0, "size": [640, 480], "src": str(Path("a/b.mp4")), "ok": True,
                                "nested": {"x": [0, 1]}}
    for bad, field in (({"fps": float("nan")}, "'fps'"), ({"a": {"b": [1, np.float64("inf")]}}, "'a.b[1]'"),
                       ({"s": object()}, "'s' is a object")):
        with pytest.raises(MetadataError, match=re.escape(f"out.npz: metadata field {field}")) as err:
            meta_json(bad, "out.npz")
        assert isinstance(err.value, EchoMimicError) and "Nothing was written" in str(err.value)


# ------------------------------------------------------------------------------------------------------ pose files
def test_a_pose_file_with_a_path_as_its_source_is_written_and_read_back(tmp_path):
    from echomimic_lib.pose.io import load_pose_npz, save_pose_npz

    out = save_pose_npz(_pose(source=tmp_path / "clip.mp4", fps=np.float32(30)), tmp_path / "p.npz")  # was: TypeError
    back = load_pose_npz(out)
    assert back.source == str(tmp_path / "clip.mp4") and back.fps == 30.0


def test_a_pose_file_with_a_nan_field_is_refused_before_anything_is_written(tmp_path):
    from echomimic_lib.pose.io import save_pose_npz

    seq = _pose()
    seq.fps = float("nan")  # (validate() refuses it on construction; a later change is what the writer must catch)
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(EchoMimicError, match=r"p\.npz: metadata field 'fps' is nan"):  # was: written with "NaN"
        save_pose_npz(seq, folder / "p.npz")
    assert list(folder.iterdir()) == []
    seq.fps, seq.source = 25.0, object()
    with pytest.raises(EchoMimicError, match="metadata field 'source' is a object"):  # was: a bare TypeError
        save_pose_npz(seq, folder / "p.npz")
    assert list(folder.iterdir()) == []


# -------------------------------------------------------------------------------------------------- landmark files
@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_landmarks_with_numpy_sizes_are_written_plain_and_a_nan_fps_is_refused(tmp_path, suffix):
    from echomimic_lib.landmarks.io import load_sequence, save_sequence

    seq = _landmarks(image_size=(np.int64(640), np.int64(480)), fps=np.float32(25.0))  # e.g. from a frame's shape
    back = load_sequence(save_sequence(tmp_path / f"l{suffix}", seq))  # was: "int64 is not JSON serializable"
    assert tuple(back.image_size) == (640, 480) and back.fps == 25.0
    folder = tmp_path / "bad"
    folder.mkdir()
    with pytest.raises(EchoMimicError, match=f"l\\{suffix}: metadata field 'fps' is nan"):
        save_sequence(folder / f"l{suffix}", _landmarks(fps=float("nan")))
    assert list(folder.iterdir()) == []


# ------------------------------------------------------------------------------------------------ the gesture index
def test_a_gesture_index_with_a_bad_field_is_not_cached_and_nothing_is_left(tmp_path, caplog):
    from echomimic_lib.pose.gestures.library import UNIT_FIELDS, _read_index, _write_index

    units = {k: np.zeros(1) for k in UNIT_FIELDS}
    good = tmp_path / "ok" / "index.npz"
    _write_index(good, "fp", _pose(source=Path("lib/a.npz")), units)  # was: TypeError out of the render
    assert _read_index(good, "fp")[0].source == str(Path("lib/a.npz"))
    seq = _pose()
    seq.source = object()
    bad = tmp_path / "bad" / "index.npz"
    bad.parent.mkdir()
    with caplog.at_level(logging.WARNING):
        _write_index(bad, "fp", seq, units)  # a cache: the library is used without it, as for a full disk
    assert "gesture index not cached" in caplog.text and "metadata field 'source'" in caplog.text
    assert list(bad.parent.iterdir()) == []


# ---------------------------------------------------------------------------------------------- prepared clips
def test_a_prepared_clip_with_numpy_meta_is_written_plain_and_a_bad_value_leaves_no_arrays(tmp_path):
    from trainer.data.store import CLIP_META, ClipWriter

    w = ClipWriter(tmp_path / "shard" / "c1")
    w.add_frame(np.zeros((8, 8, 3), np.uint8))
    w.finish({"fps": np.float32(25.0), "source": Path("v.mp4"), "size": (np.int64(8), 8)}, {"audio": np.zeros(3)})
    assert json.loads((tmp_path / "shard" / "c1" / CLIP_META).read_text())["fps"] == 25.0  # was: TypeError
    w = ClipWriter(tmp_path / "shard" / "c2")
    w.add_frame(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(EchoMimicError, match=r"c2.clip\.json: metadata field 'fps' is nan"):
        w.finish({"fps": float("nan")}, {"audio": np.zeros(3)})
    assert not (w.tmp / "audio.npy").exists() and not (tmp_path / "shard" / "c2").exists()  # no array written first
    w.abort()
