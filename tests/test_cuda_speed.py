"""CUDA-only checks of the speed options (``pytest -m cuda``; every test here skips without a CUDA device), V1 512 px
fp16 on official-size random weights: the whole-denoiser CUDA graph runner against eager calls, generations with
``cuda_graphs`` (and regional compile) against the default path, each ``sdpa-*`` attention backend against the
default one. Run first by ``bench/gpu_check.sh``; figures go to ``ECHOMIMIC_GPU_REPORT`` like ``tests/test_cuda.py``.
"""
from __future__ import annotations

import time

import pytest
import torch

from tests._cuda import HALF_BOUNDS, full_size_models, generate, no_tf32, report  # noqa: F401 (no_tf32: autouse fixture)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GRAPH_RTOL = 1e-2  # replay vs eager call, relative to the output's scale (a replay on stale inputs is off by ~1)


@pytest.fixture(scope="module")
def v1_fp16():
    """Official V1 size (512 px), random weights, fp16; one reference's kv; the default path (eager, no graphs) of
    a short generation: 24 frames = 3 windows, 2 steps, CFG 2.5."""
    models = full_size_models("v1").to(dtype=torch.float16)
    ref = torch.randn(1, 4, 64, 64, device="cuda", generator=torch.Generator(device="cuda").manual_seed(3))
    with torch.no_grad():
        kv = models.denoiser.prepare_reference(models.reference.forward_reference(ref)[0])
    return models, kv, generate(models, "v1", 512, frames=24)


def test_cuda_graph_runner_replays_match_eager_calls_and_release_frees_the_pool(v1_fp16):
    """Each call's inputs and timestep reach the replay; one capture per batch shape; release frees the memory."""
    from echomimic_lib.models.unet.graphs import CudaGraphRunner

    models, kv, _ = v1_fp16
    den = models.denoiser

    def inputs(seed, timestep, rows, u):  # rows, of which u unconditional
        half = dict(device="cuda", dtype=torch.float16, generator=torch.Generator(device="cuda").manual_seed(seed))
        return dict(sample=torch.randn(rows, 4, 12, 64, 64, **half), timestep=timestep, uncond_rows=u, reference=kv,
                    audio=torch.randn(rows - u, 12, 50, 384, **half), cond=models.cond_encoder(torch.rand(rows - u, 1, 1, 512, 512, **half)))

    # new inputs each call, the same inputs at another timestep (calls 3, 4), a second shape (single rows)
    calls = [(0, 801, 2, 1), (1, 601, 2, 1), (2, 401, 2, 1), (2, 201, 2, 1), (3, 1, 2, 1), (4, 901, 1, 0), (5, 501, 1, 0), (6, 101, 1, 0)]
    with torch.no_grad():
        args = [inputs(*c) for c in calls]
        eager = [den(**a).float().cpu() for a in args]
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        alloc0, reserved0 = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        runner = CudaGraphRunner(den)
        got = [runner(**a).float().cpu() for a in args]
        held, counts = torch.cuda.memory_reserved(), dict(captures=runner.captures, replays=runner.replays, failed=runner.failed)
        runner.release()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    alloc1, reserved1 = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    rel = [float((x - y).abs().max() / y.abs().max()) for x, y in zip(got, eager)]
    apart = float((eager[3] - eager[2]).abs().max() / eager[2].abs().max())  # the same inputs, another timestep
    report("cuda_graph_runner", size=512, dtype="fp16", rel_max_abs=rel, timestep_apart=apart, **counts, allocated_before=alloc0,
           allocated_after=alloc1, reserved_before=reserved0, reserved_with_graphs=held, reserved_after=reserved1)
    assert counts["failed"] is None and counts["captures"] == 2, counts  # one capture per shape (CFG rows 2, single 1)
    assert counts["replays"] == len(calls) - 2, counts  # every call but each shape's first (eager warm-up) replays
    assert apart > 10 * GRAPH_RTOL and max(rel) <= GRAPH_RTOL, (apart, rel)  # the bound tells a stale input apart
    assert held - reserved0 > 256 * 2**20  # the graphs (and the warm-up calls) held memory, which release gave back:
    assert alloc1 - alloc0 < 64 * 2**20 and reserved1 - reserved0 < 128 * 2**20  # (a live graph keeps its pool)


