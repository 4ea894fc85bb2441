"""PhD S1, the pose-dominant term: ``MSE(E_P(I0), E_P(I))`` between the one-step decode ``I0`` and the target ``I``.

``E_P`` ("the pose encoder extracts the keypoint maps", ``loss.phd.pose_form``):

- ``encoder`` (the paper's form): the model's own pose encoder applied to both images (mapped to [0, 1], the
  range of its pose drawings). The features are its last hidden layer -- the input of its output convolution,
  which a fresh encoder starts at zero (so the term works from the first step of an SD-initialised run).
  The squared difference is divided by the target features' spatial variance (per sample, averaged over
  channels): the term measures how much the pose picture changed relative to the picture's own structure,
  whatever the scale of the encoder's weights (a fresh encoder's features vary by ~1e-3 across an image).
  The encoder's weights are detached for this term: the gradient reaches the image (hence the denoiser), not
  the encoder, which could otherwise lower the term by making its features blind. A hand drawn at another
  place than the target's changes the features there, so the term pulls the hand back.
- ``heatmap``: the images weighted by Gaussian heat maps at the *target's* keypoints
  (:func:`trainer.losses.pose_maps`). It only looks near where the target's keypoints are: a hand displaced
  by more than about ``pose_sigma`` is invisible to it (no gradient where the hand went).

``loss.phd.pose_estimator`` ("module:callable", images in [-1, 1] -> maps) replaces either form.
"""
from __future__ import annotations

import torch
from torch import nn

from .losses import masked_mse, pose_maps


class _Captured(Exception):
    pass


def encoder_features(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> the pose encoder's features before its output convolution, (N, C, H/8, W/8)."""
    x = (images.float() + 1.0) / 2.0
    if getattr(encoder, "in_channels", 3) == 1:
        x = x.mean(1, keepdim=True)
    params = {n: p.detach() for n, p in encoder.named_parameters()}
    got = {}

    def grab(module, args):
        got["features"] = args[0]
        raise _Captured  # the output convolution itself is not needed

    handle = encoder.conv_out.register_forward_pre_hook(grab)
    try:
        torch.func.functional_call(encoder, params, (x[:, :, None],))
    except _Captured:
        pass
    finally:
        handle.remove()
    return got["features"]


def pose_term(pred: torch.Tensor, target: torch.Tensor, keypoints: torch.Tensor, phd, encoder: nn.Module | None = None,
              estimator=None) -> torch.Tensor:
    """Per-sample ``MSE(E_P(pred), E_P(target))`` (N,); images (N, 3, H, W) in [-1, 1], keypoints (N, K, 2) pixels."""
    if estimator is not None:
        maps = estimator
    elif phd.pose_form == "heatmap":
        def maps(x):
            return pose_maps(x, keypoints, phd.pose_sigma)
    else:
        if encoder is None:
            raise RuntimeError("loss.phd.pose_form: encoder needs the model's pose encoder")
        with torch.no_grad():
            tgt = encoder_features(encoder, target)
            scale = tgt.float().var(dim=(2, 3), keepdim=True).mean(1, keepdim=True).clamp_min(1e-20).rsqrt()
        return masked_mse(encoder_features(encoder, pred) * scale, tgt * scale)
    with torch.no_grad():
        tgt = maps(target)
    return masked_mse(maps(pred), tgt)
