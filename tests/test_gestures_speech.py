"""Speech features for gestures (echomimic_lib.pose.gestures.speech) on synthetic audio: onsets where the bursts
start, pauses where it is silent, loudness that follows a ramp, pitch of a voiced tone."""
from __future__ import annotations

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.pose.gestures.speech import analyze_speech, analyze_waveform, relative_loudness

SR = 16000


def voiced(seconds: float, f0: float = 150.0, seed: int = 0) -> np.ndarray:
    """A vowel-like tone: harmonics of f0 falling off, a little noise."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 12))
    return 0.25 * x + 0.01 * np.random.default_rng(seed).standard_normal(len(t))


def onset_train(seconds: float, period: float = 0.75, burst: float = 0.3, start: float = 0.2, gains=None, seed: int = 0):
    """Syllable-like bursts (5 ms attack, exponential decay) every ``period`` s; returns (samples, onset times)."""
    n = int(seconds * SR)
    env = np.zeros(n)
    times = np.arange(start, seconds - burst, period)
    for i, t0 in enumerate(times):
        a, b = int(t0 * SR), int((t0 + burst) * SR)
        k = np.arange(b - a) / SR
        g = 1.0 if gains is None else gains[i]
        env[a:b] = g * np.minimum(k / 0.005, 1.0) * np.exp(-k / (burst / 2.5))
    return voiced(seconds, seed=seed) * env, times


def test_onsets_are_found_where_the_bursts_start():
    wave, times = onset_train(6.0)
    sp = analyze_waveform(wave, 25.0)
    assert sp.num_frames == 150
    want = np.floor(times * 25).astype(int)
    got = sp.onsets
    assert len(got) >= len(want)
    assert all(np.abs(got - w).min() <= 1 for w in want)  # every burst start, within a frame
    # the stresses are the strokes' targets: at least 0.4 s apart, here every burst
    assert np.all(np.diff(sp.stresses) >= 0.4 * 25)
    assert all(np.abs(sp.stresses - w).min() <= 1 for w in want)


def test_stresses_prefer_the_strong_bursts():
    gains = [1.0 if i % 2 == 0 else 0.25 for i in range(30)]  # -12 dB every other syllable, 0.3 s apart
    wave, times = onset_train(8.0, period=0.3, burst=0.2, gains=gains)
    sp = analyze_waveform(wave, 25.0)
    strong = np.floor(times[::2] * 25).astype(int)
    weak = np.floor(times[1::2] * 25).astype(int)
    near = lambda frames: sum(np.abs(sp.stresses - f).min() <= 1 for f in frames)  # noqa: E731
    assert near(strong) >= len(strong) - 1 and near(weak) <= len(weak) // 3


def test_silence_is_one_long_pause_and_no_onsets():
    sp = analyze_waveform(np.zeros(SR * 3), 24.0)
    assert sp.num_frames == 72 and sp.pauses == [(0, 72)] and sp.pause.all()
    assert len(sp.onsets) == 0 and len(sp.stresses) == 0 and not sp.active.any()


def test_pauses_are_the_silences_of_at_least_min_pause():
    speech, _ = onset_train(1.75, period=0.45, burst=0.3, start=0.05)  # ends 50 ms after its last burst
    gap_short, gap_long = np.zeros(int(0.2 * SR)), np.zeros(int(1.2 * SR))
    wave = np.concatenate([speech, gap_long, speech, gap_short, speech])
    sp = analyze_waveform(wave, 25.0, min_pause=0.5)
    long_start = 1.75 * 25
    assert any(a <= long_start + 3 and b >= long_start + 1.2 * 25 for a, b in sp.pauses)  # the 1.2 s gap
    short_start = (1.75 + 1.2 + 1.75) * 25
    assert not any(a <= short_start + 5 < b for a, b in sp.pauses)  # the 0.3 s gap is not a pause
    assert sp.pause.sum() == sum(b - a for a, b in sp.pauses)


def test_loudness_follows_a_ramp():
    seconds = 8.0
    wave = voiced(seconds) * np.logspace(-2, 0, int(seconds * SR))  # -40 dB .. 0 dB
    sp = analyze_waveform(wave, 25.0)
    third = sp.num_frames // 3
    assert np.corrcoef(np.arange(sp.num_frames), sp.loudness)[0, 1] > 0.95
    assert sp.loudness[:third].mean() < sp.loudness[third : 2 * third].mean() < sp.loudness[2 * third :].mean()
    assert sp.loudness.min() >= 0 and sp.loudness.max() <= 1


def test_relative_loudness_is_the_clip_s_own_louder_and_calmer_phrases():
    steady, _ = onset_train(12.0, period=0.6, burst=0.3)
    sp = analyze_waveform(steady, 25.0)
    e = relative_loudness(sp)[25:-25]  # (the clip's edges fade in and out)
    assert np.ptp(e) < 0.1  # one level all through: no contrast made up from the syllable rhythm
    loud_quiet = []
    for quiet in (0.1, 0.3):  # phrases of three syllables at 0 dB and at -20 / -10 dB
        gains = np.where((np.arange(20) // 3) % 2 == 0, 1.0, quiet)
        wave, times = onset_train(12.0, period=0.6, burst=0.3, gains=gains)
        sp = analyze_waveform(wave, 25.0)
        e = relative_loudness(sp)
        at = (times * 25).astype(int)[1:-1] + 3
        loud, calm = e[at[gains[1:-1] == 1.0]], e[at[gains[1:-1] < 1.0]]
        assert loud.min() > calm.max() + 0.15
        loud_quiet.append((loud.mean(), calm.mean()))
    assert loud_quiet[1][0] > 0.7  # a clip whose quieter phrases are only 10 dB down still spans the range
    silent = analyze_waveform(np.zeros(SR), 25.0)
    assert (relative_loudness(silent) == 0).all()


def test_pitch_of_a_voiced_tone_and_its_movement():
    flat = analyze_waveform(voiced(2.0, f0=150.0), 25.0)
    assert np.nanmedian(flat.pitch) == pytest.approx(150.0, rel=0.05)
    t = np.arange(2 * SR) / SR
    glide = 0.25 * np.sin(2 * np.pi * np.cumsum(120 + 80 * np.sin(2 * np.pi * 1.5 * t)) / SR)  # 40..200 Hz swings
    moving = analyze_waveform(glide + 0.1 * np.sin(4 * np.pi * np.cumsum(120 + 80 * np.sin(2 * np.pi * 1.5 * t)) / SR), 25.0)
    assert np.nanmean(moving.pitch_motion) > 3 * np.nanmean(flat.pitch_motion) + 0.1


def test_any_input_form_and_frame_count(tmp_path):
    from tests._media import write_wav

    wave, _ = onset_train(2.0)
    path = write_wav(tmp_path / "s.wav", wave)
    a = analyze_speech(path, fps=24)
    b = analyze_speech({"waveform": __import__("torch").from_numpy(wave.astype(np.float32))[None, None], "sample_rate": SR}, fps=24)
    assert a.num_frames == b.num_frames == 48
    np.testing.assert_allclose(a.loudness, b.loudness, atol=0.02)
    with pytest.raises(EchoMimicError, match="fps"):
        analyze_speech(path, fps=0)
    with pytest.raises(EchoMimicError, match="shorter than one video frame"):
        analyze_waveform(np.zeros(100), 25.0)
