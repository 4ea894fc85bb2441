"""``--stabilize`` at the clip's edges and on files saved already stabilized.

1. A short run without a face / hand at the clip's start or end (a detector warming up) is held at the nearest
   seen value for the filter (``fill_gaps(..., ends=True)``), so the face does not jump and the hand does not pop
   in where it is first seen; a hand seen only for a blip at an end is kept dark; longer absences stay as they were.
2. ``echomimic landmarks --stabilize X`` / ``echomimic poses --stabilize X`` record X in the saved file; animate
   and the Hand-Pose Sequence Loader node then use the points as saved (one warning) instead of smoothing twice.
   Files without the record are smoothed as before.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.landmarks.io import load_driver_sequence, load_sequence, save_sequence
from echomimic_lib.landmarks.sequence import LandmarkSequence
from echomimic_lib.landmarks.stabilize import PRESETS, stabilize_landmarks
from echomimic_lib.pose import draw_hands_batch, load_pose, save_pose_npz, save_released_folder
from echomimic_lib.pose.stabilize import LEVELS, SEEN_SCORE, stabilize_poses
from echomimic_lib.temporal.keypoints import end_runs, fill_gaps
from tests.test_landmark_stabilize import _conditions, short, video  # noqa: F401 (fixtures)
from tests.test_pose_stabilize import _request


# ------------------------------------------------------------------------------------------------ fill_gaps ends
def test_fill_gaps_holds_short_runs_at_the_ends_only_when_asked():
    x = (np.arange(12, dtype=np.float64) * 2.0)[:, None, None].repeat(2, axis=1).repeat(2, axis=2)
    valid = np.ones((12, 2), dtype=bool)
    valid[:2, 0] = valid[-1, 0] = False  # point 0: 2 frames at the start, 1 at the end
    valid[:3, 1] = False  # point 1: 3 frames at the start (longer than max_gap)
    x[~valid] = -1.0
    out, ok = fill_gaps(x, valid, max_gap=2, ends=True)
    assert ok[:, 0].all() and np.allclose(out[:2, 0], 4.0) and np.allclose(out[-1, 0], 20.0)  # held, not extrapolated
    assert not ok[:3, 1].any() and (out[:3, 1] == -1.0).all()  # too long: as it was
    assert np.array_equal(out[valid], x[valid])
    np.testing.assert_array_equal(end_runs(valid, 2), ok & ~valid)
    same, ok0 = fill_gaps(x, valid, max_gap=2)  # default: the ends untouched (as before)
    assert np.array_equal(same, x) and np.array_equal(ok0, valid)
    assert not end_runs(np.zeros(5, dtype=bool), 2).any()  # never seen: nothing to hold


# ------------------------------------------------------------------------------------------------ landmarks
def _face(frames=60, seed=0) -> LandmarkSequence:
    """A still face with detector-like shake (about 1.5 px at 512), mesh and pose included, at 24 fps."""
    rng = np.random.default_rng(seed)
    base = np.concatenate([rng.uniform(0.3, 0.7, (478, 2)), rng.normal(0, 0.02, (478, 1))], axis=1)
    lmks = base + rng.normal(0, 0.003, (frames, 478, 3))
    mesh = base[:468] * 20.0 + rng.normal(0, 0.05, (frames, 468, 3))
    pose = np.tile(np.eye(4), (frames, 1, 1))
    pose[:, :3, 3] = [0.0, 0.0, -40.0] + rng.normal(0, 0.1, (frames, 3))
    return LandmarkSequence(lmks=lmks, lmks3d=mesh, trans_mat=pose, fps=24.0, policy="interpolate")


def _dropped(seq: LandmarkSequence, frames) -> LandmarkSequence:
    """``frames`` without a face, filled as the extractor's policies fill an end: the nearest seen frame held."""
    valid = seq.valid.copy()
    valid[frames] = False
    seen = np.flatnonzero(valid)
    near = [seen[np.argmin(np.abs(seen - i))] for i in range(len(seq))]
    out = {k: getattr(seq, k)[near] for k in ("lmks", "lmks3d", "trans_mat")}
    return replace(seq, valid=valid, face_counts=valid.astype(np.int64), **out)


@pytest.mark.parametrize("level", ["light", "strong"])
def test_a_face_missing_at_the_start_or_end_does_not_jump_where_it_comes_in(level):
    assert PRESETS[level].max_gap == 2
    seq = _dropped(_face(), [0, 1, 58, 59])
    out = stabilize_landmarks(seq, level)
    np.testing.assert_array_equal(out.valid, seq.valid)  # still reported as frames without a face
    for k, pick in (("lmks", lambda a: a * 512), ("lmks3d", lambda a: a), ("trans_mat", lambda a: a[:, :3, 3])):
        o, r = pick(getattr(out, k)), pick(getattr(seq, k))
        for edge, first in (([0, 1], 2), ([58, 59], 57)):
            assert np.abs(r[first] - o[first]).mean() > 0  # before: the ends kept the raw held frame, this far away
            np.testing.assert_array_equal(o[edge], o[[first, first]], err_msg=k)  # now: the steadied one, held


