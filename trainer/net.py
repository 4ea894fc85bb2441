"""The trained network: reference UNet + denoising UNet + condition encoder in one module, plus the
per-phase controls that do not touch the library's networks:

- :func:`set_trainable`: which parameters a phase trains (``reference``, ``denoiser`` = everything of the
  denoising UNet but the motion modules, ``cond_encoder``, ``motion``, ``audio`` = the audio
  cross-attention); a muted-audio phase freezes the audio attention.
- :func:`bypass_motion`: spatial phases of a model that has motion modules run without them (each motion
  module's ``forward`` is replaced on the instance by the identity; removing it restores the module).
- :class:`AudioAttentionControl`: forward hooks on every ``attn2`` (audio cross-attention) that multiply
  its output by a mask resized to that block's token grid: zeros = muted audio, lips / head masks =
  Lips / Head Partial Attention, None = global attention (hook does nothing).
"""
from __future__ import annotations

import torch
from torch import nn

from echomimic_lib.models.unet import EchoUNet
from echomimic_lib.models.unet.motion import MotionModule
from echomimic_lib.models.unet.transformer import SpatialTransformer, TransformerBlock

from .masks import resize_to_tokens, token_grid


class TrainingNet(nn.Module):
    def __init__(self, reference: EchoUNet, denoiser: EchoUNet, cond_encoder: nn.Module):
        super().__init__()
        self.reference, self.denoiser, self.cond_encoder = reference, denoiser, cond_encoder

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, ref_latents: torch.Tensor, audio: torch.Tensor,
                cond: torch.Tensor | None, keep_reference: torch.Tensor, keep_cond: torch.Tensor) -> torch.Tensor:
        """v-prediction (B, 4, F, h, w). Dropped references use plain self-attention (the CFG unconditional
        branch); dropped conditions have zero encoder features; dropped audio is passed as zeros by the caller."""
        bank, _ = self.reference.forward_reference(ref_latents, 0)
        kv = self.denoiser.prepare_reference(bank)
        feats = None
        if cond is not None:
            feats = self.cond_encoder(cond) * keep_cond.to(ref_latents.dtype).view(-1, 1, 1, 1, 1)
        pred = self.denoiser(noisy, timesteps, audio=audio, cond=feats, reference=kv, reference_mask=keep_reference)
        if not bool(keep_reference.all()):
            # keep every reference parameter in the autograd graph (zero gradient) when references are dropped,
            # so data-parallel reduction sees the same parameters on every rank and step
            anchor = sum(k.float().mean() + v.float().mean() for k, v in kv.values())
            pred = pred + 0.0 * anchor.to(pred.dtype)
        return pred


def unused_reference_parameters(reference: EchoUNet) -> list[str]:
    """Reference-UNet parameters that cannot influence the bank: everything after the last transformer
    block's ``norm1`` (its attn1 / norm3 / ff and the enclosing transformer's proj_out)."""
    blocks = [(n, m) for n, m in reference.named_modules() if isinstance(m, TransformerBlock)]
    last_name, _ = blocks[-1]
    spatial = last_name.rsplit(".transformer_blocks.", 1)[0]
    names = []
    for n, _ in reference.named_parameters():
        if n.startswith(last_name + ".") and not n.startswith(last_name + ".norm1."):
            names.append(n)
        elif n.startswith(spatial + ".proj_out."):
            names.append(n)
    assert isinstance(dict(reference.named_modules())[spatial], SpatialTransformer)
    return names


def _is_audio(name: str) -> bool:
    return ".attn2." in name or (".norm2." in name and ".transformer_blocks." in name)


def parameter_groups(net: TrainingNet) -> dict[str, list[tuple[str, nn.Parameter]]]:
    unused = set(unused_reference_parameters(net.reference))
    groups = {"reference": [], "denoiser": [], "cond_encoder": [], "motion": [], "audio": []}
    for n, p in net.reference.named_parameters():
        if n not in unused:
            groups["reference"].append(("reference." + n, p))
    for n, p in net.denoiser.named_parameters():
        if "motion_modules." in n:
            groups["motion"].append(("denoiser." + n, p))
        else:
            groups["denoiser"].append(("denoiser." + n, p))
            if _is_audio(n):
                groups["audio"].append(("denoiser." + n, p))
    groups["cond_encoder"] = [("cond_encoder." + n, p) for n, p in net.cond_encoder.named_parameters()]
    return groups


def is_lora_param(name: str) -> bool:
    """A LoRA adapter's parameter (peft's names), injected by :func:`trainer.lora.inject`."""
    return ".lora_A." in name or ".lora_B." in name


def trainable_names(net: TrainingNet, train: list[str], audio_mode: str) -> set[str]:
    groups = parameter_groups(net)
    names = {n for g in train for n, _ in groups[g]}
    if audio_mode == "muted":
        names -= {n for n, _ in groups["audio"]}
    if getattr(net, "lora", None):  # a LoRA run trains only the adapters of those groups (trainer.lora)
        names = {n for n in names if is_lora_param(n)}
    return names


def set_trainable(net: TrainingNet, train: list[str], audio_mode: str) -> list[nn.Parameter]:
    names = trainable_names(net, train, audio_mode)
    out = []
    for n, p in net.named_parameters():
        p.requires_grad_(n in names)
        if n in names:
            out.append(p)
    return out


def enable_gradient_checkpointing(unet: EchoUNet, on: bool = True) -> None:
    unet.gradient_checkpointing = on


def bypass_motion(denoiser: EchoUNet, bypass: bool) -> None:
    for m in denoiser.modules():
        if isinstance(m, MotionModule):
            if bypass:
                m.forward = _identity_motion
            elif "forward" in m.__dict__:
                del m.forward


def _identity_motion(x: torch.Tensor, frames: int) -> torch.Tensor:
    return x


class AudioAttentionControl:
    """Masks the audio cross-attention output per block (see the module docstring)."""

    def __init__(self, denoiser: EchoUNet):
        self.mask: torch.Tensor | None = None  # (rows, H, W) at image resolution
        self.latent_hw: tuple[int, int] | None = None
        self.record: dict | None = None  # debug: path -> output tensor after masking
        self.max_abs: torch.Tensor | None = None  # largest |output| of any audio attention since reset_stats()
        self._cache: dict = {}
        self.handles = []
        for path, block in denoiser.transformer_blocks().items():
            if block.attn2 is not None:
                self.handles.append(block.attn2.register_forward_hook(self._hook(path)))

    def set(self, mask: torch.Tensor | None, latent_hw: tuple[int, int] | None = None) -> None:
        self.mask, self.latent_hw, self._cache = mask, latent_hw, {}

    def _hook(self, path):
        def hook(module, args, output):
            out = output
            if self.mask is not None:
                grid = token_grid(output.shape[1], self.latent_hw)
                m = self._cache.get(grid)
                if m is None:
                    m = self._cache[grid] = resize_to_tokens(self.mask, grid).to(device=output.device, dtype=output.dtype)
                out = output * m
            peak = out.detach().abs().amax().float()
            self.max_abs = peak if self.max_abs is None else torch.maximum(self.max_abs, peak)
            if self.record is not None:
                self.record[path] = out.detach()
            return out if self.mask is not None else None

        return hook

    def reset_stats(self) -> float | None:
        """Return the largest |audio-attention output| seen since the last call, and start over."""
        v, self.max_abs = self.max_abs, None
        return None if v is None else float(v)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