def _graph_generation(monkeypatch, models, **settings):
    """A generation with ``cuda_graphs=True`` and the runners the sampler made for it (this call's only)."""
    from echomimic_lib.models.unet.graphs import CudaGraphRunner
    from echomimic_lib.pipeline import sampler

    runners = []
    class Recording(CudaGraphRunner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runners.append(self)

    monkeypatch.setattr(sampler, "CudaGraphRunner", Recording)
    return generate(models, "v1", 512, frames=24, cuda_graphs=True, **settings), runners


def _check_generation(name: str, got, ref, runners, **figures) -> None:
    """``got`` (graphs) within the fp16 bounds of the default path ``ref``; one runner, one shape recorded."""
    diff, lat, lat_ref = (got.frames - ref.frames).abs(), got.latents.float().cpu(), ref.latents.float().cpu()
    figures.update(frames_mean_abs=float(diff.mean()), frames_max_abs=float(diff.max()), unet_calls=got.unet_calls,
                   latent_rel=float((lat - lat_ref).norm() / lat_ref.norm()), runners=[(r.captures, r.replays, r.failed) for r in runners])
    report(name, size=512, dtype="fp16", bounds=HALF_BOUNDS["fp16"], **figures)
    assert len(runners) == 1 and runners[0].failed is None and runners[0].captures == 1, figures  # (last group padded)
    assert runners[0].replays == got.unet_calls - 1 and torch.isfinite(got.frames).all(), figures
    assert figures["frames_mean_abs"] <= HALF_BOUNDS["fp16"]["mean"], figures
    assert figures["latent_rel"] <= HALF_BOUNDS["fp16"]["latent_rel"], figures


@pytest.mark.parametrize("windows_per_batch", [1, 2])
def test_sampler_with_cuda_graphs_matches_the_default_path(v1_fp16, windows_per_batch, monkeypatch):
    got, runners = _graph_generation(monkeypatch, v1_fp16[0], windows_per_batch=windows_per_batch)
    _check_generation("sampler_cuda_graphs", got, v1_fp16[2], runners, windows_per_batch=windows_per_batch)


def test_sampler_with_cuda_graphs_and_regional_compile_matches_the_default_path(v1_fp16, monkeypatch):
    """The official V1 denoiser compiled per region (a cold compile of the CFG batch shape) inside the graphs; a
    second generation (a new runner, no recompile) records again, to the same result."""
    from echomimic_lib.models.unet.compile import compile_regions, uncompile_regions

    den = v1_fp16[0].denoiser
    assert compile_regions(den) > 0
    try:
        t = time.perf_counter()
        got, runners = _graph_generation(monkeypatch, v1_fp16[0])
        first = time.perf_counter() - t
        again, again_runners = _graph_generation(monkeypatch, v1_fp16[0])
    finally:
        uncompile_regions(den)
    again_rel = float((again.latents - got.latents).norm() / got.latents.norm())
    _check_generation("sampler_cuda_graphs_compiled", got, v1_fp16[2], runners, first_generation_s=round(first, 2),
                      second_generation_latent_rel=again_rel)
    assert again_runners[0].failed is None and again_runners[0].captures == 1 and again_rel <= 1e-3


@pytest.mark.parametrize("backend", ["sdpa-flash", "sdpa-cudnn", "sdpa-efficient"])
def test_each_sdpa_kernel_backend_gives_the_default_denoiser_output(v1_fp16, backend):
    """The attention backends that pick an SDPA kernel (the 40-wide heads of the first level included) give the
    default backend's output within fp16 rounding, on the CFG call (reference and plain self-attention rows)."""
    models, kv, _ = v1_fp16
    den = models.denoiser
    half = dict(device="cuda", dtype=torch.float16, generator=torch.Generator(device="cuda").manual_seed(11))
    x, audio = torch.randn(2, 4, 12, 64, 64, **half), torch.randn(1, 12, 50, 384, **half)
    with torch.no_grad():
        cond = models.cond_encoder(torch.rand(1, 1, 1, 512, 512, **half))
        want = den(x, 801, audio=audio, cond=cond, reference=kv, uncond_rows=1).float()
        den.set_attention_backend(backend)
        try:
            got = den(x, 801, audio=audio, cond=cond, reference=kv, uncond_rows=1).float()
        finally:
            den.set_attention_backend("sdpa")
    rel = float((got - want).norm() / want.norm())
    report("sdpa_backend", backend=backend, rel=rel, max_abs=float((got - want).abs().max()))
    assert torch.isfinite(got).all() and rel <= 5e-3