def test_a_longer_run_at_the_start_is_left_as_the_policy_filled_it():
    seq = _dropped(_face(), [0, 1, 2])  # 3 frames: more than max_gap
    out = stabilize_landmarks(seq, "strong")
    for k in ("lmks", "lmks3d", "trans_mat"):
        np.testing.assert_array_equal(getattr(out, k)[:3], getattr(seq, k)[:3], err_msg=k)


# ------------------------------------------------------------------------------------------------ hands
@pytest.fixture(scope="module")
def hands(shared_data):
    return load_pose(shared_data / "pose" / "01")


def test_a_hand_missing_in_the_first_or_last_frames_is_held_not_popped_in(hands):
    seq = hands.copy()
    assert (seq.hands_score[:3, 0] > SEEN_SCORE).all() and (seq.hands_score[-3:, 0] > SEEN_SCORE).all()
    seq.hands_score[:2, 0] = 0.1  # the detector warming up: the left hand unseen for 2 frames
    seq.hands[:2, 0] = -1.0
    seq.hands_score[-2:, 0] = 0.05  # and unsure in the last 2
    for level in LEVELS:  # max_gap 2, 4, 6
        out = stabilize_poses(seq, level)
        assert (out.hands_score[:2, 0] > SEEN_SCORE).all() and (out.hands_score[-2:, 0] > SEEN_SCORE).all(), level
        d = np.abs(out.hands[:2, 0] - out.hands[2, 0]).max() * 768  # near where it is first seen, in px at 768
        assert d < 2.0 and (out.hands[:2, 0] > 0).all(), (level, d)


def test_a_longer_absence_at_the_start_stays_absent_and_an_end_blip_stays_dark(hands):
    seq = hands.copy()
    seq.hands_score[:7, 1] = 0.1  # longer than strong's max_gap (6)
    seq.hands_score[-30:, 0] = 0.1  # the left hand gone at the end...
    seq.hands_score[-1, 0] = 0.8  # ...but for one flash in the very last frame
    seq.hands_score[0, 0] = 0.8
    seq.hands_score[1:30, 0] = 0.1  # and the same at the start: a flash in frame 0, then 29 frames absent
    for level in LEVELS:
        out = stabilize_poses(seq, level)
        assert (out.hands_score[:7, 1] <= SEEN_SCORE).all(), level
        assert (out.hands_score[0, 0] <= SEEN_SCORE).all() and (out.hands_score[-1, 0] <= SEEN_SCORE).all(), level
        assert (out.hands_score[1:30, 0] <= SEEN_SCORE).all() and (out.hands_score[-30:, 0] <= SEEN_SCORE).all()


# ------------------------------------------------------------------------------------------------ saved level
def _meta(path):
    with np.load(path, allow_pickle=False) as z:
        raw = z["meta"]
    return json.loads(str(raw) if raw.dtype.kind == "U" else bytes(raw).decode("utf-8"))


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_landmark_files_record_the_level_and_are_not_smoothed_twice(tmp_path, caplog, suffix):
    raw = _face(40)
    steady = stabilize_landmarks(raw, "medium")
    assert steady.stabilized == "medium" and raw.stabilized == "off"
    path = save_sequence(tmp_path / f"steady{suffix}", steady)
    loaded = load_sequence(path)
    assert loaded.stabilized == "medium"
    with caplog.at_level(logging.WARNING):
        again = stabilize_landmarks(loaded, "strong", name=f"--landmarks {path}")
    assert again is loaded
    np.testing.assert_allclose(again.lmks, steady.lmks)  # the file's points
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "stabilized at 'medium'" in warned[0] and "--stabilize strong" in warned[0]
    assert str(path) in warned[0] and "echomimic landmarks" in warned[0] and "--stabilize LEVEL" in warned[0]
    # a file without the record (unsteadied, or written before it existed) is smoothed as before
    old = load_sequence(save_sequence(tmp_path / f"raw{suffix}", raw))
    assert old.stabilized == "off"
    np.testing.assert_allclose(stabilize_landmarks(old, "strong").lmks, stabilize_landmarks(raw, "strong").lmks)


def test_unsteadied_files_are_written_as_before_and_a_bad_record_is_named(tmp_path, hands):
    path = save_sequence(tmp_path / "raw.npz", _face(5))
    assert set(_meta(path)) == {"format", "version", "image_size", "policy", "fps", "blendshape_names"}
    bad = tmp_path / "bad.json"
    doc = json.loads(save_sequence(tmp_path / "ok.json", _face(5)).read_text())
    bad.write_text(json.dumps(dict(doc, stabilized="max")))
    with pytest.raises(EchoMimicError, match="stabilized at 'max'"):
        load_sequence(bad)
    path = save_pose_npz(hands, tmp_path / "p.npz")
    assert load_pose(path).stabilized == "off" and set(_meta(path)) == {"format", "version", "fps", "canvas_size", "source"}


