"""DeepCache (``SampleSettings.deep_cache``, :mod:`echomimic_lib.pipeline.deep_cache`): the denoiser's full and
partial passes, the per-frame store of the kept features, and the sampler with it (on the tiny models)."""
import numpy as np
import pytest
import torch

from echomimic_lib.audio import AudioFeatures
from echomimic_lib.config import EchoConfig
from echomimic_lib.errors import EchoMimicError
from echomimic_lib.model_set import load_models
from echomimic_lib.pipeline import MaskCondition, Sampler, settings_for
from echomimic_lib.pipeline.deep_cache import DeepCache, branch_count, check_branch, is_full_step
from tests._tiny_shared import tiny_v1_copy
from tests.test_cuda_graphs import graph_runners  # noqa: F401 (fixture: the sampler's runners, recording on the CPU)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_models(tiny_v1_copy(tmp_path_factory, tmp_path_factory.mktemp("tiny_deep_cache") / "v1"), "v1_audio", "normal",
                       with_audio=False)


def _call_inputs(models, seed=0):
    g = torch.Generator().manual_seed(seed)
    den = models.denoiser
    kv = den.prepare_reference(models.reference.forward_reference(torch.randn(1, 4, 8, 8, generator=g))[0])
    x = torch.randn(2, 4, 12, 8, 8, generator=g)
    kw = dict(audio=torch.randn(1, 12, 50, 384, generator=g), cond=torch.randn(1, 32, 1, 8, 8, generator=g),
              reference=kv, uncond_rows=1)
    return x, kw


@torch.no_grad()
def test_a_full_call_keeps_the_branch_input_and_the_partial_pass_rebuilds_the_output_from_it(models):
    den = models.denoiser
    x, kw = _call_inputs(models)
    plain = den(x, 801, **kw)
    assert branch_count(den.cfg) == 12
    other = torch.randn_like(x)
    for b in (0, 2, 3, 11):  # the last layer; a block's first layer (after an up-sampler); a lower size; the deepest
        out, kept = den(x, 801, cache_branch=b, **kw)
        assert torch.equal(out, plain), b  # the full call is the plain call
        channels, halvings = den.cfg.up_layer_input(b)  # what the memory estimate counts
        assert kept.shape == (2 * 12, channels, 8 >> halvings, 8 >> halvings)  # one row per (sample, frame)
        # fed its own input's kept features, the partial pass gives the full output (only the shallow layers ran)
        torch.testing.assert_close(den(x, 801, cache_branch=b, cached=kept, **kw), plain, atol=1e-5, rtol=0)
        # fed another input, it is not the full call on that input (the deep features are stale)
        assert not torch.allclose(den(other, 601, cache_branch=b, cached=kept, **kw), den(other, 601, **kw), atol=1e-3)
    with pytest.raises(ValueError, match="branches 0 to 11"):
        den(x, 801, cache_branch=12, **kw)


def _calls(module_list):
    counts = {}
    handles = [m.register_forward_hook(lambda mod, a, o, name=name: counts.__setitem__(name, counts.get(name, 0) + 1))
               for name, m in module_list]
    return counts, handles


@torch.no_grad()
@pytest.mark.parametrize("branch,down_layers,up_layers", [(0, 0, 1), (1, 1, 2), (2, 2, 3), (4, 3, 5)])
def test_the_partial_pass_runs_only_the_layers_the_branch_needs(models, branch, down_layers, up_layers):
    """Branch b runs the down path's first b layers (resnets; the down-sampler counts as a skip too) and the up
    path's last b + 1 layers, never the middle block."""
    den = models.denoiser
    x, kw = _call_inputs(models)
    _, kept = den(x, 801, cache_branch=branch, **kw)
    down = [(f"d{i}.{j}", r) for i, blk in enumerate(den.down_blocks) for j, r in enumerate(blk.resnets)]
    up = [(f"u{i}.{j}", r) for i, blk in enumerate(den.up_blocks) for j, r in enumerate(blk.resnets)]
    counts, handles = _calls(down + up + [("mid", den.mid_block)])
    try:
        den(x, 801, cache_branch=branch, cached=kept, **kw)
    finally:
        for h in handles:
            h.remove()
    assert "mid" not in counts
    assert sorted(k for k in counts if k.startswith("d")) == sorted(n for n, _ in down[:down_layers])
    assert sorted(k for k in counts if k.startswith("u")) == sorted(n for n, _ in up[len(up) - up_layers:])


