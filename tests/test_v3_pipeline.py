"""EchoMimicV3 flash-pro pipeline rules on tiny random models: size, frames, mask, TeaCache, CFG passes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from echomimic_lib.pipeline.wan.color import color_transfer
from echomimic_lib.pipeline.wan.sampler import V3Settings, check_frames, generate, mask_latents, sample_size
from echomimic_lib.pipeline.wan.teacache import TeaCache, make_cache
from tests._v3_tiny import TINY, tiny_model


def test_size_rule():
    assert sample_size(120, 90, (64, 80)) == (48, 80)  # scaled to the target area, multiples of 16 (down)
    assert sample_size(100, 50) == (48, 96)  # smaller than 768x768: only rounded down
    assert sample_size(1920, 1080) == (576, 1024)
    with pytest.raises(ValueError, match="too small"):
        sample_size(10, 100)


def test_frame_rule():
    assert check_frames(81) == 21 and check_frames(1) == 1
    with pytest.raises(ValueError, match="4k\\+1"):
        check_frames(80)


def test_mask_layout_sub_frames():
    m = mask_latents([True] + [False] * 8, (2, 3))
    assert m.shape == (1, 4, 3, 2, 3)
    assert m[0, :, 0].eq(1).all() and m[0, :, 1:].eq(0).all()
    m = mask_latents([True] * 3 + [False] * 6, (1, 1))  # frames 0..2 known: latent 1 covers frames 1..4
    assert m[0, :, 1, 0, 0].tolist() == [1, 1, 0, 0] and m[0, :, 2].eq(0).all()


def test_teacache_counts_calls_and_reuses_the_other_pass():
    cache = TeaCache(num_steps=4, threshold=0.1, skip_start=1)
    e = [torch.full((1, 6, 4), v) for v in (1.0, 1.0, 1.06, 1.06)]  # two steps x (cond, uncond)
    decisions = []
    for x in e:
        decisions.append(cache.begin(x))
        cache.store(torch.zeros(1))
        cache.end_call()
    # call 1 (uncond of step 0): distance 0 -> poly(0) < 0.1 -> reuse; call 2: rel 0.06 -> accumulated -0.05 + 0.19 >= 0.1 -> compute
    assert decisions == [True, False, True, False]
    assert cache.cnt == 0 and cache.residual is None  # reset after num_steps calls
    with pytest.raises(ValueError, match="skip_start"):
        TeaCache(num_steps=3, skip_start=5)
    assert make_cache("off", 8) is None
    with pytest.raises(ValueError, match="teacache"):
        make_cache("fast", 8)


def test_color_transfer_keeps_frame0_and_matches_stats():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    frames[2] = frames[2] // 2
    out = color_transfer(frames)
    assert np.array_equal(out[0], frames[0]) and not np.array_equal(out[2], frames[2])
    assert abs(out[2].astype(float).mean() - frames[0].astype(float).mean()) < abs(frames[2].astype(float).mean() - frames[0].astype(float).mean())


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=4, z_dim=16).eval()


def _generate(vae, settings, calls=None):
    model = tiny_model()
    if calls is not None:
        orig = model.forward
        model.forward = lambda *a, **k: (calls.append(k.get("cache") is not None), orig(*a, **k))[1]
    g = torch.Generator().manual_seed(3)
    ref = (torch.rand(32, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
    windows = torch.randn(1, 5, 5, TINY.audio.blocks, TINY.audio.channels, generator=g)
    return generate(model, vae, ref, torch.randn(1, 4, TINY.text_dim, generator=g), torch.randn(1, 257, TINY.clip_dim, generator=g),
                    windows, settings)


def test_generate_cfg_passes_teacache_and_frames(tiny_vae):
    calls = []
    off = _generate(tiny_vae, V3Settings(steps=4, teacache="off", audio_cfg=1.0, color_transfer=False), calls)
    assert len(calls) == 4  # audio CFG off: one pass per step
    assert off.frames.shape == (5, 32, 48, 3) and off.frames.dtype == np.uint8 and off.latents.shape == (1, 16, 2, 4, 6)
    calls.clear()
    on = _generate(tiny_vae, V3Settings(steps=4, teacache="official", teacache_skip_start=2), calls)
    assert len(calls) == 8 and all(calls)
    assert [e["computed"] for e in on.teacache_trace][:2] == [True, True] and len(on.teacache_trace) == 8
    plain = _generate(tiny_vae, V3Settings(steps=4, teacache="official", teacache_skip_start=2, color_transfer=False))
    assert np.array_equal(on.frames[0], plain.frames[0]) and torch.equal(on.latents, plain.latents)


def test_generate_rejects_bad_inputs(tiny_vae):
    model = tiny_model()
    with pytest.raises(ValueError, match="4k\\+1"):
        generate(model, tiny_vae, np.zeros((32, 32, 3), np.uint8), torch.zeros(1, 2, 16), torch.zeros(1, 257, 24),
                 torch.zeros(1, 6, 5, 2, 8), V3Settings(steps=2))
    with pytest.raises(ValueError, match="multiples of 16"):
        generate(model, tiny_vae, np.zeros((30, 32, 3), np.uint8), torch.zeros(1, 2, 16), torch.zeros(1, 257, 24),
                 torch.zeros(1, 5, 5, 2, 8), V3Settings(steps=2))
