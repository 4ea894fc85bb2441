"""One training micro-step: a batch from :mod:`trainer.data.dataset` -> loss terms.

Randomness (VAE posterior sample, noise, timesteps) comes from the ``generator`` the loop seeds per step,
on the CPU, so a step is reproducible on any device and after a resume.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .losses import (VAE_SCALE, decode_x0, masked_mse, phd_phase, soft_edges, spatial_weight, x0_from_v)
from .phd import pose_term

PHD_NAMES = ("S1_pose", "S2_detail", "S3_low")


@dataclass
class LossFns:
    lpips: object | None = None  # callable (a, b) -> (N,)
    pose_estimator: object | None = None
    pose_encoder: object | None = None  # PhD S1 encoder form (default: the model's own cond_encoder)


@dataclass
class StepOutput:
    total: torch.Tensor
    terms: dict = field(default_factory=dict)  # name -> float tensor (logged)
    info: dict = field(default_factory=dict)  # timesteps, PhD phase per sample, ...


def sample_latents(mean: torch.Tensor, std: torch.Tensor | None, generator: torch.Generator | None, chunk: int = 8) -> torch.Tensor:
    """Scaled latents from a VAE posterior's (N, 4, h, w) mean and std: a sample (``std`` given; noise drawn from
    ``generator`` in chunks of ``chunk`` frames) or the mean. The VAE path and the cached-latent path
    (:mod:`trainer.data.latent_cache`) both come through here, so they draw the same noise."""
    out = []
    for i in range(0, mean.shape[0], chunk):
        m = mean[i : i + chunk].float()
        if std is not None:
            eps = torch.randn(m.shape, generator=generator, dtype=torch.float32).to(m.device)
            m = m + std[i : i + chunk].float() * eps
        out.append(m * VAE_SCALE)
    return torch.cat(out)


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, generator: torch.Generator | None, sample: bool, chunk: int = 8) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 4, H/8, W/8) scaled latents (posterior sample or mean)."""
    out = []
    for i in range(0, pixels.shape[0], chunk):
        dist = vae.encode(pixels[i : i + chunk].to(vae.dtype)).latent_dist
        out.append(sample_latents(dist.mean, dist.std if sample else None, generator, chunk))
    return torch.cat(out)


