"""Losses: the latent v-prediction loss, V1's timestep-aware spatial loss and V2's PhD loss.

Notation: ``T`` = number of training timesteps (1000); ``t`` is the sampled timestep (0 = clean).
The one-step estimate of the clean latent from a v-prediction is ``x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v``;
``I0 = VAE.decode(x0 / 0.18215)`` with gradients flowing through the frozen decoder.

V1 spatial loss: ``lambda * w(t) * [l2 * MSE(I0, I) + lpips * LPIPS(I0, I)]`` with ``w(t) = cos(t pi / 2T)``
(1 at t = 0, 0.707 at T/2, 0 at T), averaged over the batch, added to the latent loss.

V2 PhD loss: denoising runs from ``t = T - 1`` down to 0. With ``bounds = [b1, b2]`` (default [0.1, 0.6]):
- S1 "pose-dominant", the first ``b1`` of denoising (the noisiest steps): ``t >= (1 - b1) T`` (t >= 900);
- S2 "detail-dominant", the next ``b2``: ``(1 - b1 - b2) T <= t < (1 - b1) T`` (300 <= t < 900);
- S3 "low-level", the rest: ``t < (1 - b1 - b2) T`` (t < 300).
Each sample adds its phase's term to ``L_latent``: S1 ``pose_weight * MSE(E_P(I0), E_P(I))``, S2
``detail_weight * MSE(edges(I0), edges(I))``, S3 ``low_weight * LPIPS(I0, I)``.

``E_P`` ("the Pose Encoder extracts the keypoint maps"): two forms (``loss.phd.pose_form``, see
:mod:`trainer.phd`): ``encoder`` (the paper's: the model's own pose encoder applied to both images) and
``heatmap`` (the image weighted by Gaussian heat maps around the target frame's keypoints,
:func:`pose_maps`). A differentiable keypoint estimator can replace either
(``loss.phd.pose_estimator: "module:callable"``, images in [-1, 1] -> heat maps).
"""
from __future__ import annotations

import importlib
import math
from typing import Callable

import torch
import torch.nn.functional as F

from .lpips_net import build_lpips  # noqa: F401  (LPIPS lives in trainer.lpips_net; re-exported for callers)

VAE_SCALE = 0.18215


def training_scheduler(cfg):
    """The diffusers scheduler whose ``add_noise`` / ``get_velocity`` / ``alphas_cumprod`` a training step uses:
    the sampler's DDIM settings (:data:`echomimic_lib.config.SCHEDULER_KWARGS`) with the run's ``noise`` section
    (betas, zero terminal SNR, prediction type) and any further ``noise_scheduler`` keyword arguments on top."""
    from echomimic_lib.pipeline import make_scheduler

    n = cfg.noise
    own = dict(beta_schedule=n.beta_schedule, beta_start=n.beta_start, beta_end=n.beta_end, num_train_timesteps=n.num_train_timesteps,
               rescale_betas_zero_snr=n.rescale_betas_zero_snr, prediction_type=n.prediction_type)
    return make_scheduler(**own, **cfg.noise_scheduler)


def spatial_weight(t: torch.Tensor | float, num_timesteps: int = 1000) -> torch.Tensor:
    """w(t) = cos(t * pi / (2T))."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.cos(t * math.pi / (2.0 * num_timesteps))


def phd_phase(t: torch.Tensor, num_timesteps: int = 1000, bounds=(0.1, 0.6)) -> torch.Tensor:
    """PhD phase index per timestep: 0 = S1 (pose), 1 = S2 (detail), 2 = S3 (low-level)."""
    t = torch.as_tensor(t)
    s1 = (1.0 - bounds[0]) * num_timesteps
    s2 = (1.0 - bounds[0] - bounds[1]) * num_timesteps
    return torch.where(t >= s1, 0, torch.where(t >= s2, 1, 2))


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    ab = alphas_cumprod.to(x_t.device, torch.float32)[t].view(-1, *([1] * (x_t.dim() - 1)))
    return ab.sqrt() * x_t.float() - (1.0 - ab).sqrt() * v.float()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean squared error; ``mask`` (broadcastable, 1 = counted) excludes padding."""
    d = (pred.float() - target.float()) ** 2
    dims = tuple(range(1, d.dim()))
    if mask is None:
        return d.mean(dims)
    m = mask.float().expand_as(d)
    return (d * m).sum(dims) / m.sum(dims).clamp_min(1.0)


