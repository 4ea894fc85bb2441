"""A fixed-noise evaluation loss: the latent v-loss of the first samples of a run's data at fixed timesteps
and noise, for the weights of a checkpoint (or the run's initial weights). Used to check that training
lowers the loss (the training log mixes random timesteps, so its curve is noisy)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig


@torch.no_grad()
def fixed_loss(cfg: TrainConfig, checkpoint: str | Path | None = None, samples: int = 8, timesteps=(100, 300, 500, 700, 900)) -> float:
    from .data.dataset import EchoDataset, ResumableSampler, build_pools, collate
    from .export import load_checkpoint_weights
    from .init import build
    from .net import AudioAttentionControl, bypass_motion
    from .phases import phase_at
    from .losses import training_scheduler
    from .step import LossFns, compute_losses

    pools = build_pools(cfg)  # clips the V1/V2 trainer cannot read are refused before the network is built
    built = build(cfg)
    net = built.net
    if checkpoint is not None and getattr(net, "lora", None):  # a LoRA checkpoint holds only the adapters
        from .lora import load_adapter_checkpoint

        load_adapter_checkpoint(net, Path(checkpoint))
    elif checkpoint is not None:
        net.load_state_dict(load_checkpoint_weights(Path(checkpoint)), strict=True)
    net.eval()
    at = phase_at(cfg.phases, 0)
    bypass_motion(net.denoiser, at.phase.kind == "spatial" and net.denoiser.has_motion)
    ctrl = AudioAttentionControl(net.denoiser)
    ds, sampler = EchoDataset(cfg, pools, 0, str(built.whisper_path)), ResumableSampler(cfg, pools)
    sched = training_scheduler(cfg)
    nocfg = copy.deepcopy(cfg)
    nocfg.loss.spatial.weight, nocfg.loss.phd.enabled = 0.0, False
    total = []
    for i in range(samples):
        batch = collate([ds[sampler.key(i)]])
        batch["drop_reference"][:] = False
        batch["drop_audio"][:] = False
        batch["drop_condition"][:] = False
        for t in timesteps:
            gen = torch.Generator().manual_seed(1000 * i + int(t))
            out = compute_losses(net, built.vae, sched, batch, gen, nocfg, LossFns(), ctrl, timesteps=torch.tensor([int(t)]))
            total.append(float(out.terms["latent"]))
    ctrl.remove()
    return float(np.mean(total))
