"""Reference keys/values of the denoiser's ``attn1``, projected once per generation.

Each denoiser row attends to ``[its own tokens; the reference tokens]``. Joining the two per call copies
both parts for every row of every block. With a *join budget* (bytes), each block instead keeps one
buffer per generation whose reference part is written once; a call then only writes its own part. The
buffers live as long as the :class:`ReferenceKV` (one generation) or until :meth:`ReferenceKV.release`.
They are used only without autograd (training joins per call).
"""
from __future__ import annotations

from functools import partial

import torch

CPU_JOIN_BUDGET = 512 * 2**20  # on the CPU, memory traffic costs more than these bytes of buffers


def join_kv(k: torch.Tensor, v: torch.Tensor, ek: torch.Tensor, ev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[k; ek]`` and ``[v; ev]`` along the tokens; ``ek``/``ev`` have batch 1 (shared) or ``k``'s batch."""
    b = k.shape[0]
    return (torch.cat([k, ek.to(k.dtype).expand(b, -1, -1)], dim=1),
            torch.cat([v, ev.to(v.dtype).expand(b, -1, -1)], dim=1))


class ReferenceKV(dict):
    """Module path -> (k, v) reference keys/values, each (1 or B, L_ref, C)."""

    def __init__(self, *args, join_budget: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.join_budget = int(join_budget)
        self._buffers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._used = 0

    @property
    def buffer_bytes(self) -> int:
        return self._used

    def joiner(self, path: str):
        """``(k, v) -> (K, V)`` for block ``path`` using its join buffer, or None (join per call)."""
        if self.join_budget <= 0 or torch.is_grad_enabled() or self[path][0].shape[0] != 1:
            return None
        return partial(self._join, path)

    def _join(self, path: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rk, rv = self[path]
        rows, n, c = k.shape
        total = n + rk.shape[1]
        buf = self._buffers.get(path)
        if buf is None or buf[0].shape[0] < rows or buf[0].shape[1:] != (total, c) or buf[0].dtype != k.dtype \
                or buf[0].device != k.device:
            old = 0 if buf is None else 2 * buf[0].numel() * buf[0].element_size()
            need = 2 * rows * total * c * k.element_size()
            if self._used - old + need > self.join_budget:
                return join_kv(k, v, rk, rv)
            buf = tuple(torch.empty((rows, total, c), dtype=k.dtype, device=k.device) for _ in range(2))
            buf[0][:, n:] = rk.to(k.dtype)
            buf[1][:, n:] = rv.to(v.dtype)
            self._buffers[path] = buf
            self._used += need - old
        kk, vv = buf[0][:rows], buf[1][:rows]
        kk[:, :n] = k
        vv[:, :n] = v
        return kk, vv

    def release(self) -> None:
        """Free the join buffers (the reference keys/values stay)."""
        self._buffers.clear()
        self._used = 0