# ---------------------------------------------------------------------------------------------- edges
def _gaussian(sigma: float, device, dtype) -> torch.Tensor:
    r = max(1, int(math.ceil(2 * sigma)))
    x = torch.arange(-r, r + 1, device=device, dtype=dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def soft_edges(img: torch.Tensor, blur_sigma: float = 1.0, low: float = 0.05, high: float = 0.1, softness: float = 0.02,
               thinning: float = 20.0) -> torch.Tensor:
    """Differentiable Canny-style edge map of images in [-1, 1]: (N, 3, H, W) -> (N, 1, H, W) in [0, 1].

    Gaussian blur -> Sobel gradients -> magnitude (with a small epsilon, so the gradient stays finite at flat
    regions) -> soft non-maximum suppression along the gradient direction (the four Canny directions weighted
    by the squared projection of the gradient on each) -> soft double threshold with a 3x3 hysteresis link."""
    x = (img.float() + 1.0) / 2.0
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    k = _gaussian(blur_sigma, gray.device, gray.dtype)
    r = k.numel() // 2
    gray = F.conv2d(F.pad(gray, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    gray = F.conv2d(F.pad(gray, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    sob = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=gray.device) / 8.0
    g = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(g, sob.view(1, 1, 3, 3)), F.conv2d(g, sob.t().contiguous().view(1, 1, 3, 3))
    mag2 = gx**2 + gy**2 + 1e-8
    mag = mag2.sqrt()
    # squared projections on the directions 0, 90, 45, 135 degrees, normalised
    proj = torch.cat([gx**2, gy**2, (gx + gy) ** 2 / 2, (gx - gy) ** 2 / 2], 1)
    wdir = proj / proj.sum(1, keepdim=True).clamp_min(1e-8)
    mp = F.pad(mag, (1, 1, 1, 1), mode="replicate")
    h, w = mag.shape[-2:]

    def shifted(dy, dx):
        return mp[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    neigh = torch.cat([torch.maximum(shifted(0, 1), shifted(0, -1)), torch.maximum(shifted(1, 0), shifted(-1, 0)),
                       torch.maximum(shifted(1, 1), shifted(-1, -1)), torch.maximum(shifted(1, -1), shifted(-1, 1))], 1)
    suppress = (wdir * neigh).sum(1, keepdim=True)
    # ~0.88 on a ridge (ties included), 0.5 when a neighbour along the gradient is 10 % of the max stronger
    thin = mag * torch.sigmoid(thinning * (mag - suppress) / (mag.detach().amax((2, 3), keepdim=True) + 1e-6) + 2.0)
    strong = torch.sigmoid((thin - high) / softness)
    weak = torch.sigmoid((thin - low) / softness)
    linked = F.max_pool2d(strong, 3, stride=1, padding=1)
    return strong + (1.0 - strong) * weak * linked


# ---------------------------------------------------------------------------------------------- pose maps
def keypoint_heatmaps(points: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """(N, K, 2) pixel keypoints (NaN = missing) -> (N, 1, H, W) max of Gaussians (0 where no keypoint)."""
    w, h = size
    n = points.shape[0]
    ys = torch.arange(h, device=points.device, dtype=torch.float32).view(1, 1, h, 1)
    xs = torch.arange(w, device=points.device, dtype=torch.float32).view(1, 1, 1, w)
    ok = torch.isfinite(points).all(-1)
    p = torch.nan_to_num(points.float(), nan=-1e4)
    d2 = (xs - p[..., 0].view(n, -1, 1, 1)) ** 2 + (ys - p[..., 1].view(n, -1, 1, 1)) ** 2
    g = torch.exp(-d2 / (2 * sigma**2)) * ok.view(n, -1, 1, 1)
    return g.amax(1, keepdim=True) if g.shape[1] else torch.zeros(n, 1, h, w, device=points.device)


def load_pose_estimator(spec: str | None) -> Callable | None:
    """``"module:callable"`` -> the callable (a differentiable keypoint estimator), or None."""
    if not spec:
        return None
    mod, _, name = spec.partition(":")
    obj = getattr(importlib.import_module(mod), name)
    return obj() if isinstance(obj, type) else obj


def pose_maps(images: torch.Tensor, keypoints: torch.Tensor, sigma_frac: float, estimator: Callable | None = None) -> torch.Tensor:
    """E_P: keypoint maps of images (N, 3, H, W) in [-1, 1] (see the module docstring)."""
    if estimator is not None:
        return estimator(images)
    h, w = images.shape[-2:]
    heat = keypoint_heatmaps(keypoints, (w, h), sigma_frac * max(h, w))
    return images.float() * heat


# ---------------------------------------------------------------------------------------------- decode
def decode_x0(vae, x0: torch.Tensor, pixels: torch.Tensor, boxes: torch.Tensor | None, crop: int | None):
    """Decode (N, 4, h, w) latents with gradients; with ``crop`` (pixels) only a face-centred crop of the
    latent is decoded. Returns (decoded, matching ground-truth pixels, (y0, x0) pixel offsets per sample)."""
    n, _, h, w = x0.shape
    if crop:
        c = max(1, min(crop // 8, h, w))
        cx = ((boxes[:, 0] + boxes[:, 2]) / 2 * w).round().long() if boxes is not None else torch.full((n,), w // 2)
        cy = ((boxes[:, 1] + boxes[:, 3]) / 2 * h).round().long() if boxes is not None else torch.full((n,), h // 2)
        xs = (cx - c // 2).clamp(0, w - c).tolist()
        ys = (cy - c // 2).clamp(0, h - c).tolist()
        z = torch.stack([x0[i, :, ys[i] : ys[i] + c, xs[i] : xs[i] + c] for i in range(n)])
        gt = torch.stack([pixels[i, :, ys[i] * 8 : (ys[i] + c) * 8, xs[i] * 8 : (xs[i] + c) * 8] for i in range(n)])
        offs = list(zip([y * 8 for y in ys], [x * 8 for x in xs]))
    else:
        z, gt, offs = x0, pixels, [(0, 0)] * n
    dec = vae.decode((z / VAE_SCALE).to(vae.dtype)).sample.float()
    return dec, gt.float(), offs
