"""Wan 2.1 VAE for EchoMimicV3: diffusers' ``AutoencoderKLWan`` read from the official ``Wan2.1_VAE.pth``.

The official wrapper normalises latents inside the model with 16 fixed means/stds:
``encode: (mu - mean) * (1 / std)``, ``decode: z / (1 / std) + mean`` (multiplying by the reciprocal, as
here), uses the posterior mode for conditioning and clamps decoded pixels to [-1, 1]. diffusers'
``AutoencoderKLWan`` is the same network under other key names (diffusers' own converter maps them) and
leaves the normalisation to the caller: :func:`normalise` / :func:`denormalise` do it with the values of
the VAE's config (the official ones). ComfyUI's Wan latent format uses the same 16 values.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..cancel_hooks import checked_between, network, part
from .loader import WeightsError, read_state_dict  # the project's safe reader, imported in loader.py only

LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


def load_wan_vae(path: str | Path, dtype=torch.float32, device="cpu"):
    """diffusers ``AutoencoderKLWan`` from an official-layout ``Wan2.1_VAE.pth`` (or .safetensors), strict, or from a
    diffusers folder. The base width is read from the file (96 for the release)."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    if Path(path).is_dir():  # a diffusers folder (e.g. the tiny test set)
        if not (Path(path) / "config.json").is_file():
            raise WeightsError(f"{path}: a folder without config.json; give Wan2.1_VAE.pth or a diffusers AutoencoderKLWan folder")
        vae = AutoencoderKLWan.from_pretrained(str(path))
        return (vae.to(device=device) if dtype == torch.float32 else vae.to(device=device, dtype=dtype)).eval()
    sd = read_state_dict(path, mmap=False)
    if "encoder.conv1.weight" not in sd:
        raise WeightsError(f"{path}: no 'encoder.conv1.weight'; not a Wan 2.1 VAE in the official layout")
    base_dim = int(sd["encoder.conv1.weight"].shape[0])
    z_dim = int(sd["conv2.weight"].shape[0])
    vae = AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim, latents_mean=list(LATENT_MEAN), latents_std=list(LATENT_STD))
    converted = convert_wan_vae_to_diffusers(sd)
    missing, unexpected = vae.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{path}: VAE keys do not match (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    vae = vae.to(device=device) if dtype == torch.float32 else vae.to(device=device, dtype=dtype)
    return vae.eval()


def set_tiling(vae, on: bool) -> None:
    """diffusers' spatial tiling of the Wan VAE (tiles of 256 px with 64 px of overlap, blended), for encoding and
    decoding: at 768x768 and 81 frames the decode peaks at about 1.6 GB instead of 6.5 (``bench/bench_vram_v3.py``);
    the frames differ a little where the tiles meet. Off is the official whole-frame pass. ComfyUI's own VAE (the
    nodes) tiles by itself when a decode does not fit."""
    if hasattr(vae, "enable_tiling"):
        vae.enable_tiling() if on else vae.disable_tiling()


def _stats(vae, like: torch.Tensor):
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
    return mean.to(like.device, like.dtype), inv_std.to(like.device, like.dtype)


def normalise(vae, mu: torch.Tensor) -> torch.Tensor:
    mean, inv_std = _stats(vae, mu)
    return (mu - mean) * inv_std


def denormalise(vae, z: torch.Tensor) -> torch.Tensor:
    mean, inv_std = _stats(vae, z)
    return z / inv_std + mean


class PixelVAE:
    """A VAE with ComfyUI's interface (``encode``: (F, H, W, 3) in [0, 1] -> raw latents (1, 16, T, h, w);
    ``decode``: raw latents -> (1, F, H, W, 3) in [0, 1]; ComfyUI's own Wan VAE, or a stand-in) seen through the
    official normalisation ``(raw - mean) / std`` (= ComfyUI's ``latent_formats.Wan21.process_in``).

    ``check`` (ComfyUI's interrupt test, from the nodes) runs before each latent frame's pass of the VAE's encoder and
    decoder (:mod:`echomimic_lib.models.cancel_hooks`): Cancel stops a long decode between latent frames, not after it.
    """

    def __init__(self, vae, mean=LATENT_MEAN, std=LATENT_STD, check=None):
        self.vae, self.check = vae, check
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    def _checked(self, name: str):
        return checked_between(self.check, [part(self.vae, name)], owner=network(self.vae))

    def encode_normalised(self, video: torch.Tensor) -> torch.Tensor:
        with self._checked("encoder"):
            raw = self.vae.encode(((video[0].permute(1, 2, 3, 0) + 1) / 2).float()).float()
        return (raw - self.mean.to(raw.device)) / self.std.to(raw.device)

    def decode_normalised(self, latents: torch.Tensor) -> torch.Tensor:
        lat = latents.float()
        with self._checked("decoder"):
            pixels = self.vae.decode(lat * self.std.to(lat.device) + self.mean.to(lat.device))
        return pixels.reshape(1, -1, *pixels.shape[-3:]).permute(0, 4, 1, 2, 3).float() * 2 - 1


class DiffusersPixelVAE:
    """diffusers ``AutoencoderKLWan`` with ComfyUI's VAE interface (raw latents, pixels in [0, 1])."""

    def __init__(self, vae):
        self.vae = vae

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        video = pixels[..., :3].permute(3, 0, 1, 2)[None].to(p.device, p.dtype) * 2 - 1
        return self.vae.encode(video).latent_dist.mode()

    @torch.no_grad()
    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        video = self.vae.decode(raw.to(p.device, p.dtype)).sample.clamp(-1, 1)
        return ((video + 1) / 2).permute(0, 2, 3, 4, 1)


@torch.no_grad()
def encode_mode(vae, video: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> normalised posterior mode (B, 16, T, H/8, W/8)."""
    if hasattr(vae, "encode_normalised"):
        return vae.encode_normalised(video)
    p = next(vae.parameters())
    return normalise(vae, vae.encode(video.to(p.device, p.dtype)).latent_dist.mode())


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> pixels in [-1, 1] (B, 3, F, H, W)."""
    if hasattr(vae, "decode_normalised"):
        return vae.decode_normalised(latents).clamp(-1, 1)
    p = next(vae.parameters())
    return vae.decode(denormalise(vae, latents.to(p.device, p.dtype))).sample.clamp(-1, 1)
