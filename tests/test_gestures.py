"""Gestures from speech: the library (units, cache, bad folders) and motion-matching synthesis on synthetic audio
(an onset train, silence, a loudness ramp) with the released pose folders 01 and fight as the library."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.pose import load_pose
from echomimic_lib.pose.gestures import library as L
from echomimic_lib.pose.gestures import metrics as M
from echomimic_lib.pose.gestures import load_library, synthesize
from echomimic_lib.pose.gestures.speech import analyze_waveform
from echomimic_lib.pose.gestures.blend import _quintic, inertialize
from echomimic_lib.pose.gestures.synth import aligned_sources
from tests.test_gestures_speech import SR, onset_train, voiced

FPS = 25.0


@pytest.fixture(scope="module")
def lib(shared_data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("gesture_cache")
    return load_library([shared_data / "pose" / "01", shared_data / "pose" / "fight"], cache_dir=cache)


@pytest.fixture(scope="module")
def train():
    wave, times = onset_train(12.0, period=0.8, burst=0.3)
    return analyze_waveform(wave, FPS), times


# ------------------------------------------------------------------------------------------ library
def test_units_are_cut_at_speed_minima_with_their_features(lib):
    u = lib.units
    assert len(lib) > 30 and set(u["source"]) == {0, 1}
    for k in range(len(lib)):
        s, a, b = u["source"][k], u["start"][k], u["end"][k]
        m = lib.motions[s]
        assert 0 <= a < b <= len(lib.sources[s]) and 0 <= u["stroke"][k] < b - a
        assert m.speed[a + u["stroke"][k]] == pytest.approx(u["amplitude"][k])  # the stroke is the unit's speed peak
        assert (b - a) / lib.sources[s].fps <= L.MAX_UNIT_S + 1e-9
        inner = a not in (0,) and a != len(lib.sources[s])
        if inner and m.valid[a - 1]:  # a cut between two units lies at a local minimum of the hand speed
            assert m.speed[a] <= m.speed[a - 1] + 1e-12 or m.speed[a] <= m.speed[a + 1] + 1e-12
    assert u["start_posture"].shape == (len(lib), 12) and u["profile"].shape == (len(lib), L.PROFILE_BINS)
    assert u["rest"].any() and (~u["rest"]).any() and u["moving"].shape == (len(lib), 2)
    assert u["amplitude"][u["rest"]].max() < u["amplitude"][~u["rest"]].max()


def test_one_folder_library_and_its_cache_follow_the_folder(shared_data, tmp_path):
    folder = tmp_path / "poses" / "mine"
    folder.mkdir(parents=True)
    for i in range(60):
        shutil.copy(shared_data / "pose" / "01" / f"{i}.npy", folder)
    first = load_library(folder)  # writable parent: the index lies beside the folder, hidden
    cache = tmp_path / "poses" / ".mine.gestures.npz"
    assert cache.is_file() and len(first.sources) == 1 and len(first.sources[0]) == 60
    seq, units, cached = L.index_path(folder.resolve())
    assert cached and seq.identical(first.sources[0]) and all(np.array_equal(units[k], first.units[k]) for k in L.UNIT_FIELDS)
    # the folder changes (a frame removed): the index is rebuilt
    os.remove(folder / "59.npy")
    seq2, _, cached2 = L.index_path(folder.resolve())
    assert not cached2 and len(seq2) == 59
    # a folder of pose folders is a library too
    both = load_library(tmp_path / "poses")
    assert both.names == ["mine"] and len(both.sources[0]) == 59


def test_read_only_library_indexes_into_the_cache_dir(shared_data, tmp_path):
    lib = load_library(shared_data / "pose" / "fight", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("fight-*.gestures.npz"))) == 1 and len(lib.sources[0]) == 132


def test_a_folder_that_is_not_a_pose_sequence_is_refused(tmp_path, shared_data):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("hello")
    with pytest.raises(EchoMimicError, match=r"notes is not a pose sequence and holds none \(found readme.txt\)"):
        load_library(notes)
    with pytest.raises(EchoMimicError, match="not found"):
        load_library(tmp_path / "missing")
    with pytest.raises(EchoMimicError, match="not a pose sequence"):
        load_library(notes / "readme.txt")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "0.npy").write_bytes(b"not numpy")
    with pytest.raises(EchoMimicError, match="broken is not a usable pose sequence"):
        load_library(broken, cache_dir=tmp_path / "c")
    still = tmp_path / "still"  # a valid sequence of one repeated frame: nothing moves, nothing to gesture with
    still.mkdir()
    for i in range(30):
        shutil.copy(shared_data / "pose" / "01" / "0.npy", still / f"{i}.npy")
    with pytest.raises(EchoMimicError, match="hold no gestures"):
        load_library(still, cache_dir=tmp_path / "c")


# ------------------------------------------------------------------------------------------ synthesis
def test_strokes_land_on_onsets_far_more_than_random_units(lib, train):
    sp, _ = train
    ours, rand = [], []
    for seed in range(8):
        seq = synthesize(lib, sp, seed=seed)
        ours.append(M.synchrony(M.strokes(seq), sp.stresses))
        base = synthesize(lib, sp, seed=seed, random_units=True)
        rand.append(M.synchrony(M.strokes(base), sp.stresses))
        planned = np.array(seq.report.strokes)
        assert M.synchrony(sp.stresses, planned, tol=1) > 0.8  # nearly every stress gets a planned stroke
    assert np.mean(ours) >= 1.5 * np.mean(rand) and np.mean(ours) > 0.45  # (2x on speech: bench/bench_gestures.py)


def test_hand_speed_follows_a_loudness_ramp(lib):
    seconds = 12.0
    wave, _ = onset_train(seconds, period=0.6, burst=0.3)
    ramp = np.logspace(-1.5, 0, len(wave))  # -30 dB .. 0 dB
    sp = analyze_waveform(wave * ramp, FPS)
    corr = [M.energy_correlation(synthesize(lib, sp, seed=s), sp) for s in range(4)]  # 1 s windows, as the bench
    base = [M.energy_correlation(synthesize(lib, sp, seed=s, random_units=True), sp) for s in range(4)]
    assert min(corr) >= 0.5 and np.mean(corr) > np.mean(base) + 0.3  # on every seed, not only on average


def test_hand_speed_follows_loud_and_quiet_phrases(lib):
    gains = np.where((np.arange(20) // 3) % 2 == 0, 1.0, 0.1)  # three syllables at 0 dB, three at -20 dB, ...
    wave, _ = onset_train(12.0, period=0.6, burst=0.3, gains=gains)
    sp = analyze_waveform(wave, FPS)
    assert not sp.pauses  # no pause to rest through: the motion itself has to follow the loudness
    corr = [M.energy_correlation(synthesize(lib, sp, seed=s), sp) for s in range(4)]
    base = [M.energy_correlation(synthesize(lib, sp, seed=s, random_units=True), sp) for s in range(4)]
    assert min(corr) >= 0.5 and max(base) < 0.3
    # the rate and arm-amplitude modulation add to the choice of units (off: the choice alone)
    plain = [M.energy_correlation(synthesize(lib, sp, seed=s, energy_rate=0.0, energy_gain=0.0), sp) for s in range(4)]
    assert np.mean(corr) > np.mean(plain)
    with pytest.raises(EchoMimicError, match="energy_rate and energy_gain"):
        synthesize(lib, sp, energy_gain=1.0)


def test_loudness_modulation_keeps_a_still_pose_still_and_plays_forward(lib):
    from echomimic_lib.pose.gestures.blend import scale_gestures

    pts = np.tile(np.random.default_rng(0).random((1, 128, 2)), (40, 1, 1))
    before = pts.copy()
    scale_gestures(pts, np.zeros((40, 128), bool), np.linspace(0.5, 1.5, 40), FPS)
    assert np.array_equal(pts, before)  # nothing moved: nothing to scale
    wave, _ = onset_train(12.0, period=0.6, burst=0.3)
    sp = analyze_waveform(wave * np.logspace(-1.5, 0, len(wave)), FPS)  # -30 dB .. 0 dB
    seq = synthesize(lib, sp, seed=4, energy_rate=0.9)
    plan, n = seq.report, len(seq)
    steps = {"quiet": [], "loud": []}
    for a, b, kind, _ in plan.segments:  # the loudness-driven rate never plays a unit backwards
        assert (np.diff(plan.position[a:b]) >= 0).all()
        stroke = [t for t in plan.strokes if a <= t < b - 1]  # after its stroke a unit plays at the loudness' rate
        side = "quiet" if b <= n // 3 else "loud" if a >= 2 * n // 3 else None
        if kind == "unit" and stroke and side:
            steps[side].append(np.diff(plan.position[stroke[0] : b]).mean())
    assert steps["quiet"] and steps["loud"] and np.mean(steps["quiet"]) < 0.7 * np.mean(steps["loud"])


def test_silence_is_all_rest_and_pauses_rest(lib):
    silent = synthesize(lib, analyze_waveform(np.zeros(SR * 2), FPS), seed=3)
    assert [s[2] for s in silent.report.segments] == ["rest"] and np.ptp(silent.body, axis=0).max() == 0
    speech, _ = onset_train(3.0, period=0.6, burst=0.3)
    wave = np.concatenate([speech, np.zeros(int(1.5 * SR)), speech])
    sp = analyze_waveform(wave, FPS)
    assert len(sp.pauses) == 1
    for seed in range(3):
        seq = synthesize(lib, sp, seed=seed)
        assert M.rest_ratio(seq, sp) <= 0.25
        a, b = sp.pauses[0]
        assert any(s[2] == "rest" and s[0] <= a and s[1] == b for s in seq.report.segments)


def test_seams_are_smooth_and_never_backwards(lib, train):
    sp, _ = train
    p99 = lib.acceleration_percentile(99)
    for seed in range(3):
        seq = synthesize(lib, sp, seed=seed)
        plan = seq.report
        assert len(plan.seams) > 10
        at_seams = M.seam_acceleration(seq, plan.seams)
        own = M.own_acceleration(aligned_sources(lib, None), plan, plan.seams)
        assert (at_seams <= np.maximum(p99, 1.1 * own)).all() and (at_seams <= p99).mean() > 0.9
        for a, b, kind, _ in plan.segments:  # source frames only move forward inside a segment
            assert (np.diff(plan.position[a:b]) >= 0).all() and len(set(plan.source[a:b])) == 1
        lo, hi = M.visible_range(lib.sources)  # no keypoint goes where the library's never did (e.g. off the picture)
        out_lo, out_hi = M.visible_range([seq])
        assert (out_lo >= lo - 1e-9).all() and (out_hi <= hi + 1e-9).all()
        # the same frame's body and hands: a wrist of the body skeleton stays at its hand's root
        wrist, root = seq.body[:, 4], seq.hands[:, 1, 0]
        src_gap = max(np.nanpercentile(np.linalg.norm(s.body[:, 4] - s.hands[:, 1, 0], axis=-1), 95) for s in lib.sources)
        assert np.percentile(np.linalg.norm(wrist - root, axis=-1), 95) <= 1.5 * src_gap


def test_inertialization_keeps_position_and_velocity_continuous():
    n, t = 60, 20
    x = np.zeros((n, 1, 2))
    x[:t, 0, 0] = np.arange(t) * 0.01  # moving right
    x[t:, 0, 0] = 0.5  # then a still pose far away
    y = x.copy()
    inertialize(y, [t], np.zeros((n, 1), bool), 0.002, FPS)
    assert y[t, 0, 0] == pytest.approx(y[t - 1, 0, 0] + 0.01)  # carries on where it was heading
    assert (y[t + 1, 0, 0] - y[t, 0, 0]) == pytest.approx(0.01, abs=2e-3)
    acc = np.abs(np.diff(y[:, 0, 0], 2)).max()
    assert acc < 0.05 and y[-1, 0, 0] == pytest.approx(0.5)  # the jump of 0.3 spread out, then exactly the new pose
    off = _quintic(np.array([1.0]), np.array([0.0]), 10.0, 12)
    assert off[0] == 1.0 and abs(off[10]) < 1e-12 and abs(off[11]) < 1e-12


def test_deterministic_for_a_seed_and_varied_across_seeds(lib, train):
    sp, _ = train
    a, b, c = synthesize(lib, sp, seed=7), synthesize(lib, sp, seed=7), synthesize(lib, sp, seed=8)
    assert a.identical(b) and not a.identical(c)


def test_any_length(lib, train):
    sp, _ = train
    for n in (1, 7, sp.num_frames, 3 * sp.num_frames):
        seq = synthesize(lib, sp, n, seed=1)
        assert len(seq) == n and seq.fps == FPS and (seq.frame_ids == np.arange(n)).all()
    long = synthesize(lib, sp, 3 * sp.num_frames, seed=1)
    assert long.report.segments[-1][2] == "rest"  # past the speech: silence, so rest
    with pytest.raises(EchoMimicError, match="at least one frame"):
        synthesize(lib, sp, 0)


def test_units_are_not_reused_within_a_few_seconds(lib, train):
    sp, _ = train
    seq = synthesize(lib, sp, seed=2, variety_s=4.0)
    last = {}
    for a, _, kind, k in seq.report.segments:
        if kind == "unit":
            assert k not in last or a - last[k] > 4.0 * FPS
            last[k] = a


def test_expressiveness_scales_the_motion(lib, train):
    sp, _ = train
    calm = np.mean([M.hand_speed(synthesize(lib, sp, seed=s, expressiveness=0.2)).mean() for s in range(3)])
    lively = np.mean([M.hand_speed(synthesize(lib, sp, seed=s, expressiveness=2.0)).mean() for s in range(3)])
    assert lively > 1.5 * calm
    with pytest.raises(EchoMimicError, match="expressiveness"):
        synthesize(lib, sp, expressiveness=3.0)


def test_aligned_to_the_reference_shoulders(lib, train, shared_data):
    sp, _ = train
    ref = load_pose(shared_data / "pose" / "fight").take([0])
    ref.body = ref.body * 0.8 + 0.1  # a smaller person, elsewhere in the picture
    seq = synthesize(lib, sp, seed=0, reference=ref)
    for k in (1, 2, 5):  # neck and shoulders: the output's median lands on the reference's
        np.testing.assert_allclose(np.median(seq.body[:, k], axis=0), ref.body[0, k], atol=0.03)


def test_voiced_speech_of_another_rate_and_fps(lib):
    sp = analyze_waveform(voiced(3.0) * (np.sin(np.arange(3 * SR) / SR * 2 * np.pi * 2) > 0), 24.0)
    seq = synthesize(lib, sp, seed=0)
    assert len(seq) == 72 and seq.fps == 24.0


def test_continue_plays_the_sequence_once_then_carries_on_forward(shared_data, train, lib):
    from echomimic_lib.pose.gestures.continuation import continue_sequence, covered_frames

    sp, _ = train
    seq = load_pose(shared_data / "pose" / "fight")  # 132 frames at 24 fps: 137 frames at 25 fps, the speech has 300
    n_time = covered_frames(seq, FPS)
    out = continue_sequence(seq, sp.num_frames, FPS, sp, seed=0)
    head = seq.retime(n_time, "ping-pong", out_fps=FPS)
    assert len(out) == sp.num_frames and out[:n_time].identical(head)  # exactly what every policy plays while it lasts
    plan = out.report
    assert plan.segments[0][:3] == (0, n_time, "given") and len(plan.segments) > 3
    for a, b, _, _ in plan.segments:
        assert (np.diff(plan.position[a:b]) >= 0).all()  # never backwards (ping-pong would be)
    speed = M.hand_speed(out)
    assert speed[n_time:].mean() > 0.3 * speed[:n_time].mean()  # it goes on gesturing
    short = continue_sequence(seq, 50, FPS, sp)
    assert short.identical(seq.retime(50, "ping-pong", out_fps=FPS))
    more = continue_sequence(seq, sp.num_frames, FPS, sp, library=lib, seed=0)  # with a library beside it
    assert len(more) == sp.num_frames and more[:n_time].identical(head)
    still = seq.take(np.zeros(40, np.int64))
    with pytest.raises(EchoMimicError, match="no gesture to carry on with"):
        continue_sequence(still, sp.num_frames, FPS, sp)
