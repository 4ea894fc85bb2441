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
from .token_chunks import residual_ff


@dataclass
class BlockContext:
    """Per-forward inputs shared by all transformer blocks of one UNet call.

    Rows are the (batch x frames) rows of the flattened video batch.
    - ``ref_kv``: module path -> (k, v) projected reference tokens (:class:`ReferenceKV`), or None. The
      callers of a spatial transformer resolve its blocks' entries (:meth:`refs_for`), so that nothing
      inside a transformer looks anything up by path (a compiled region then serves every block).
    - ``ref_segments``: which rows attend to the reference, as runs ``(start, stop, uses_reference)`` of
      rows, decided once per forward on the host (None = all rows, when ``ref_kv`` is given). Classifier-
      free guidance puts the unconditional rows first, so there are one or two runs: plain slices.
    - ``audio``: (rows_with_audio, L, D) tokens for the rows ``audio_start:``; rows before it get the
      zero-audio output; None = zero audio everywhere.
    - ``bank_out``: list the blocks append their norm1 outputs to, in execution order (reference role).
    """

    frames: int
    ref_kv: dict | None = None
    ref_segments: tuple[tuple[int, int, bool], ...] | None = None
    audio: torch.Tensor | None = None
    audio_start: int = 0
    audio_mask: torch.Tensor | None = None  # (rows,) float: multiplies the audio-attention output (training masks)
    bank_out: list | None = field(default=None)

    def refs_for(self, spatial: nn.Module) -> tuple | None:
        """Per transformer block of ``spatial``: its reference (k, v), a join-buffer joiner (see
        :mod:`.reference_kv`), or None (no reference)."""
        if self.ref_kv is None:
            return None
        out = []
        joiner = getattr(self.ref_kv, "joiner", None)
        for block in spatial.transformer_blocks:
            kv = self.ref_kv.get(block.path)
            join = joiner(block.path) if kv is not None and joiner is not None else None
            out.append(join if join is not None else kv)
        return tuple(out)


def row_segments(flags: list[bool], frames: int) -> tuple[tuple[int, int, bool], ...]:
    """Per-sample reference flags -> runs of rows ``(start, stop, uses_reference)`` (``frames`` rows each)."""
    runs: list[list] = []
    for i, flag in enumerate(flags):
        if runs and runs[-1][2] == flag:
            runs[-1][1] = (i + 1) * frames
        else:
            runs.append([i * frames, (i + 1) * frames, bool(flag)])
    return tuple(tuple(r) for r in runs)


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

    def forward(self, h: torch.Tensor, ctx: BlockContext, ref=None) -> torch.Tensor:
        """``ref``: this block's reference (k, v) or joiner (:meth:`BlockContext.refs_for`), or None."""
        n = self.norm1(h)
        if ctx.bank_out is not None:
            ctx.bank_out.append(n)
        h = self._self_attention(n, h, ctx, ref)
        if self.attn2 is not None:
            h = self._audio_attention(h, ctx)
        return residual_ff(self.ff, self.norm3, h)

    def _self_attention(self, n: torch.Tensor, h: torch.Tensor, ctx: BlockContext, ref) -> torch.Tensor:
        """``h + attn1(n)``; rows that use the reference also attend to its tokens, the others (CFG
        unconditional rows, dropped references) run plain self-attention. Rows are split by slicing."""
        if ref is None:
            return self.attn1(n) + h
        segments = ctx.ref_segments or ((0, n.shape[0], True),)
        if len(segments) == 1:
            return self.attn1(n, extra_kv=_kv_rows(ref, ctx.frames, 0, n.shape[0], n.shape[0])) + h
        grad = torch.is_grad_enabled()
        out = [] if grad else torch.empty_like(h)
        for s, e, with_ref in segments:
            extra = _kv_rows(ref, ctx.frames, s, e, n.shape[0]) if with_ref else None
            part = self.attn1(n[s:e], extra_kv=extra)
            if grad:
                out.append(part)
            else:
                torch.add(part, h[s:e], out=out[s:e])  # the residual, written in place: no gather/scatter
        return torch.cat(out) + h if grad else out

    def _audio_attention(self, h: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        """``h + audio_scale * attn2(norm2(h), audio)``. Rows with zero audio (before ``audio_start``, or all
        when there is no audio) get the layer's constant zero-context output instead of an attention."""
        zero = self.attn2.zero_context_output().to(h.dtype)
        s = ctx.audio_start if ctx.audio is not None else h.shape[0]
        if ctx.audio_mask is None and (s == 0 or s == h.shape[0] or not torch.is_grad_enabled()):
            if s == h.shape[0]:
                return zero * self.audio_scale + h
            if s == 0:
                return self.attn2(self.norm2(h), ctx.audio) * self.audio_scale + h
            out = torch.empty_like(h)
            torch.add(h[:s], zero * self.audio_scale, out=out[:s])
            torch.add(self.attn2(self.norm2(h[s:]), ctx.audio) * self.audio_scale, h[s:], out=out[s:])
            return out
        n = self.norm2(h)
        parts = [zero.expand_as(n[:s])] if s else []
        if s < h.shape[0]:
            parts.append(self.attn2(n[s:], ctx.audio))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if ctx.audio_mask is not None:  # (rows,) or (rows, tokens, 1)
            mask = ctx.audio_mask.to(out.dtype)
            out = out * mask.view(-1, *([1] * (out.dim() - 1)) if mask.dim() == 1 else mask.shape)
        return out * self.audio_scale + h


def _kv_rows(ref, frames: int, start: int, stop: int, rows: int):
    """Reference k/v for the rows ``start:stop``: one reference (batch 1) is shared by every row (or its
    joiner fills join buffers); a batch of references (training) holds one per sample, repeated over that
    sample's frames."""
    if callable(ref):
        return ref
    k, v = ref
    if k.shape[0] == 1:
        return k, v
    if k.shape[0] * frames != rows:
        raise ValueError(f"reference batch {k.shape[0]} does not match the video batch ({rows} rows of {frames} frames)")
    a, b = start // frames, stop // frames
    return k[a:b].repeat_interleave(frames, 0), v[a:b].repeat_interleave(frames, 0)


class SpatialTransformer(nn.Module):
    """GroupNorm -> 1x1 conv -> transformer blocks -> 1x1 conv, residual (diffusers Transformer2DModel layout)."""

    def __init__(self, channels: int, heads: int, groups: int, audio_dim: int | None, audio_scale: float):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, audio_dim, audio_scale)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, ctx: BlockContext, refs: tuple | None = None) -> torch.Tensor:
        """``refs``: :meth:`BlockContext.refs_for` of this module (resolved by the caller, outside a compiled
        region); resolved here when not given."""
        if refs is None:
            refs = ctx.refs_for(self)
        bf, c, hh, ww = x.shape
        # The normed map goes channels-last once; the 1x1 convs then run as plain GEMMs and the token view
        # (bf, h*w, c) of their output is free, both ways. The residual add writes ``x``'s layout back.
        h = self.norm(x).contiguous(memory_format=torch.channels_last)
        h = self.proj_in(h).permute(0, 2, 3, 1).reshape(bf, hh * ww, c)
        for i, block in enumerate(self.transformer_blocks):
            h = block(h, ctx, refs[i] if refs else None)
        h = h.view(bf, hh, ww, c).permute(0, 3, 1, 2)
        return x + self.proj_out(h)
