"""``--stabilize`` for V2 hand poses (echomimic_lib.pose.stabilize) on the released DWPose demo poses 01 and fight:
steadier, no blinks, close to the detector, fast motion kept, absent hands kept absent; and its wiring into
``animate`` (the drawn condition frames), ``echomimic poses`` and the Hand-Pose Sequence Loader node."""
from __future__ import annotations

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.pose import draw_hands_batch, load_pose
from echomimic_lib.pose.sequence import ARRAY_FIELDS
from echomimic_lib.pose.stabilize import REF_PX, SEEN_SCORE, seen_hand_points, stabilize_poses
from echomimic_lib.temporal.keypoints import shake

LEVELS = ("light", "medium", "strong")


@pytest.fixture(scope="module")
def seqs(shared_data):
    return {name: load_pose(shared_data / "pose" / name) for name in ("01", "fight")}


def _flat(seq):
    return seq.hands.reshape(len(seq), 42, 2), seq.hands_score.reshape(len(seq), 42)


def _still(seq):
    """(F, 42): frames inside a run where both raw wrists move under 2 px (at 768) per frame."""
    pts, _ = _flat(seq)
    slow = (np.linalg.norm(np.diff(pts[:, [0, 21]], axis=0), axis=-1) * REF_PX < 2.0).all(axis=1)
    still = np.zeros((len(seq), 42), dtype=bool)
    still[1:-1] = (slow[1:] & slow[:-1])[:, None]
    return still


def _shake_still(seq, raw):
    pts, sc = _flat(seq)
    return shake(pts * REF_PX, seen_hand_points(pts, sc) & _still(raw))


def _blinks(seq) -> int:
    pts, sc = _flat(seq)
    v = (sc > SEEN_SCORE) & (np.floor(pts * 800) >= 1).all(axis=-1)  # bright and inside, as drawn
    return int((v[1:] != v[:-1]).sum())


def _with_dropouts(seq, seed=0):
    out = seq.copy()
    sc = out.hands_score.reshape(len(seq), 42)
    rng = np.random.default_rng(seed)
    for j in range(42):
        for t in np.flatnonzero(rng.random(len(seq)) < 0.02):
            sc[t : t + int(rng.integers(1, 3)), j] = 0.1  # the detector unsure for 1-2 frames
    return out


# --------------------------------------------------------------------------------------------- the filter
def test_off_is_the_sequence_itself_and_a_bad_level_is_named(seqs):
    seq = seqs["01"]
    assert stabilize_poses(seq, "off") is seq
    with pytest.raises(EchoMimicError, match="'max'.*off, light, medium, strong"):
        stabilize_poses(seq, "max")


def test_fields_shapes_and_metadata_are_kept(seqs):
    seq = seqs["01"]
    out = stabilize_poses(seq, "strong")
    for name in ARRAY_FIELDS:
        assert getattr(out, name).shape == getattr(seq, name).shape and getattr(out, name).dtype == getattr(seq, name).dtype
    for name in ("frame_ids", "draw_pose_params", "body_score", "body_subset", "faces", "faces_score"):
        assert np.array_equal(getattr(out, name), getattr(seq, name)), name
    assert (out.fps, out.canvas_size) == (seq.fps, seq.canvas_size)
    assert out.source == f"{seq.source} [stabilized: strong]"
    assert not np.array_equal(out.hands, seq.hands) and not np.array_equal(out.body, seq.body)
    assert np.array_equal(seqs["01"].hands, load_pose(seq.source).hands)  # the input is not changed in place


@pytest.mark.parametrize("name", ["01", "fight"])
def test_still_hands_shake_less_with_each_level(seqs, name):
    raw = seqs[name]
    shakes = [_shake_still(raw, raw)] + [_shake_still(stabilize_poses(raw, lv), raw) for lv in LEVELS]
    assert shakes == sorted(shakes, reverse=True)  # off > light > medium > strong
    assert shakes[2] < shakes[0] / 2.5 and shakes[3] < shakes[0] / 4  # medium / strong (README: 3x, 5x)


