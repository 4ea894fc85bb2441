"""The sampler's noise schedule: diffusers DDIM, linear betas, zero-terminal-SNR, v-prediction, trailing."""
from __future__ import annotations

from ..config import SCHEDULER_KWARGS


def make_scheduler(**overrides):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**{**SCHEDULER_KWARGS, **overrides})
