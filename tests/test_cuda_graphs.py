"""Whole-denoiser CUDA graphs (``echomimic_lib.models.unet.graphs``), checked on the CPU.

A strict stand-in records instead of the GPU: it runs the call once at capture and, at each replay, runs it
again and fails unless the ops and every non-tensor argument are the ones captured (a real graph replays
exactly what it recorded, so anything that differs would have been baked in), and unless nothing read the
device back during capture (``HostSyncGuard``). The real recording runs in ``tests/test_cuda.py``.
"""
import logging

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from echomimic_lib.audio import AudioFeatures
from echomimic_lib.errors import EchoMimicError
from echomimic_lib.model_set import load_models
from echomimic_lib.models.unet.graphs import CudaGraphRunner
from echomimic_lib.pipeline import MaskCondition, Sampler, sampler as sampler_mod, settings_for
from tests._tiny_shared import tiny_v1_copy
from tests.test_host_sync import HostSyncGuard


def _scalars(args):
    if isinstance(args, torch.Tensor):
        return ("T", tuple(args.shape), args.dtype)
    if isinstance(args, (list, tuple)):
        return tuple(_scalars(a) for a in args)
    if isinstance(args, dict):
        return tuple(sorted((k, _scalars(v)) for k, v in args.items()))
    return args if isinstance(args, (int, float, bool, str, type(None), torch.dtype, torch.device)) else repr(type(args))


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append((str(func), _scalars(args), _scalars(kwargs)))
        return func(*args, **kwargs)


class StrictGraph:
    """CPU stand-in for :class:`graphs.CudaGraph` (see the module docstring)."""

    instances: list = []

    def __init__(self, pool=None):
        self.pool = pool
        StrictGraph.instances.append(self)

    def capture(self, fn):
        self.fn = fn
        with HostSyncGuard() as guard, OpLog() as log:
            self.out = fn()
        assert guard.hits == [], f"host reads while recording: {guard.hits}"
        self.ops = log.ops
        return self.out

    def replay(self):
        with OpLog() as log:
            out = self.fn()
        if log.ops != self.ops:
            diff = next(i for i, (a, b) in enumerate(zip(log.ops, self.ops + [None] * len(log.ops))) if a != b)
            raise AssertionError(f"replay differs from the recording at op {diff}: {log.ops[diff]} vs "
                                 f"{self.ops[diff] if diff < len(self.ops) else None}")
        for held, new in zip(self.out, out) if isinstance(out, tuple) else [(self.out, out)]:
            held.copy_(new)

    def shared_pool(self):
        return ("pool", id(self))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_models(tiny_v1_copy(tmp_path_factory, tmp_path_factory.mktemp("tiny_graphs") / "v1"), "v1_audio", "normal", with_audio=False)


def _inputs(models, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 12, 8, 8, generator=g)
    audio = torch.randn(1, 12, 50, 384, generator=g)
    cond = torch.randn(1, 32, 1, 8, 8, generator=g)
    return x, audio, cond


def test_the_stand_in_fails_when_a_python_number_would_be_baked_in():
    state = {"t": 1}

    def fn():
        return torch.full((2,), state["t"]) * 2

    g = StrictGraph()
    g.capture(fn)
    g.replay()  # same number: fine
    state["t"] = 2
    with pytest.raises(AssertionError, match="replay differs"):
        g.replay()


_STEPS = [999, 801, 801, 601, 401, 201]
_PLANS = {  # (batch kind, step index) per call
    "interleaved": [(kind, i) for i in range(6) for kind in ("cfg", "single")],
    # one window recorded and replayed, then two windows per call (more rows join the reference keys/values), then
    # one window again
    "one-then-two-windows": [("single", i) for i in range(3)] + [("pair", i) for i in range(6)] +
                            [("single", i) for i in range(3, 6)],
}