def batch_latents(vae, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(target latents (B, 4, F, h, w), reference latents (B, 4, h, w)): from the batch's cached VAE posteriors
    when it carries them (``latent_mean`` / ``latent_std`` / ``ref_latent``), else encoded by the VAE."""
    if "latent_mean" in batch:
        mean, std = batch["latent_mean"], batch["latent_std"]  # (B, F, 4, h, w)
        b, f = mean.shape[:2]
        lat = sample_latents(mean.flatten(0, 1), std.flatten(0, 1), generator)
        ref = sample_latents(batch["ref_latent"], None, None)
    else:
        pix = batch["pixels"]
        b, f = pix.shape[:2]
        lat = encode_latents(vae, pix.flatten(0, 1), generator, sample=True)
        ref = encode_latents(vae, batch["reference"], generator, sample=False)
    return lat.view(b, f, *lat.shape[1:]).transpose(1, 2), ref


def compute_losses(model, vae, scheduler, batch: dict, generator: torch.Generator, cfg: TrainConfig, fns: LossFns,
                   audio_control=None, timesteps: torch.Tensor | None = None) -> StepOutput:
    device = batch["loss_mask"].device
    pix = batch.get("pixels")  # (B, F, 3, H, W); absent when cached latents stand in and no loss decodes images
    b, f = batch["loss_mask"].shape[:2]
    T = scheduler.config.num_train_timesteps
    lat, ref = batch_latents(vae, batch, generator)  # (B, 4, F, h, w), (B, 4, h, w)
    noise = torch.randn(lat.shape, generator=generator, dtype=torch.float32).to(device)
    t = torch.randint(0, T, (b,), generator=generator)
    t = (t if timesteps is None else torch.as_tensor(timesteps).expand(b)).to(device)
    x_t = scheduler.add_noise(lat, noise, t)
    target = scheduler.get_velocity(lat, noise, t)

    keep_audio = (~batch["drop_audio"]).float().view(b, 1, 1, 1)
    audio = batch["audio"] * keep_audio
    if audio_control is not None:
        mask = batch.get("audio_mask")
        audio_control.set(mask.flatten(0, 1) if mask is not None else None, (lat.shape[-2], lat.shape[-1]))
    pred = model(x_t, t, ref, audio, batch.get("cond"), ~batch["drop_reference"], (~batch["drop_condition"]).float())

    loss_mask = batch["loss_mask"]  # (B, F, H, W), 0 = padding
    lat_mask = F.adaptive_avg_pool2d(loss_mask.flatten(0, 1)[:, None].float(), lat.shape[-2:])
    lat_mask = (lat_mask > 0.5).float().view(b, f, 1, *lat.shape[-2:]).transpose(1, 2)  # (B, 1, F, h, w)
    padded = bool(batch["headshot_padded"].any())
    latent = masked_mse(pred, target, lat_mask if padded else None)
    terms = {"latent": latent.mean()}
    total = latent.mean()
    info = {"t": t.detach().cpu(), "headshot": batch["headshot_padded"].detach().cpu()}

    sp, phd = cfg.loss.spatial, cfg.loss.phd
    if sp.weight > 0 or phd.enabled:
        x0 = x0_from_v(x_t, pred, scheduler.alphas_cumprod, t)  # (B, 4, F, h, w)
        n = f if cfg.loss.decode_frames <= 0 else min(f, cfg.loss.decode_frames)
        keep = torch.linspace(0, f - 1, n).round().long().to(device)  # evenly spaced frames of each sample
        x0f = x0[:, :, keep].transpose(1, 2).flatten(0, 1)
        pix_d, mask_d = pix[:, keep].flatten(0, 1), loss_mask[:, keep].flatten(0, 1)
        boxes = batch["face_box"].repeat_interleave(n, 0)
        crop = sp.crop_size if sp.face_crop else None
        dec, gt, offs = decode_x0(vae, x0f, pix_d, boxes, crop)
        pm = torch.stack([mask_d[i, y : y + dec.shape[-2], x : x + dec.shape[-1]] for i, (y, x) in enumerate(offs)])[:, None]
        per_frame_t = t.repeat_interleave(n)
        if sp.weight > 0:
            term = sp.l2 * masked_mse(dec, gt, pm if padded else None)
            if sp.lpips > 0:
                term = term + sp.lpips * _lpips(fns, dec, gt, pm if padded else None)
            wt = spatial_weight(per_frame_t.cpu(), T).to(device, torch.float32)
            spatial = (wt * term).view(b, n).mean(1)
            terms["spatial"] = spatial.mean()
            total = total + sp.weight * spatial.mean()
        if phd.enabled:
            phase = phd_phase(per_frame_t, T, phd.bounds)
            info["phd_phase"] = phase.view(b, n)[:, 0].cpu()
            zero = dec.sum() * 0.0
            phd_terms = [zero, zero, zero]
            sel = phase == 0
            if bool(sel.any()):
                kp = batch["keypoints"][:, keep].flatten(0, 1)[sel] if "keypoints" in batch else torch.zeros(int(sel.sum()), 0, 2, device=device)
                kp = kp - torch.tensor([[offs[i][1], offs[i][0]] for i in sel.nonzero().flatten().tolist()], device=device, dtype=kp.dtype).view(-1, 1, 2)
                encoder = fns.pose_encoder or getattr(getattr(model, "module", model), "cond_encoder", None)
                phd_terms[0] = phd.pose_weight * pose_term(dec[sel], gt[sel], kp, phd, encoder, fns.pose_estimator).sum() / (b * n)
            sel = phase == 1
            if bool(sel.any()):
                e = phd.edge
                kw = dict(blur_sigma=e.blur_sigma, low=e.low, high=e.high, softness=e.softness, thinning=e.thinning)
                with torch.no_grad():
                    tgt = soft_edges(gt[sel], **kw)
                m = pm[sel] if padded else None
                phd_terms[1] = phd.detail_weight * masked_mse(soft_edges(dec[sel], **kw), tgt, m).sum() / (b * n)
            sel = phase == 2
            if bool(sel.any()) and phd.low_weight > 0:
                phd_terms[2] = phd.low_weight * _lpips(fns, dec[sel], gt[sel], pm[sel] if padded else None).sum() / (b * n)
            for name, v in zip(PHD_NAMES, phd_terms):
                terms["phd_" + name] = v
            total = total + sum(phd_terms)
    terms["total"] = total
    return StepOutput(total, {k: v.detach() for k, v in terms.items()}, info)


def _lpips(fns: LossFns, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if fns.lpips is None:
        raise RuntimeError("an LPIPS term is enabled but no LPIPS function was built")
    if mask is not None:  # padding excluded: both images are black there
        a, b = a * mask + (1 - mask) * -1.0, b * mask + (1 - mask) * -1.0
    return fns.lpips(a, b)
