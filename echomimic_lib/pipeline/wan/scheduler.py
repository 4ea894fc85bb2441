"""Flow-UniPC for EchoMimicV3 flash-pro: diffusers' ``UniPCMultistepScheduler`` with the official sigmas.

The official sampler (Wan 2.1's ``FlowUniPCMultistepScheduler``) is built with shift 1 and shifted in
``set_timesteps(N, shift=S)``: ``s = linspace(sigma_max, 0, N+1)[:-1]`` with ``sigma_max = float32(0.999)``
(the first value of its 1000-step training table), ``s = S*s / (1 + (S-1)*s)``, timesteps ``int64(s*1000)``
(truncated), UniPC-bh2 of order 2 predicting x0, lower order at the last step, corrector from step 1.
So the first sigma is 0.9998, not 1.0 (diffusers' default flow sigmas start at 1). diffusers' UniPC given
these unshifted sigmas and ``flow_shift=S`` reproduces the official steps (parity case ``v3_scheduler``).
"""
from __future__ import annotations

import inspect

import numpy as np

SIGMA_MAX = float(np.float32(0.999))  # 0.9990000128746033, as the official scheduler reads it
DEFAULT_SHIFT = 5.0
DEFAULT_STEPS = 8


def official_sigmas(steps: int) -> np.ndarray:
    """Unshifted sigma list the official scheduler starts from (float64, ``steps`` values, no final 0)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return np.linspace(SIGMA_MAX, 0.0, steps + 1)[:-1]


def flow_unipc(steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT, device=None):
    """A diffusers ``UniPCMultistepScheduler`` set up for ``steps`` official flash-pro steps.

    ``.timesteps`` are int64 (the transformer gets them as is), ``.sigmas`` has ``steps + 1`` values
    ending with 0; call ``.step(model_output, t, sample).prev_sample`` once per timestep."""
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=float(shift), predict_x0=True, solver_type="bh2", lower_order_final=True,
        final_sigmas_type="zero", timestep_spacing="linspace", disable_corrector=[],
    )
    if "sigmas" not in inspect.signature(sched.set_timesteps).parameters:
        raise RuntimeError("EchoMimicV3 needs a diffusers release whose UniPCMultistepScheduler.set_timesteps accepts "
                           "sigmas= (with use_flow_sigmas); upgrade diffusers.")
    sched.set_timesteps(sigmas=official_sigmas(steps), device=device)  # a numpy array: diffusers shifts it in place
    sched.set_begin_index(0)  # steps are taken in order: no timestep lookup (works on fake tensors too)
    return sched
