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

from ..errors import EchoMimicError


def branch_count(cfg) -> int:
    """How many branches a denoiser of config ``cfg`` (:class:`~echomimic_lib.config.EchoConfig`) has: one per
    up-path layer."""
    return len(cfg.block_out_channels) * (cfg.layers_per_block + 1)


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
