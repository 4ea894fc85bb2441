"""Spatial transformer of both UNets.

Each block: ``norm1 -> attn1`` (self-attention; in the denoiser its keys/values also hold the
reference tokens of the same module path), ``norm2 -> attn2`` (audio cross-attention, denoiser
only, output x ``audio_scale``), ``norm3 -> ff`` (GEGLU). In the reference UNet ("write" role)
each block records its ``norm1`` output into the bank.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from .attention import Attention


@dataclass
class BlockContext:
    """Per-forward inputs shared by all transformer blocks of one UNet call.

    Rows are the (batch x frames) rows of the flattened video batch.
    - ``ref_kv``: module path -> (k, v) projected reference tokens, or None.
    - ``ref_rows``: bool (rows,) of rows that attend to the reference (None = all, when ref_kv given).
    - ``audio``: (rows_with_audio, L, D) tokens for the rows ``audio_start:``; rows before it get the
      zero-audio output; None = zero audio everywhere.
    - ``bank_out``: dict to record norm1 outputs into (reference role).
    """

    frames: int
    ref_kv: dict | None = None
    ref_rows: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    audio_start: int = 0
    audio_mask: torch.Tensor | None = None  # (rows,) float: multiplies the audio-attention output (training masks)
    bank_out: dict | None = field(default=None)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, audio_dim: int | None, audio_scale: float, eps: float = 1e-5):
        super().__init__()
        self.path = ""  # module path, set by the owning UNet; keys the reference bank
        self.audio_scale = audio_scale
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn1 = Attention(dim, heads)
        if audio_dim:
            self.norm2 = nn.LayerNorm(dim, eps=eps)
            self.attn2 = Attention(dim, heads, kv_dim=audio_dim)
        else:
            self.attn2 = None
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, h: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        n = self.norm1(h)
        if ctx.bank_out is not None:
            ctx.bank_out[self.path] = n
        h = self._self_attention(n, ctx) + h
        if self.attn2 is not None:
            h = self._audio_attention(self.norm2(h), ctx) * self.audio_scale + h
        return self.ff(self.norm3(h)) + h

    def _self_attention(self, n: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        kv = ctx.ref_kv.get(self.path) if ctx.ref_kv else None
        if kv is None:
            return self.attn1(n)
        rows = ctx.ref_rows
        if rows is None or bool(rows.all()):
            return self.attn1(n, extra_kv=_kv_rows(kv, ctx.frames, n.shape[0], None))
        out = torch.empty_like(n)
        with_ref = rows.nonzero().squeeze(1)
        plain = (~rows).nonzero().squeeze(1)
        out[plain] = self.attn1(n[plain])  # unconditional rows: plain self-attention only
        if with_ref.numel():
            out[with_ref] = self.attn1(n[with_ref], extra_kv=_kv_rows(kv, ctx.frames, n.shape[0], with_ref))
        return out

    def _audio_attention(self, n: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        zero = self.attn2.zero_context_output().to(n.dtype)
        if ctx.audio is None:
            out = zero.expand_as(n)
        elif ctx.audio_start == 0:
            out = self.attn2(n, ctx.audio)
        else:
            s = ctx.audio_start
            out = torch.cat([zero.expand_as(n[:s]), self.attn2(n[s:], ctx.audio)], dim=0)
        if ctx.audio_mask is not None:  # (rows,) or (rows, tokens, 1)
            mask = ctx.audio_mask.to(out.dtype)
            out = out * mask.view(-1, *([1] * (out.dim() - 1)) if mask.dim() == 1 else mask.shape)
        return out


def _kv_rows(kv, frames: int, rows: int, index):
    """Reference k/v for the given rows: one reference (batch 1) is shared by every row; a batch of
    references (training) holds one per sample and is repeated over that sample's frames."""
    k, v = kv
    if k.shape[0] == 1:
        return k, v
    if k.shape[0] * frames != rows:
        raise ValueError(f"reference batch {k.shape[0]} does not match the video batch ({rows} rows of {frames} frames)")
    k, v = k.repeat_interleave(frames, 0), v.repeat_interleave(frames, 0)
    return (k, v) if index is None else (k[index], v[index])


class SpatialTransformer(nn.Module):
    """GroupNorm -> 1x1 conv -> transformer blocks -> 1x1 conv, residual (diffusers Transformer2DModel layout)."""

    def __init__(self, channels: int, heads: int, groups: int, audio_dim: int | None, audio_scale: float):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, audio_dim, audio_scale)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        bf, c, hh, ww = x.shape
        h = self.proj_in(self.norm(x))
        h = h.permute(0, 2, 3, 1).reshape(bf, hh * ww, c)
        for block in self.transformer_blocks:
            h = block(h, ctx)
        h = h.reshape(bf, hh, ww, c).permute(0, 3, 1, 2).contiguous()
        return self.proj_out(h) + x