def test_the_store_keeps_features_per_frame_and_averages_overlaps():
    """Rows come batch-major (unconditional windows first); windows may wrap around the end (two runs); padding
    windows (past ``n``) are not stored; a later partial call's windows, shifted, read the frames they cover."""
    frames, c = 10, 4
    dc = DeepCache(interval=2, branch=0, frames=frames, guided=True)
    dc.begin_step(0)
    assert dc.full and dc.call_kwargs([[(0, 4)]]) == {"cache_branch": 0}
    windows = [[(0, 4)], [(3, 7)], [(8, 10), (0, 2)], [(3, 7)]]  # the last one pads the call
    frame_of = [[f for a, b in w for f in range(a, b)] for w in windows]
    feat = torch.zeros(2, len(windows), c, 3, 2, 2)
    for j, fr in enumerate(frame_of):
        for k, f in enumerate(fr):
            feat[0, j, k] = -(f + 1) if j < 3 else 999.0  # unconditional rows; the padding window holds garbage
            feat[1, j, k] = (f + 1) * (1 + j)  # conditional rows: frame 3 gets 4*1 and 4*2 (mean 6), frame 1 2*1 and 2*3
    dc.keep(feat.reshape(-1, 3, 2, 2), windows, n=3)
    dc.end_step()
    dc.begin_step(1)
    assert not dc.full
    shifted = [[(1, 5)], [(9, 10), (0, 3)]]
    rows = dc.call_kwargs(shifted)["cached"].view(2, 2, c, 3, 2, 2)[..., 0, 0, 0]
    expect_cond = {0: 2.0, 1: 4.0, 2: 3.0, 3: 6.0, 4: 10.0, 9: 30.0}
    for j, w in enumerate(shifted):
        fr = [f for a, b in w for f in range(a, b)]
        assert rows[0, j].tolist() == [-(f + 1) for f in fr]
        assert rows[1, j].tolist() == [expect_cond[f] for f in fr]
    assert [is_full_step(i, 3) for i in range(7)] == [True, False, False, True, False, False, True]
    assert all(is_full_step(i, 1) and is_full_step(i, 0) for i in range(4))


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(EchoMimicError, match="between 0 .off. and 10"):
        settings_for("v1-audio", deep_cache=11).validate()
    with pytest.raises(EchoMimicError, match="0 .the shallowest"):
        settings_for("v1-audio", deep_cache=3, deep_cache_branch=-1).validate()
    with pytest.raises(EchoMimicError, match="branches 0 to 11"):
        check_branch(12, EchoConfig())


def _audio(frames: int, fps=24) -> AudioFeatures:
    rows = int(np.ceil(frames * 50 / fps))
    return AudioFeatures(torch.randn(rows, 5, 384, generator=torch.Generator().manual_seed(3)), rows * 320)


REF = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
MASK = MaskCondition(np.pad(np.ones((32, 32)), 16))
KW = dict(width=64, height=64, steps=4, num_frames=30)  # 4 windows per step, two wrapping around the end; with
# deep_cache=3 steps 0 and 3 are full, 1 and 2 partial (4 steps, not 6: CI time)


def _run(models, trace=None, **kw):
    return Sampler(models)(REF, _audio(30), MASK, settings_for("v1-audio", "normal", **{**KW, **kw}), decode=False,
                           trace=trace)