@torch.no_grad()
@pytest.mark.parametrize("plan", list(_PLANS))
def test_replays_equal_direct_calls_for_changing_inputs_and_timesteps(models, plan):
    """Recording a larger batch after a smaller one must not move memory an earlier graph reads (on the CPU the
    reference's key/value join buffers grow with the rows that attend to the reference)."""
    den = models.denoiser
    den.fuse_projections()
    g = torch.Generator().manual_seed(0)
    kv = den.prepare_reference(models.reference.forward_reference(torch.randn(1, 4, 8, 8, generator=g))[0])
    runner = CudaGraphRunner(den, graph_factory=StrictGraph)
    for kind, i in _PLANS[plan]:
        x, audio, cond = _inputs(models, i)
        if kind == "cfg":
            args, kw = (torch.cat([x, x]), _STEPS[i]), dict(audio=audio, cond=cond, reference=kv, uncond_rows=1)
        elif kind == "pair":
            args = (torch.cat([x, x.flip(2)]), _STEPS[i])
            kw = dict(audio=torch.cat([audio, audio.flip(1)]), cond=cond.expand(2, -1, -1, -1, -1), reference=kv)
        else:
            args, kw = (x, _STEPS[i]), dict(audio=audio, cond=cond, reference=kv)
        got = runner(*args, **kw)
        want = den(*args, **kw)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        got.add_(1.0)  # the result is the caller's: the next replay does not see this
    assert runner.captures == 2 and runner.replays == len(_PLANS[plan]) - 2 and runner.failed is None
    runner.release()
    assert runner._recorded == {} and runner._held == []