@pytest.mark.parametrize("name", ["01", "fight"])
def test_close_to_the_detector_and_fast_motion_kept(seqs, name):
    raw = seqs[name]
    pts_r, sc_r = _flat(raw)
    seen = seen_hand_points(pts_r, sc_r)
    speed_r = np.linalg.norm(np.diff(pts_r[:, [0, 21]], axis=0), axis=-1)
    fast = speed_r > np.percentile(speed_r, 90)
    for level, p95_px, kept in (("light", 1.0, 0.98), ("medium", 1.5, 0.96), ("strong", 3.0, 0.9)):
        pts, _ = _flat(stabilize_poses(raw, level))
        d = np.linalg.norm(pts - pts_r, axis=-1)[seen] * REF_PX
        assert np.percentile(d, 95) < p95_px and d.max() < 12 * p95_px, level
        speed = np.linalg.norm(np.diff(pts[:, [0, 21]], axis=0), axis=-1)
        assert speed[fast].sum() / speed_r[fast].sum() > kept, level  # the wrist's path on the fast frames
        assert speed.max() / speed_r.max() > kept, level


def test_short_dropouts_are_filled_so_fingers_do_not_blink(seqs):
    raw = _with_dropouts(seqs["01"])
    before = _blinks(raw)
    assert before > 300  # the simulation does drop points
    after = {lv: _blinks(stabilize_poses(raw, lv)) for lv in LEVELS}
    assert after["light"] < before / 2 and after["medium"] < before / 15 and after["strong"] < before / 15
    # what is left: overlapping dropouts longer than max_gap (at the clip's ends too) and points crossing the
    # frame's edge (6 in the clean detection)
    assert after["strong"] <= after["medium"] <= after["light"]
    out = stabilize_poses(raw, "medium")
    pts, sc = _flat(out)
    dropped = (raw.hands_score.reshape(len(raw), 42) < SEEN_SCORE)
    assert (sc[dropped] > SEEN_SCORE).mean() > 0.9  # filled: scores back above the threshold, not dimmed out
    clean, _ = _flat(seqs["01"])
    d = np.linalg.norm(pts - clean, axis=-1)[dropped & (sc > SEEN_SCORE)] * REF_PX  # filled: near where it was
    assert np.median(d) < 3 and np.percentile(d, 95) < 20  # (a moving finger's path over the gap is a straight line)


def test_absent_hands_stay_absent_and_blips_stay_dark(seqs):
    seq = seqs["fight"].copy()
    f = len(seq)
    rng = np.random.default_rng(1)
    seq.hands_score[20:90, 0] = rng.uniform(0.02, 0.25, (70, 21))  # the left hand gone for 70 frames, noisy scores
    seq.hands[20:50, 0] = -1.0  # part of it the "not detected" marker
    seq.hands_score[60, 0] = 0.6  # a one-frame flash of a hand in the middle of the absence
    for level in LEVELS:
        out = stabilize_poses(seq, level)
        assert (out.hands_score[20:90, 0] <= SEEN_SCORE).all(), level  # none lifted above the threshold
        assert (out.hands[20:50, 0] == -1.0).all(), level  # the marker kept: not drawn
        assert np.array_equal(out.hands[61:90, 0], seq.hands[61:90, 0]), level  # unseen points passed through
        assert (out.hands_score[:20, 0] > SEEN_SCORE).all() and (out.hands_score[90:, 0] > SEEN_SCORE).all()
    assert f == len(out)


def test_brightness_of_a_still_hand_flickers_less(seqs):
    raw = seqs["01"]
    still = _still(raw).any(axis=1)
    pairs = still[1:] & still[:-1]
    sc_r = raw.hands_score.reshape(len(raw), 42)
    sc = stabilize_poses(raw, "medium").hands_score.reshape(len(raw), 42)
    assert np.abs(np.diff(sc, axis=0))[pairs].mean() < 0.6 * np.abs(np.diff(sc_r, axis=0))[pairs].mean()


