"""CUDA graphs for the whole denoiser call, per generation (``SampleSettings.cuda_graphs``).

A 12-frame denoiser call launches a few thousand kernels; a CUDA graph replays them with one launch. The
graph is recorded over the *whole* call, not per compiled block (``torch.compile(mode="reduce-overhead")``
per block shares one graph between blocks of a kind, and the UNet's skip connections still hold the output
of an earlier replay when the next block of that kind runs over it).

For each input layout (shapes, dtypes, ``uncond_rows``, the reference keys/values object, DeepCache's full or
partial call) the runner:

1. runs the first call eagerly: a warm-up (cuDNN / cuBLAS set-up, ``torch.compile``) whose result is used;
2. on the second call copies the inputs into static buffers, records the call into a graph and replays it;
3. afterwards copies each call's inputs into those buffers and replays; the result is cloned out of the
   graph's output buffer, so it stays valid whatever runs next.

The timestep goes in through a device buffer (a Python number would be baked into the graph). The
reference keys/values are read in place: the runner lives for one generation and holds them (their join
buffers, which grow with the batch, are switched off: a recorded call joins per call). All graphs of
a runner share one memory pool, freed by :meth:`CudaGraphRunner.release`. The forward itself never reads
the device back on the host (``tests/test_host_sync.py``), which recording requires. When recording fails
the runner logs why once and goes on eagerly: same result, no speed-up.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)


class CudaGraph:
    """One recorded call on the current CUDA device (``torch.cuda.CUDAGraph`` in a shared pool)."""

    def __init__(self, pool=None):
        self.graph = torch.cuda.CUDAGraph()
        self.pool = pool

    def capture(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        # thread_local: another thread's CUDA call (a ComfyUI preview, a server thread) does not break the recording
        with torch.cuda.graph(self.graph, pool=self.pool, capture_error_mode="thread_local"):
            out = fn()
        return out

    def replay(self) -> None:
        self.graph.replay()

    def shared_pool(self):
        return self.graph.pool()


def _layout(t: torch.Tensor | None):
    return None if t is None else (tuple(t.shape), t.dtype, t.device)


class _Recorded:
    """Static inputs and output of one recorded layout."""

    def __init__(self, graph, sample, step, audio, cond, cached=None):
        self.graph, self.sample, self.step, self.audio, self.cond = graph, sample, step, audio, cond
        self.cached = cached
        self.out: torch.Tensor | tuple | None = None

    def load(self, sample, timestep, audio, cond, cached=None) -> None:
        self.sample.copy_(sample)
        _set_step(self.step, timestep)
        for buf, value in ((self.audio, audio), (self.cond, cond), (self.cached, cached)):
            if buf is not None:
                buf.copy_(value)

    def result(self):
        """A copy of the output (a DeepCache full call has two), valid whatever the graph replays next."""
        return tuple(t.clone() for t in self.out) if isinstance(self.out, tuple) else self.out.clone()


def _clone(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clone()


def _step_buffer(timestep, device) -> torch.Tensor:
    """A device tensor holding the timestep as the denoiser would make it (int64 for an int, float32 else)."""
    if isinstance(timestep, torch.Tensor):
        return timestep.detach().to(device).reshape(-1).clone()
    return torch.full((1,), timestep, device=device)


def _set_step(buf: torch.Tensor, timestep) -> None:
    if isinstance(timestep, torch.Tensor):
        buf.copy_(timestep.reshape(-1))
    else:
        buf.fill_(timestep)


class CudaGraphRunner:
    """The denoiser's inference call (same arguments and result), recorded once per input layout and replayed.

    ``graph_factory(pool)`` makes a recorder (default :class:`CudaGraph`; tests pass a stand-in that records
    on the CPU). Use for one generation, then :meth:`release` (also as a context manager)."""

    def __init__(self, denoiser, graph_factory: Callable | None = None):
        self.denoiser = denoiser
        self.graph_factory = graph_factory or CudaGraph
        self.captures = 0
        self.replays = 0
        self.failed: str | None = None
        self._seen: set = set()
        self._recorded: dict = {}
        self._pool = None
        self._held: list = []  # the reference objects the graphs read (kept alive, so their ids stay unique)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _key(self, sample, timestep, audio, cond, reference, uncond_rows, cache_branch, cached):
        step = ("tensor", timestep.dtype, tuple(timestep.shape)) if isinstance(timestep, torch.Tensor) else type(timestep).__name__
        return (_layout(sample), step, _layout(audio), _layout(cond), id(reference) if reference is not None else None,
                int(uncond_rows), cache_branch, _layout(cached))

    def __call__(self, sample, timestep, audio=None, cond=None, reference=None, uncond_rows: int = 0,
                 cache_branch: int | None = None, cached: torch.Tensor | None = None):
        """As the denoiser's call; DeepCache's full and partial calls (``cache_branch``, ``cached``) are layouts of
        their own."""
        den = self.denoiser
        kw = dict(audio=audio, cond=cond, reference=reference, uncond_rows=uncond_rows)
        if cache_branch is not None:
            kw.update(cache_branch=cache_branch, cached=cached)
        if self.failed is not None:
            return den(sample, timestep, **kw)
        key = self._key(sample, timestep, audio, cond, reference, uncond_rows, cache_branch, cached)
        rec = self._recorded.get(key)
        if rec is None:
            if key not in self._seen:  # warm-up: an ordinary call whose result is used
                self._seen.add(key)
                return den(sample, timestep, **kw)
            rec = self._record(key, sample, timestep, kw)
            if rec is None:
                return den(sample, timestep, **kw)
        else:
            rec.load(sample, timestep, audio, cond, cached)
        rec.graph.replay()
        self.replays += 1
        return rec.result()

    def _record(self, key, sample, timestep, kw: dict) -> _Recorded | None:
        den = self.denoiser
        reference = kw["reference"]
        if getattr(reference, "join_budget", 0) > 0:
            # join buffers (ReferenceKV) are made anew when more rows come, which would free memory an earlier
            # graph reads: a recorded call joins the keys/values itself, in the graphs' pool
            reference.join_budget = 0
            reference.release()
        rec = _Recorded(None, sample.clone(), _step_buffer(timestep, sample.device), _clone(kw["audio"]), _clone(kw["cond"]),
                        _clone(kw.get("cached")))
        static = dict(kw, audio=rec.audio, cond=rec.cond)
        if "cached" in kw:
            static["cached"] = rec.cached
        try:
            graph = self.graph_factory(self._pool)
            rec.out = graph.capture(lambda: den(rec.sample, rec.step, **static))
        except Exception as exc:  # noqa: BLE001 - an unrecordable call must not lose the generation
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graphs are off for this generation: recording the denoiser call failed (%s); it runs "
                        "without them (same result, no speed-up).", self.failed)
            self.release()
            return None
        if self._pool is None and hasattr(graph, "shared_pool"):
            self._pool = graph.shared_pool()
        rec.graph = graph
        self._recorded[key] = rec
        if reference is not None:
            self._held.append(reference)
        self.captures += 1
        return rec

    def release(self) -> None:
        """Drop every graph, its static buffers and the shared pool (the memory returns to the allocator)."""
        self._recorded.clear()
        self._held.clear()
        self._pool = None
