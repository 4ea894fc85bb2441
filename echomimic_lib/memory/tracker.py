"""Peak device memory of real code run on fake tensors, for machines without the GPU.

:class:`VramTracker` is a ``TorchDispatchMode`` that records every tensor storage an operator creates on
the tracked device and forgets it when the storage dies (the caching allocator frees a block the same
way: when its last tensor goes). Sizes are rounded up to 512 bytes like CUDA's caching allocator, whose
``max_memory_allocated`` counts the rounded blocks. Weights are not created by operators during a run:
they are counted through :meth:`VramTracker.set_resident` by whoever places them (the bench's placement
backend), so a network that a stage does not need costs nothing while it is off the device.

:class:`StepTracker` is the same count for a training step (thousands of live storages: dead ones are dropped by
a finalizer rather than found by a sweep).

Run under ``FakeTensorMode`` with the networks built on a fake ``cuda`` device, the figure is what the GPU
would allocate, without a GPU and without memory. Two GPU effects are modelled explicitly:

- :func:`gpu_attention`: on a GPU, ``scaled_dot_product_attention`` runs the flash kernel (fp16/bf16) or
  the memory-efficient one (fp32), which never materialise the score matrix; without a GPU PyTorch would
  pick the math path. The mode routes the call to the same aten kernels the GPU uses (their fake
  implementations allocate exactly what the kernels return: output + log-sum-exp).
- Not modelled: cuDNN / cuBLAS workspaces (a few MB to a few hundred MB for large convolutions, depending
  on the algorithm cuDNN picks) and allocator fragmentation (that is ``memory_reserved`` minus
  ``memory_allocated`` and does not enter ``max_memory_allocated``).
"""
from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

BLOCK = 512  # CUDA caching allocator rounding


def _rounded(nbytes: int) -> int:
    return (int(nbytes) + BLOCK - 1) // BLOCK * BLOCK


class VramTracker(TorchDispatchMode):
    """Live bytes on ``device``: storages created by operators, plus resident weights set from outside."""

    def __init__(self, device, ignore=()):
        super().__init__()
        self.device = torch.device(device)
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self._ignore = {StorageWeakRef(t.untyped_storage()).cdata for t in ignore}
        self.created = 0  # bytes held by live storages
        self.resident = 0  # bytes of weights on the device (set_resident)
        self.peak = 0
        self.stage = "start"
        self.stage_peaks: dict[str, int] = {}

    # ----------------------------------------------------------------- bookkeeping
    @property
    def live(self) -> int:
        return self.created + self.resident

    def _note(self) -> None:
        live = self.live
        self.peak = max(self.peak, live)
        self.stage_peaks[self.stage] = max(self.stage_peaks.get(self.stage, 0), live)

    def set_stage(self, name: str) -> None:
        """Peaks from now on count for ``name`` (the next allocation or residency change records it)."""
        self.stage = name
        self._sweep()
        self.stage_peaks.setdefault(name, 0)

    def set_resident(self, nbytes: int) -> None:
        self.resident = int(nbytes)
        self._note()

    def ignore(self, tensors) -> None:
        """Storages that are counted elsewhere (weights): never counted as created."""
        for t in tensors:
            self._ignore.add(StorageWeakRef(t.untyped_storage()).cdata)

    def _on_device(self, t: torch.Tensor) -> bool:
        d = t.device
        return d.type == self.device.type and (self.device.index is None or d.index in (None, self.device.index))

    def _sweep(self) -> None:
        dead = [k for k, (ref, _) in self._live.items() if ref.expired()]
        for k in dead:
            self.created -= self._live.pop(k)[1]

    def _track(self, storage, ref: StorageWeakRef) -> int:
        """Count a new live storage (found dead later by :meth:`_sweep`); returns its rounded size."""
        n = _rounded(storage.nbytes())
        self._live[ref.cdata] = (ref, n)
        return n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and self._on_device(t):
                st = t.untyped_storage()
                ref = StorageWeakRef(st)
                if ref.cdata in self._ignore or ref.cdata in self._live:
                    continue
                self.created += self._track(st, ref)
        self._note()
        return out


class StepTracker(VramTracker):
    """:class:`VramTracker` (rounding, resident bytes, stages, ignored storages) for a training step: a dead storage is
    dropped by a finalizer when it dies instead of by a sweep over every live storage after each operator. A training
    step keeps thousands of storages alive (the activations saved for the backward), and the sweep made it quadratic
    (minutes per step)."""

    def _sweep(self) -> None:
        pass

    def _drop(self, key: int) -> None:
        self.created -= self._live.pop(key)[1]

    def _track(self, storage, ref: StorageWeakRef) -> int:
        n = super()._track(storage, ref)
        weakref.finalize(storage, self._drop, ref.cdata)
        return n


class _GpuAttention(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and not kwargs.get("attn_mask") and len(args) == 3:
            q, k, v = args
            if q.device.type == "cuda":
                if q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
                    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
                return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, False)[0]
        return func(*args, **kwargs)


@contextlib.contextmanager
def gpu_attention():
    """Route SDPA on (fake) CUDA tensors to the flash / memory-efficient kernels the GPU would run."""
    with _GpuAttention():
        yield