# --------------------------------------------------------------------------------------------- the wiring
def _request(pose, speech, ref, out, level):
    from echomimic_lib.jobs.animate import AnimateRequest

    return AnimateRequest(reference=str(ref), audio=str(speech), output=str(out), mode="v2-halfbody", pose=str(pose),
                          download=False, device="cpu", width=64, height=64, retime="loop", stabilize=level)


def test_animate_draws_the_stabilized_poses_and_off_draws_them_as_before(shared_data, tmp_path):
    from echomimic_lib.jobs.animate import prepare_condition
    from echomimic_lib.jobs.animate_checks import preflight

    pose, ref = shared_data / "pose" / "01", shared_data / "images" / "halfbody_0035.png"
    speech = shared_data / "audio" / "echomimic_zh.wav"
    drawn = {}
    for level in ("off", "strong"):
        plan = preflight(_request(pose, speech, ref, tmp_path / "x.mp4", level))
        n = plan.settings.num_frames
        cond = prepare_condition(plan.mode, plan.request, plan.reference, n, plan.settings).condition
        drawn[level] = cond.render(list(range(n)))
    retimed = load_pose(pose).retime(n, "loop", out_fps=plan.settings.fps)
    assert np.array_equal(drawn["off"], draw_hands_batch(retimed, range(n), (64, 64)))  # as before: parity
    assert not np.array_equal(drawn["strong"], drawn["off"])
    assert np.array_equal(drawn["strong"], draw_hands_batch(stabilize_poses(retimed, "strong"), range(n), (64, 64)))


def test_poses_command_saves_the_stabilized_sequence(shared_data, tmp_path):
    pytest.importorskip("onnxruntime")
    from echomimic_lib.cli import main as cli
    from echomimic_lib.jobs.poses import PosesRequest, check

    speech = shared_data / "audio" / "echomimic_zh.wav"
    lib = shared_data / "pose"
    base = ["poses", "--audio", str(speech), "--gesture-library", str(lib / "01"), "--length", "48", "-q"]
    assert cli(base + ["-o", str(tmp_path / "off.npz")]) == 0
    assert cli(base + ["-o", str(tmp_path / "strong.npz"), "--stabilize", "strong"]) == 0
    off, strong = load_pose(tmp_path / "off.npz"), load_pose(tmp_path / "strong.npz")
    assert not strong.identical(off) and strong.source.endswith("[stabilized: strong]")
    assert strong.identical(stabilize_poses(off, "strong"))
    with pytest.raises(EchoMimicError, match="--stabilize 'max'"):
        check(PosesRequest(output=str(tmp_path / "x.npz"), audio=str(speech), stabilize="max"))


def test_loader_node_has_a_stabilize_input_default_off_applied_to_the_retimed_frames(shared_data, monkeypatch):
    from tests._pack import load_pack, sub

    node = load_pack().NODE_CLASS_MAPPINGS["EchoMimicPoseSequenceLoader"]
    typ, opts = node.INPUT_TYPES()["optional"]["stabilize"]
    assert list(typ) == ["off", "light", "medium", "strong"] and opts["default"] == "off"
    pose_node = sub("nodes.pose")
    monkeypatch.setattr(pose_node.paths, "resolve_pose_folder", lambda name: shared_data / "pose" / name)
    args = dict(pose_folder="01", fps=24.0, retime="loop", align="none", on_missing="interpolate", auto_download=False)
    off, _ = node().execute(**args)
    strong, _ = node().execute(**args, stabilize="strong")
    assert off.stabilize == "off" and strong.stabilize == "strong"
    a, b = off.condition(30, 64, 64, 24.0).render(list(range(30))), strong.condition(30, 64, 64, 24.0).render(list(range(30)))
    retimed = load_pose(shared_data / "pose" / "01").retime(30, "loop", out_fps=24.0)
    assert np.array_equal(a, draw_hands_batch(retimed, range(30), (64, 64)))
    assert np.array_equal(b, draw_hands_batch(stabilize_poses(retimed, "strong"), range(30), (64, 64)))
    with pytest.raises(sub("echomimic_lib.errors").EchoMimicError, match="'max'"):
        node().execute(**args, stabilize="max")
