"""DeepCache for the EchoMimic denoiser (opt-in: ``SampleSettings.deep_cache``; it changes the output).

DeepCache (Ma et al., 2023, arXiv:2312.00858) rests on the observation that a UNet's deep features change
little from one denoising step to the next, while its shallow layers carry the fine detail. Every
``deep_cache`` steps the denoiser runs whole and the input of one of its up-path layers is kept; in the steps
between, only the shallow layers run: the input convolution, the down-path layers that feed the kept branch's
skip connections, the up-path layers from the branch on, and the output head.

Branches are numbered as DeepCache numbers them, from the shallowest: branch ``b`` resumes the up path at its
``b``-th layer counted from the output (0: only the last up layer runs; SD1.5 has 12 up layers, so 0-11).
The up path's layers read the down path's outputs (skips) newest first, so branch ``b`` needs the first ``b + 1``
skips: the input convolution's output and the first ``b`` down-path outputs.
"""
from __future__ import annotations

import torch

from ..errors import EchoMimicError
from .context import take_runs


def branch_count(cfg) -> int:
    """How many branches a denoiser of config ``cfg`` (:class:`~echomimic_lib.config.EchoConfig`) has: one per
    up-path layer."""
    return cfg.up_layers


def check_branch(branch: int, cfg) -> None:
    """Refuse a branch the denoiser does not have (before any work)."""
    n = branch_count(cfg)
    if not 0 <= int(branch) < n:
        raise EchoMimicError(f"deep_cache_branch {branch}: this denoiser has branches 0 to {n - 1} (0 is the shallowest "
                             "and fastest, the usual choice; a larger branch recomputes more and keeps closer to the "
                             "uncached output).")


def is_full_step(step: int, interval: int) -> bool:
    """Whether denoising step ``step`` (0-based) runs the whole denoiser: every ``interval``-th step, from the first
    (DeepCache's uniform schedule). ``interval`` 0 or 1: every step."""
    return interval <= 1 or step % interval == 0


class DeepCache:
    """The sampler's DeepCache state for one generation.

    The sampler's context windows move by a few frames every step (``window_shift``), so the kept features are
    stored per *frame* of the whole video, not per window: a full step adds every window's kept rows at its
    frames and averages where windows overlap (as the predictions are), and a partial step gathers each of its
    windows' rows from there. The store holds (1 or 2 with CFG) x frames x the branch's channels and size, in
    the denoiser's dtype, for the whole generation (0.63 GB per 120 frames with CFG at 512 px and branch 0
    in fp16; 1.4 GB at 768 px). Nothing here reads the device back on the host."""

    def __init__(self, interval: int, branch: int, frames: int, guided: bool):
        self.interval, self.branch, self.frames = int(interval), int(branch), int(frames)
        self.rows = 2 if guided else 1  # unconditional first, as the denoiser's batch
        self.full = True
        self.store: torch.Tensor | None = None
        self._count: torch.Tensor | None = None
        self.full_calls = self.partial_calls = 0

    def begin_step(self, step: int) -> None:
        self.full = is_full_step(step, self.interval)
        if self.full and self.store is not None:
            self.store.zero_()
            self._count.zero_()

    def end_step(self) -> None:
        if self.full and self.store is not None:
            self.store.div_(self._count.clamp(min=1).to(self.store.dtype).view(1, -1, 1, 1, 1))

    def call_kwargs(self, runs: list) -> dict:
        """The denoiser's DeepCache arguments for a call over the windows ``runs`` (each a list of frame runs)."""
        if self.full:
            self.full_calls += 1
            return {"cache_branch": self.branch}
        if self.store is None:
            raise RuntimeError("DeepCache: a partial step before any full step")
        self.partial_calls += 1
        rows = [take_runs(self.store[u], r, 0) for u in range(self.rows) for r in runs]
        return {"cache_branch": self.branch, "cached": rows[0] if len(rows) == 1 else torch.cat(rows)}

    def keep(self, feature: torch.Tensor, runs: list, n: int) -> None:
        """Store a full call's kept rows (``rows`` x len(runs) windows x frames, batch-major) for its first ``n``
        windows (the rest pad the call)."""
        m = len(runs)
        per = feature.shape[0] // (self.rows * m)
        fv = feature.view(self.rows, m, per, *feature.shape[1:])
        if self.store is None:
            self.store = feature.new_zeros((self.rows, self.frames, *feature.shape[1:]))
            self._count = torch.zeros(self.frames, device=feature.device, dtype=torch.float32)
        for j in range(n):
            off = 0
            for a, b in runs[j]:
                self.store[:, a:b].add_(fv[:, j, off : off + b - a])
                self._count[a:b].add_(1.0)
                off += b - a

    def release(self) -> None:
        self.store = self._count = None