def test_the_animate_landmark_path_draws_a_steadied_file_as_saved(short, caplog):  # noqa: F811 (fixture)
    from echomimic_lib.cli import main as cli

    path = short["dir"] / "edges_steady.npz"
    assert cli(["landmarks", str(short["video"]), "-o", str(path), "--stabilize", "medium", "--mediapipe-model",
                str(short["mp"]), "--offline", "-q"]) == 0
    assert load_driver_sequence(path).stabilized == "medium"
    as_saved = _conditions(short, path, "off")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = _conditions(short, path, "strong")
    np.testing.assert_array_equal(again, as_saved)  # not smoothed a second time
    warned = [r.getMessage() for r in caplog.records if "already stabilized" in r.getMessage()]
    assert len(warned) == 1 and f"--landmarks {path}" in warned[0] and "'medium'" in warned[0]


@pytest.fixture(scope="module")
def pose_files(hands, tmp_path_factory):
    d = tmp_path_factory.mktemp("poses")
    steady = stabilize_poses(hands, "medium")
    out = {"folder": save_released_folder(steady, d / "steady"), "npz": save_pose_npz(steady, d / "steady.npz"),
           "raw": save_released_folder(hands, d / "raw"), "steady": steady}
    return out


def test_pose_files_record_the_level_and_unsteadied_ones_are_written_as_before(pose_files, hands):
    from echomimic_lib.io.safe_pickle import load_npy

    for key in ("folder", "npz"):
        loaded = load_pose(pose_files[key])
        assert loaded.stabilized == "medium" and loaded.identical(pose_files["steady"]), key
    assert load_npy(pose_files["folder"] / "0.npy")["stabilized"] == "medium"  # through the allow-list unpickler
    raw0 = load_npy(pose_files["raw"] / "0.npy")
    assert "stabilized" not in raw0 and set(raw0) == set(hands.frame_dict(0)) | {"num"}
    assert load_pose(pose_files["raw"]).stabilized == "off"
    assert load_pose(pose_files["folder"]).retime(500, "loop").stabilized == "medium"  # kept through retiming


@pytest.mark.parametrize("key", ["folder", "npz"])
def test_animate_draws_a_steadied_pose_file_as_saved_and_warns(pose_files, shared_data, tmp_path, caplog, key):
    from echomimic_lib.jobs.animate import prepare_condition
    from echomimic_lib.jobs.animate_checks import preflight

    ref, speech = shared_data / "images" / "halfbody_0035.png", shared_data / "audio" / "echomimic_zh.wav"
    drawn, warned = {}, {}
    for source in (key, "raw"):
        plan = preflight(_request(pose_files[source], speech, ref, tmp_path / "x.mp4", "strong"))
        n = plan.settings.num_frames
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            cond = prepare_condition(plan.mode, plan.request, plan.reference, n, plan.settings).condition
        drawn[source] = cond.render(list(range(n)))
        warned[source] = [r.getMessage() for r in caplog.records if "already stabilized" in r.getMessage()]
    assert warned["raw"] == [] and len(warned[key]) == 1
    assert f"--pose {pose_files[key]}" in warned[key][0] and "'medium'" in warned[key][0]
    assert "echomimic poses" in warned[key][0]
    as_saved = load_pose(pose_files[key]).retime(n, "loop", out_fps=plan.settings.fps)
    assert np.array_equal(drawn[key], draw_hands_batch(as_saved, range(n), (64, 64)))  # not smoothed twice
    raw = load_pose(pose_files["raw"]).retime(n, "loop", out_fps=plan.settings.fps)  # an old / unsteadied file
    assert np.array_equal(drawn["raw"], draw_hands_batch(stabilize_poses(raw, "strong"), range(n), (64, 64)))


def test_the_loader_node_uses_a_steadied_folder_as_saved(pose_files, monkeypatch, caplog):
    from tests._pack import load_pack, sub

    node = load_pack().NODE_CLASS_MAPPINGS["EchoMimicPoseSequenceLoader"]
    monkeypatch.setattr(sub("nodes.pose").paths, "resolve_pose_folder", lambda name: pose_files[name])
    args = dict(fps=24.0, retime="loop", align="none", on_missing="interpolate", auto_download=False, stabilize="strong")
    with caplog.at_level(logging.WARNING):
        frames = node().execute(pose_folder="folder", **args)[0].condition(30, 64, 64, 24.0).render(list(range(30)))
    as_saved = load_pose(pose_files["folder"]).retime(30, "loop", out_fps=24.0)
    assert np.array_equal(frames, draw_hands_batch(as_saved, range(30), (64, 64)))
    warned = [r.getMessage() for r in caplog.records if "already stabilized" in r.getMessage()]
    assert len(warned) == 1 and "stabilize strong" in warned[0] and str(pose_files["folder"]) in warned[0]