@torch.no_grad()
def test_a_failed_recording_is_logged_and_the_generation_goes_on_eagerly(models, caplog):
    den = models.denoiser

    class Broken(StrictGraph):
        def capture(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing")

    runner = CudaGraphRunner(den, graph_factory=Broken)
    with caplog.at_level(logging.WARNING):
        outs = [runner(_inputs(models, i)[0], 801) for i in range(3)]
    assert runner.failed and "stream is capturing" in runner.failed and runner.captures == 0
    assert sum("CUDA graphs are off" in r.message for r in caplog.records) == 1
    for i, out in enumerate(outs):
        torch.testing.assert_close(out, den(_inputs(models, i)[0], 801), atol=1e-6, rtol=0)


def _audio(frames: int, fps=24) -> AudioFeatures:
    rows = int(np.ceil(frames * 50 / fps))
    return AudioFeatures(torch.randn(rows, 5, 384, generator=torch.Generator().manual_seed(3)), rows * 320)


REF = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
MASK = MaskCondition(np.pad(np.ones((32, 32)), 16))


def test_the_sampler_refuses_cuda_graphs_off_a_gpu_before_any_work(models):
    s = settings_for("v1-audio", "normal", width=64, height=64, steps=1, num_frames=12, cuda_graphs=True)
    with pytest.raises(EchoMimicError, match="cuda_graphs needs a CUDA GPU"):
        Sampler(models)(REF, _audio(12), MASK, s, decode=False)


@pytest.fixture
def graph_runners(monkeypatch):
    """The sampler's CUDA graph runners, recording with :class:`StrictGraph` on the CPU (the GPU check is off)."""
    runners = []

    class Recording(CudaGraphRunner):
        def __init__(self, den):
            super().__init__(den, graph_factory=StrictGraph)
            runners.append(self)

    monkeypatch.setattr(sampler_mod, "CudaGraphRunner", Recording)
    monkeypatch.setattr(Sampler, "_check_cuda_graphs", lambda self, device: None)
    return runners


@pytest.mark.parametrize("cfg,windows_per_batch", [(2.5, 1), (1.0, 3)])
def test_sampling_with_cuda_graphs_equals_the_default_path_in_one_shape(models, graph_runners, cfg, windows_per_batch):
    """30 frames make 4 windows: with 3 per call the last call is padded, so the whole run is one shape."""
    kw = dict(width=64, height=64, steps=3, cfg=cfg, num_frames=30, windows_per_batch=windows_per_batch)
    base = Sampler(models)(REF, _audio(30), MASK, settings_for("v1-audio", "normal", **kw), decode=False)
    got = Sampler(models)(REF, _audio(30), MASK, settings_for("v1-audio", "normal", cuda_graphs=True, **kw), decode=False)
    torch.testing.assert_close(got.latents, base.latents, atol=1e-4, rtol=0)
    (runner,) = graph_runners
    assert runner.captures == 1 and runner.failed is None
    assert runner.replays == got.unet_calls - 1  # one warm-up call, then recorded once and replayed
    assert runner._recorded == {}  # released at the end of the denoising loop
    assert got.unet_calls == base.unet_calls == 3 * -(-4 // windows_per_batch)





def test_off_device_names_what_is_not_on_the_device():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert sampler_mod.off_device(m, "cpu") == []
    m[1].to("meta")  # a layer the model manager left elsewhere (its weight and its buffers)
    assert sampler_mod.off_device(m, "cpu") == ["1.weight", "1.bias", "1.running_mean", "1.running_var",
                                                "1.num_batches_tracked"]
    assert sampler_mod.off_device(m, "cuda") == ["0.weight", "0.bias"] + sampler_mod.off_device(m, "cpu")


def test_a_denoiser_loaded_in_part_runs_without_graphs_and_says_why(models, monkeypatch, caplog):
    """A model manager short of VRAM loads part of the denoiser (ComfyUI casts the rest in per layer): recording
    would replay copies from fixed host addresses, so the run goes on without graphs, with the same result."""
    made = []
    monkeypatch.setattr(sampler_mod, "CudaGraphRunner", lambda den: made.append(den))
    monkeypatch.setattr(Sampler, "_check_cuda_graphs", lambda self, device: None)
    seen = []

    def partly(module, device):
        seen.append(module)
        return ["down_blocks.0.resnets.0.conv1.weight"]

    monkeypatch.setattr(sampler_mod, "off_device", partly)
    kw = dict(width=64, height=64, steps=2, num_frames=12)
    base = Sampler(models)(REF, _audio(12), MASK, settings_for("v1-audio", "normal", **kw), decode=False)
    assert seen == []  # not looked at without cuda_graphs
    with caplog.at_level(logging.WARNING):
        got = Sampler(models)(REF, _audio(12), MASK, settings_for("v1-audio", "normal", cuda_graphs=True, **kw),
                              decode=False)
    assert seen == [models.denoiser] and made == []
    assert any("cuda_graphs is off for this generation" in r.message and "conv1.weight" in r.message
               for r in caplog.records)
    torch.testing.assert_close(got.latents, base.latents, atol=0, rtol=0)

@torch.no_grad()
def test_compiled_regions_record_and_replay_like_eager(models):
    """compile + CUDA graphs, the GPU speed setting: compiled blocks (aot_eager: traced, no code generated) under
    the runner give the eager result; the recording sees no host read inside the compiled blocks either."""
    from echomimic_lib.models.unet.compile import compile_regions, uncompile_regions

    den = models.denoiser
    kv = den.prepare_reference(models.reference.forward_reference(torch.randn(1, 4, 8, 8))[0], join_budget=0)
    runner = CudaGraphRunner(den, graph_factory=StrictGraph)
    try:
        assert compile_regions(den, backend="aot_eager") > 0
        got = [runner(*a, **kw, reference=kv) for a, kw in (_call(models, i, t) for i, t in enumerate([999, 801, 601]))]
    finally:
        uncompile_regions(den)
    assert runner.captures == 1 and runner.replays == 2
    for i, t in enumerate([999, 801, 601]):
        a, kw = _call(models, i, t)
        torch.testing.assert_close(got[i], den(*a, **kw, reference=kv), atol=1e-5, rtol=0)


def _call(models, seed, t):
    x, audio, cond = _inputs(models, seed)
    return (x, t), {"audio": audio, "cond": cond}
