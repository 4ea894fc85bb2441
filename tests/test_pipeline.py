"""Sampler behaviour beyond the parity fixtures: cfg <= 1 averaging, batched windows and decode,
progress / cancel, dtypes, memory-flat condition rendering, bad input."""
import numpy as np
import pytest
import torch

from echomimic_lib.audio import AudioFeatures
from echomimic_lib.errors import CancelledError, EchoMimicError
from echomimic_lib.model_set import load_models
from echomimic_lib.pipeline import FrameCondition, MaskCondition, Sampler, settings_for
from tests._tiny_shared import tiny_v1_copy

H = W = 64


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tiny_v1_copy(tmp_path_factory, tmp_path_factory.mktemp("tiny") / "v1")


@pytest.fixture(scope="module")
def models(tiny_root):
    return load_models(tiny_root, "v1_audio", "normal", with_audio=False)


@pytest.fixture(scope="module")
def pose_models(tiny_root):
    return load_models(tiny_root, "v1_pose", "normal", with_audio=False)


def _audio(frames: int, fps=24, seed=0) -> AudioFeatures:
    rows = int(np.ceil(frames * 50 / fps))
    g = torch.Generator().manual_seed(seed)
    return AudioFeatures(torch.randn(rows, 5, 384, generator=g), rows * 320)


REF = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
MASK = MaskCondition(np.pad(np.ones((32, 32)), 16))


def _settings(**kw):
    base = dict(width=W, height=H, steps=2, num_frames=16, decode_batch=4)
    base.update(kw)
    return settings_for("v1-audio", "normal", **base)


def test_frame_count_follows_the_audio(models):
    audio = _audio(20)
    s = _settings(num_frames=None, steps=1)
    r = Sampler(models)(REF, audio, MASK, s)
    assert r.num_frames == audio.frame_count(24) and r.frames.shape == (r.num_frames, H, W, 3)
    assert 0.0 <= float(r.frames.min()) and float(r.frames.max()) <= 1.0


REF128 = np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)
MASK128 = MaskCondition(np.pad(np.ones((64, 64)), 32))


def _step0(models, audio, **kw):
    """Guided prediction of the first step at 128 px (at 64 px the tiny nets' deepest GroupNorms see
    1x1 maps and amplify rounding, see the fixture README)."""
    seen = {}
    s = settings_for("v1-audio", "normal", width=128, height=128, steps=1, num_frames=kw.pop("num_frames", 16), **kw)
    r = Sampler(models)(REF128, audio, MASK128, s, trace=lambda k, v: seen.setdefault(k, v), decode=False)
    return seen["step0"][0], r


def test_cfg_one_averages_overlapping_windows(models):
    """The reference sums overlapping windows at cfg <= 1 (a bug); we average, so cfg=1 equals the
    conditional branch of a guided run with cfg -> 1."""
    audio = _audio(16)
    v1, _ = _step0(models, audio, cfg=1.0)
    v2, _ = _step0(models, audio, cfg=1.0 + 1e-6)
    torch.testing.assert_close(v1, v2, atol=1e-3, rtol=0)
    assert v1.abs().mean() > 0.05


def test_several_windows_per_call_give_the_same_prediction(models):
    audio = _audio(30)
    va, a = _step0(models, audio, num_frames=30, windows_per_batch=1)
    vb, b = _step0(models, audio, num_frames=30, windows_per_batch=3)
    assert (a.unet_calls, b.unet_calls) == (4, 2)
    torch.testing.assert_close(va, vb, atol=1e-3, rtol=0)


def test_batched_decode_equals_per_frame_decode(models):
    lat = torch.randn(1, 4, 5, H // 8, W // 8)
    s = Sampler(models)
    torch.testing.assert_close(s.decode(lat, batch=1), s.decode(lat, batch=5), atol=1e-5, rtol=0)


def test_progress_counts_step_windows_and_cancel_stops(models):
    calls = []
    s = _settings(num_frames=30, steps=2)
    Sampler(models)(REF, _audio(30), MASK, s, progress=lambda d, t: calls.append((d, t)), decode=False)
    windows = 4  # 30 frames, context 12, overlap 3 -> starts 0, 9, 18, 27
    assert calls[-1] == (2 * windows, 2 * windows) and len(calls) == 2 * windows

    def cancel(done, total):
        if done == 3:
            raise CancelledError("user cancelled")

    with pytest.raises(CancelledError):
        Sampler(models)(REF, _audio(30), MASK, s, progress=cancel)
    r = Sampler(models)(REF, _audio(30), MASK, s, decode=False)  # the next run works
    assert r.num_frames == 30


def test_condition_frames_are_rendered_per_window(pose_models):
    """Memory stays flat: the condition encoder never sees more than one window of frames."""
    asked = []

    def render(idx):
        asked.append(len(idx))
        return np.zeros((len(idx), H, W, 3), np.uint8)

    s = settings_for("v1-audio+landmarks", "normal", width=W, height=H, steps=1, num_frames=40)
    Sampler(pose_models)(REF, _audio(40), FrameCondition(40, render), s, decode=False)
    assert asked and max(asked) <= s.context_frames


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs(tiny_root, dtype):
    m = load_models(tiny_root, "v1_audio", "acc", dtype=dtype, with_audio=False)
    r = Sampler(m)(REF, _audio(12), MASK, settings_for("v1-audio", "acc", width=W, height=H, steps=2, num_frames=12))
    assert r.frames.dtype == torch.float32 and torch.isfinite(r.frames).all()


def test_bad_input_messages(models, pose_models):
    with pytest.raises(EchoMimicError, match="multiples of 8"):
        Sampler(models)(REF, _audio(8), MASK, _settings(width=60))
    with pytest.raises(EchoMimicError, match="mask is 32x32 but the video is 64x64"):
        Sampler(models)(REF, _audio(8), MaskCondition(np.ones((32, 32))), _settings())
    with pytest.raises(EchoMimicError, match="condition sequence has 5 frames but the video needs 16"):
        Sampler(pose_models)(REF, _audio(16), FrameCondition(5, lambda i: np.zeros((len(i), H, W, 3), np.uint8)), _settings())
    with pytest.raises(EchoMimicError, match="takes 3-channel input"):
        Sampler(pose_models)(REF, _audio(8), MASK, _settings())
    with pytest.raises(EchoMimicError, match="context frames must be between 1 and 32"):
        Sampler(models)(REF, _audio(8), MASK, _settings(context_frames=40))
