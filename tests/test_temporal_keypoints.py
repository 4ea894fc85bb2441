"""The shared keypoint filter: steadier at rest, no lag in motion, unseen samples left alone, short gaps filled."""
import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.temporal.keypoints import OneEuro, _pass, _shape, fill_gaps, one_euro, shake

FPS = 25.0
SETTINGS = OneEuro(min_cutoff=1.0, beta=0.5)


def test_a_still_point_shakes_far_less():
    rng = np.random.default_rng(0)
    x = 0.5 + 0.002 * rng.standard_normal((200, 5, 2))
    out = one_euro(x, FPS, SETTINGS)
    assert out.shape == x.shape
    assert shake(out) < shake(x) / 8
    assert np.abs(out.mean(axis=0) - x.mean(axis=0)).max() < 5e-4  # smoothed around the same place


def test_steady_motion_has_no_lag():
    t = np.arange(120) / FPS
    x = np.stack([0.1 + 0.3 * t, 0.2 - 0.1 * t], axis=1)[:, None, :]  # one point moving at constant speed
    out = one_euro(x, FPS, SETTINGS)
    inner = slice(40, -40)  # both passes have settled on the speed here
    assert np.abs(out[inner] - x[inner]).max() < 1e-5
    # the forward pass alone lags: the two-way average is what removes it
    x3, ok = _shape(x, None)
    assert np.abs(_pass(x3, ok, FPS, SETTINGS)[inner] - x[inner]).max() > 1e-3


def test_a_fast_opening_keeps_its_timing_and_most_of_its_size():
    """A 4 Hz opening and closing (syllable rate) of 0.05 units: the speed term keeps it, with no delay."""
    t = np.arange(250) / FPS
    x = (0.05 * np.sin(2 * np.pi * 4.0 * t))[:, None]
    out = one_euro(x, FPS, OneEuro(min_cutoff=1.0, beta=20.0, d_cutoff=4.0))
    weak = one_euro(x, FPS, OneEuro(min_cutoff=1.0, beta=0.0, d_cutoff=4.0))
    inner = slice(20, -20)
    assert np.ptp(out[inner]) > 0.7 * np.ptp(x[inner])
    assert np.ptp(weak[inner]) < 0.3 * np.ptp(out[inner])  # beta is what keeps the fast motion
    lags = range(-3, 4)
    corr = [np.corrcoef(np.roll(out[inner, 0], k), x[inner, 0])[0, 1] for k in lags]
    assert list(lags)[int(np.argmax(corr))] == 0


def test_unseen_samples_pass_through_and_the_filter_restarts():
    rng = np.random.default_rng(1)
    x = 0.5 + 0.01 * rng.standard_normal((60, 1, 2))
    x[30:] += 0.3  # the point comes back elsewhere after a dropout
    valid = np.ones(60, dtype=bool)
    valid[25:30] = False
    x[25:30] = np.nan
    out = one_euro(x, FPS, SETTINGS, valid=valid)
    assert np.isnan(out[25:30]).all()
    assert np.isfinite(out[valid]).all()
    # no pull from the old place across the gap: right after it the output sits at the new place
    assert abs(out[31, 0, 0] - 0.8) < 0.03
    # a (frames, points) track (scores) keeps its shape
    s = one_euro(rng.random((40, 3)), FPS, SETTINGS)
    assert s.shape == (40, 3)


def test_fill_gaps_interpolates_short_interior_gaps_only():
    x = np.arange(12, dtype=np.float64)[:, None, None].repeat(2, axis=2)
    valid = np.ones((12, 1), dtype=bool)
    valid[[0, 3, 4, 7, 8, 9, 10]] = False
    x[~valid[:, 0]] = -1.0
    out, ok = fill_gaps(x, valid, max_gap=2)
    assert ok[3:5].all() and np.allclose(out[3:5, 0, 0], [3.0, 4.0])  # two frames between 2 and 5: filled
    assert not ok[7:11].any() and (out[7:11] == -1.0).all()  # four frames: too long
    assert not ok[0] and out[0, 0, 0] == -1.0  # the clip's start has no seen frame before it
    same, ok0 = fill_gaps(x, valid, max_gap=0)
    assert np.array_equal(same, x) and np.array_equal(ok0, valid)


@pytest.mark.parametrize("bad", [OneEuro(0.0, 0.1), OneEuro(1.0, -1.0), OneEuro(1.0, 0.1, d_cutoff=float("nan"))])
def test_bad_settings_are_refused(bad):
    with pytest.raises(EchoMimicError, match="One-Euro"):
        one_euro(np.zeros((10, 2, 2)), FPS, bad)


def test_bad_shapes_and_rates_are_refused():
    with pytest.raises(EchoMimicError, match="frame rate"):
        one_euro(np.zeros((10, 2, 2)), 0.0, SETTINGS)
    with pytest.raises(EchoMimicError, match="expected"):
        one_euro(np.zeros((10, 2, 2)), FPS, SETTINGS, valid=np.ones((10, 3), dtype=bool))
    with pytest.raises(EchoMimicError, match="frames, points"):
        one_euro(np.zeros(10), FPS, SETTINGS)