@torch.no_grad()
def test_sampling_with_deep_cache_runs_the_deep_layers_only_in_full_steps(models):
    base_trace, trace = {}, {}
    base = _run(models, trace=lambda k, v: base_trace.setdefault(k, v))
    assert torch.equal(_run(models, deep_cache=1).latents, base.latents)  # interval 1: every step is full, exact
    counts, handles = _calls([("mid", models.denoiser.mid_block)])
    try:
        got = _run(models, deep_cache=3, trace=lambda k, v: trace.setdefault(k, v))
    finally:
        for h in handles:
            h.remove()
    assert got.unet_calls == base.unet_calls == KW["steps"] * 4
    assert counts["mid"] == 2 * 4  # steps 0 and 3, four windows each
    torch.testing.assert_close(trace["step0"][1], base_trace["step0"][1], atol=0, rtol=0)  # step 0 is a full step
    assert torch.isfinite(got.latents).all() and not torch.allclose(got.latents, base.latents, atol=1e-3)
    # a deeper branch recomputes more and stays closer to the uncached result
    again, deepest = (_run(models, deep_cache=3, deep_cache_branch=b).latents for b in (0, 11))
    assert torch.equal(again, got.latents)  # deterministic
    assert (deepest - base.latents).abs().mean() < (got.latents - base.latents).abs().mean()
    with pytest.raises(EchoMimicError, match="branches 0 to 11"):
        _run(models, deep_cache=3, deep_cache_branch=12)


@torch.no_grad()
@pytest.mark.parametrize("cfg,branch", [(2.5, 0), (1.0, 4)])
def test_the_memory_estimate_counts_the_store(models, monkeypatch, cfg, branch):
    from echomimic_lib.memory import estimate

    held = []
    release = DeepCache.release
    monkeypatch.setattr(DeepCache, "release", lambda self: (held.append(self.store.nbytes), release(self)))
    _run(models, cfg=cfg, steps=2, deep_cache=2, deep_cache_branch=branch)
    s = settings_for("v1-audio", "normal", **{**KW, "cfg": cfg, "deep_cache": 2, "deep_cache_branch": branch})
    assert held == [estimate.deep_cache_bytes(models.config, s, 30, 4)]
    off = estimate.stage_bytes("denoise", models, settings_for("v1-audio", "normal", **{**KW, "cfg": cfg}))
    assert estimate.stage_bytes("denoise", models, s) == off + held[0]


@torch.no_grad()
@pytest.mark.parametrize("cfg,windows_per_batch", [(2.5, 1), (1.0, 3)])
def test_deep_cache_with_cuda_graphs_records_the_full_and_the_partial_call(models, graph_runners, cfg, windows_per_batch):
    kw = dict(cfg=cfg, windows_per_batch=windows_per_batch, deep_cache=2)
    want = _run(models, **kw)
    got = _run(models, cuda_graphs=True, **kw)
    torch.testing.assert_close(got.latents, want.latents, atol=1e-4, rtol=0)
    (runner,) = graph_runners
    assert runner.captures == 2 and runner.failed is None  # one layout for full calls, one for partial calls
    assert runner.replays == got.unet_calls - 2  # each layout: one warm-up call, then recorded once and replayed


@torch.no_grad()
def test_a_streamed_denoiser_low_vram_runs_the_partial_pass_unchanged(models):
    """Low-VRAM streaming learns the unit order of each call layout (whole, partial) from its first call and
    prefetches by it: once both are recorded, no guess is wrong when whole and partial calls alternate (one order
    for both would guess wrong where the partial call leaves the down path); the output is unchanged and no slot
    leaks."""
    import copy

    from echomimic_lib.memory import BlockStreamer

    den = copy.deepcopy(models.denoiser)
    x, kw = _call_inputs(models)
    want_full, kept = models.denoiser(x, 801, cache_branch=1, **kw)
    want_part = models.denoiser(x.flip(2), 601, cache_branch=1, cached=kept, **kw)
    live = [0]
    streamer = BlockStreamer(den, "cpu", "cpu", on_move=lambda u, n: live.__setitem__(0, live[0] + n))
    streamer.attach()
    for round_ in range(3):
        full, kept2 = den(x, 801, cache_branch=1, **kw)
        assert torch.equal(full, want_full) and torch.equal(kept2, kept)
        assert torch.equal(den(x.flip(2), 601, cache_branch=1, cached=kept, **kw), want_part)
        assert live[0] == streamer.window_bytes()  # the two slots, nothing held after a call
        if round_ == 0:  # both layouts recorded, nothing guessed yet
            assert streamer.guesses == 0
    whole, partial = (len(streamer._orders[k]) for k in ("whole", ("partial", 1)))
    assert partial < whole
    assert streamer.misses == 0 and streamer.guesses == 2 * (whole + partial) - 1  # every unit of rounds 2-3 but the first
    streamer.detach()
    assert live[0] == 0
