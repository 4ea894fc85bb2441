"""AnimateDiff-v2 motion module ("Vanilla", two temporal self-attentions + FF), checkpoint names of
``mm_sd_v15_v2`` / EchoMimic ``motion_module.pth``. The only cross-frame operation of the denoiser."""
from __future__ import annotations

import math

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from ...errors import EchoMimicError
from .attention import Attention
from .token_chunks import residual_ff


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(pos * div)
    pe[0, :, 1::2] = torch.cos(pos * div)
    return pe


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, dim), persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalAttention(Attention):
    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__(dim, heads)
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B*HW, F, C)
        return super().forward(self.pos_encoder(x))


class TemporalBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalAttention(dim, heads, max_len) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn(norm(x)) + x
        return residual_ff(self.ff, self.ff_norm, x)


class TemporalTransformer(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int, groups: int = 32):
        super().__init__()
        self.max_len = max_len
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList([TemporalBlock(dim, heads, max_len)])
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:  # x: (B*F, C, H, W)
        if frames > self.max_len:
            raise EchoMimicError(
                f"a context window of {frames} frames exceeds the motion module's position table ({self.max_len}); "
                f"use context frames <= {self.max_len}."
            )
        bf, c, hh, ww = x.shape
        b = bf // frames
        # (B*F, C, H, W) -> (B*H*W, F, C) in one copy: attention runs over frames, everything else per
        # token (proj_in/out are per-token linears, so they run in this layout too).
        h = self.norm(x).view(b, frames, c, hh * ww).permute(0, 3, 1, 2).reshape(b * hh * ww, frames, c)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h)
        h = self.proj_out(h)
        # back to (B, F, C, H, W) as a view; the residual add writes the contiguous result
        h = h.view(b, hh, ww, frames, c).permute(0, 3, 4, 1, 2)
        return (x.view(b, frames, c, hh, ww) + h).reshape(bf, c, hh, ww)


class MotionModule(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int, groups: int = 32):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(dim, heads, max_len, groups)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, frames)
