"""The flow-matching objective of an EchoMimicV3 LoRA step (rectified flow, as Wan and VideoX-Fun train).

``x_t = (1 - sigma) x_0 + sigma * noise``, the network predicts the velocity ``noise - x_0`` (what the release's
Flow-UniPC sampler integrates). ``sigma`` is drawn as diffusers' SD3 / Wan training scripts draw it: a density over
``u`` in [0, 1] (:func:`diffusers.training_utils.compute_density_for_timestep_sampling`: uniform (``none``),
logit-normal, mode, cosmap) indexing the 1000 training sigmas of a ``FlowMatchEulerDiscreteScheduler`` with the
sampler's shift (5): a uniform ``u`` then trains noise levels in the proportions 8-step sampling visits them. The
timestep given to the network is ``1000 * sigma``. Loss: the weighted (``compute_loss_weighting_for_sd3``) mean
squared error over every latent, frame 0 included (its condition is in ``y``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import V3Noise

TRAIN_TIMESTEPS = 1000


def training_sigmas(shift: float) -> torch.Tensor:
    """The 1000 shifted sigmas, highest noise first (as ``FlowMatchEulerDiscreteScheduler(shift=...)`` lists them)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=TRAIN_TIMESTEPS, shift=shift)
    return sched.sigmas[:TRAIN_TIMESTEPS].float().clone()


def draw_sigmas(noise: V3Noise, batch: int, generator: torch.Generator, sigmas: torch.Tensor) -> torch.Tensor:
    """(batch,) sigmas in (0, 1]."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    with torch.random.fork_rng(devices=[]):  # the density functions draw from torch's global generator
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        u = compute_density_for_timestep_sampling(weighting_scheme=noise.weighting, batch_size=batch,
                                                  logit_mean=noise.logit_mean, logit_std=noise.logit_std,
                                                  mode_scale=noise.mode_scale)
    idx = (u * TRAIN_TIMESTEPS).long().clamp(0, TRAIN_TIMESTEPS - 1)
    return sigmas[idx]


def loss_weights(noise: V3Noise, sigma: torch.Tensor) -> torch.Tensor:
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    return compute_loss_weighting_for_sd3(weighting_scheme=noise.weighting, sigmas=sigma)


def flow_loss(model, batch: dict, noise_cfg: V3Noise, generator: torch.Generator, sigmas: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """One step's loss. ``batch``: latents (B, 16, T, h, w), y (B, 20, T, h, w), clip (B, 257, width), context
    (B, L, text_dim), audio_windows (B, F, 5, layers, C) (already zeroed where the audio is dropped),
    dtype (the frozen weights' dtype)."""
    x0 = batch["latents"].float()
    b = x0.shape[0]
    sigma = draw_sigmas(noise_cfg, b, generator, sigmas)
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
    s = sigma.to(x0.device).view(b, 1, 1, 1, 1)
    dtype = batch["dtype"]  # the frozen weights' dtype (the adapters compute in float32 and cast back)
    x_t = ((1 - s) * x0 + s * eps).to(dtype)
    pred = model(x_t, (sigma * TRAIN_TIMESTEPS).to(x0.device), batch["context"], batch["clip"], batch["y"],
                 audio_windows=batch["audio_windows"])
    target = eps - x0
    per = F.mse_loss(pred.float(), target, reduction="none").flatten(1).mean(1)
    w = loss_weights(noise_cfg, sigma).to(per.device).view(-1).float()
    loss = (w * per).mean()
    return loss, {"sigma_mean": float(sigma.mean())}
