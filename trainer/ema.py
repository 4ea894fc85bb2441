"""EMA of the trained weights across phases that train different parameter sets.

diffusers' ``EMAModel.step`` treats a parameter with ``requires_grad=False`` as "not averaged" and copies its
live value into the shadow. One EMA over every parameter any phase trains would therefore lose, on entering
V2's temporal phase (motion modules only), the averages built for the reference UNet, the denoiser and the pose
encoder over the spatial phases. :class:`PhaseEMA` keeps a frozen parameter's shadow as it is: only the
parameters the current phase trains are averaged; everything else (state dict, store / copy_to / restore, the
decay schedule) is diffusers' ``EMAModel``.

The decay warm-up counts optimizer steps of the whole run, so a parameter first trained late (the motion
modules) is averaged with the full decay from its first step: its EMA starts at its initial value.
"""
from __future__ import annotations

from typing import Iterable

import torch
from diffusers.training_utils import EMAModel


class PhaseEMA(EMAModel):
    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]):
        params = list(parameters)
        if len(params) != len(self.shadow_params):
            raise ValueError(f"EMA holds {len(self.shadow_params)} tensors but was stepped with {len(params)} parameters")
        # a frozen parameter is replaced by its own shadow: diffusers' copy into the shadow is then a no-op
        return super().step([p if p.requires_grad else s for p, s in zip(params, self.shadow_params)])
