"""EchoMimicV3 flash-pro transformer: the Wan 2.1 image-to-video DiT with audio attention.

Parameter names are the official ones (``blocks.N.cross_attn.k_audio.weight``, ``img_emb.proj.0.weight``,
``audio_injection.proj1.weight`` ...), so the released files load without renaming (see :mod:`.loader`).
Numerics follow the official code: float64 sinusoidal timestep embedding, RoPE tables computed in float64
(split over t/h/w as ``d - 4*(d//6)``, ``2*(d//6)``, ``2*(d//6)``), LayerNorm/RMSNorm computed in float32,
tanh-GELU FFN, exact-GELU CLIP projection, SDPA attention without masks.

Official behaviour kept on purpose (documented quirks):

* ``cross_attn.q_audio`` exists and is loaded, but the official forward overwrites its result: the audio
  query is the **text** query ``norm_q(q(norm3(x)))`` split per latent frame. It is never evaluated here.
* Audio attention is per latent frame (the frame's tokens attend only to that frame's ``context_tokens``
  audio tokens), has no mask and a fixed weight of 1.0 (``audio_scale`` is ignored); text, image and
  audio attention outputs are summed and go through the one shared output projection ``o``.
* The prompt embedding is zero-padded to ``text_len`` and the padding **is** attended (no lengths).
* The CLIP tokens are the first ``clip_tokens`` (257) entries of the cross-attention context.
* The head is modulated by the time embedding ``e`` (not the 6-way projection ``e0``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .audio_proj import AudioProjector
from .config import WanV3Config


class RMSNorm(nn.Module):
    """Official WanRMSNorm: normalise in float32, cast back, then scale."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def _layer_norm(x, norm: nn.LayerNorm):
    """Official WanLayerNorm: computed in float32 (affine weights too), cast back to x's dtype."""
    w = None if norm.weight is None else norm.weight.to(x.device, torch.float32)  # may sit in RAM (ComfyUI lowvram)
    b = None if norm.bias is None else norm.bias.to(x.device, torch.float32)
    return F.layer_norm(x.float(), norm.normalized_shape, w, b, norm.eps).type_as(x)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[cos, sin] timestep embedding computed in float64 (official), returned as float32."""
    half = dim // 2
    pos = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    arg = torch.outer(pos, freqs)
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1).float()


ROPE_POSITIONS = 1024  # rows of the position table per axis (the official ``freqs``): the most patches a side


def rope_angles(head_dim: int, max_len: int = ROPE_POSITIONS, theta: float = 10000.0) -> list[torch.Tensor]:
    """Float64 angle tables (max_len, n) for the t, h and w axes."""
    sizes = [head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)]
    pos = torch.arange(max_len, dtype=torch.float64, device="cpu")  # CPU even when built on the meta device
    return [torch.outer(pos, 1.0 / torch.pow(theta, torch.arange(0, s, 2, dtype=torch.float64, device="cpu").div(s)))
            for s in sizes]


def rope_tables(angles: list[torch.Tensor], grid: tuple[int, int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (L, 1, head_dim/2) float32 for a (f, h, w) token grid in (f, h, w) order."""
    f, h, w = grid
    if max(grid) > min(len(a) for a in angles):  # (was "shape '[1, 1, 1250, -1]' is invalid")
        raise ValueError(f"a token grid of {f}x{h}x{w} (frames x height x width patches): the position table holds at most "
                         f"{min(len(a) for a in angles)} a side; use a less elongated picture (at most "
                         f"{ROPE_POSITIONS * 16} px a side)")
    parts = [angles[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
             angles[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
             angles[2][:w].view(1, 1, w, -1).expand(f, h, w, -1)]
    ang = torch.cat(parts, dim=-1).reshape(f * h * w, 1, -1)
    return ang.cos().float().to(device), ang.sin().float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, L, H, D) with interleaved (real, imag) pairs, rotated in float32."""
    xf = x.float().unflatten(-1, (-1, 2))
    re, im = xf[..., 0], xf[..., 1]
    return torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).flatten(-2)


def _attend(q, k, v):
    """(B, Lq, H, D), (B, Lk, H, D) -> (B, Lq, H*D) via SDPA."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x, rope):
        b, s = x.shape[:2]
        q = self.norm_q(self.q(x)).view(b, s, self.heads, self.head_dim)
        k = self.norm_k(self.k(x)).view(b, s, self.heads, self.head_dim)
        v = self.v(x).view(b, s, self.heads, self.head_dim)
        q, k = apply_rope(q, *rope).to(x.dtype), apply_rope(k, *rope).to(x.dtype)
        return self.o(_attend(q, k, v))


class CrossAttentionAudio(SelfAttention):
    """Text + CLIP-image + per-latent-frame audio attention with a shared query and output projection.

    ``q_audio`` is the official dead layer: loaded, never evaluated (the official forward computes it and
    then overwrites the result with the text query)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool, eps: float, clip_tokens: int):
        super().__init__(dim, heads, qk_norm, eps)
        self.clip_tokens = clip_tokens
        self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_k_img = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.q_audio = nn.Linear(dim, dim)  # dead in the official forward; kept for the checkpoint
        self.k_audio, self.v_audio = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_k_audio = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x, context, audio):
        """x (B, L, dim); context (B, clip+text, dim); audio tokens (B, T, N, dim), L = T * tokens/frame."""
        b, n, d = x.shape[0], self.heads, self.head_dim
        img, txt = context[:, : self.clip_tokens], context[:, self.clip_tokens:]
        q = self.norm_q(self.q(x)).view(b, -1, n, d)
        out = _attend(q, self.norm_k(self.k(txt)).view(b, -1, n, d), self.v(txt).view(b, -1, n, d))
        out = out + _attend(q, self.norm_k_img(self.k_img(img)).view(b, -1, n, d), self.v_img(img).view(b, -1, n, d))
        t = audio.shape[1]
        a = audio.flatten(0, 1)  # (B*T, N, dim)
        ka = self.norm_k_audio(self.k_audio(a)).view(b * t, -1, n, d)
        va = self.v_audio(a).view(b * t, -1, n, d)
        out_a = _attend(q.reshape(b * t, -1, n, d), ka, va).reshape(b, -1, n * d)
        return self.o(out + out_a)


class Block(nn.Module):
    def __init__(self, cfg: WanV3Config):
        super().__init__()
        dim = cfg.dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttentionAudio(dim, cfg.num_heads, cfg.qk_norm, cfg.eps, cfg.clip_tokens)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x, e0, rope, context, audio):
        e = (self.modulation + e0).chunk(6, dim=1)
        y = self.self_attn((_layer_norm(x, self.norm1) * (1 + e[1]) + e[0]).to(x.dtype), rope)
        x = x + y * e[2]
        xn = _layer_norm(x, self.norm3) if isinstance(self.norm3, nn.LayerNorm) else x
        x = x + self.cross_attn(xn, context, audio)
        y = self.ffn((_layer_norm(x, self.norm2) * (1 + e[4]) + e[3]).to(x.dtype))
        return x + y * e[5]


class Head(nn.Module):
    def __init__(self, cfg: WanV3Config):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x, e):
        e = (self.modulation + e.unsqueeze(1)).chunk(2, dim=1)
        return self.head(_layer_norm(x, self.norm) * (1 + e[1]) + e[0])


class MLPProj(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(),
                                  nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x):
        return self.proj(x)


class WanV3Transformer(nn.Module):
    """The flash-pro DiT. ``forward`` returns the flow prediction (B, out_dim, T, H, W).

    ``checkpoint_blocks`` (off; the trainer's ``gradient_checkpointing``): under autograd each block's activations
    are recomputed in the backward pass instead of kept (same outputs, about a block's memory instead of 30)."""

    checkpoint_blocks = False

    def __init__(self, cfg: WanV3Config):
        super().__init__()
        if cfg.dim % cfg.num_heads or (cfg.dim // cfg.num_heads) % 2:
            raise ValueError(f"dim {cfg.dim} must split into {cfg.num_heads} heads of even width")
        if cfg.audio.output_dim != cfg.dim:
            raise ValueError(f"audio projector output {cfg.audio.output_dim} != transformer dim {cfg.dim}")
        self.cfg = cfg
        self.audio_injection = AudioProjector(cfg.audio)
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.img_emb = MLPProj(cfg.clip_dim, cfg.dim)
        self._angles = rope_angles(cfg.head_dim)  # float64 tables, not parameters (as the official ``freqs``)

    # -- pieces the sampler / TeaCache use -------------------------------------------------------
    def time_embeddings(self, t: torch.Tensor, batch: int, dtype, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(e, e0): time embedding (B, dim) and its 6-way projection (B, 6, dim), both in ``dtype``.
        The float64 sinusoid enters the MLP in the compute dtype (float32 for parity)."""
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(-1)
        sin = sinusoidal_embedding(self.cfg.freq_dim, t).to(device if device is not None else t.device, dtype)
        e = self.time_embedding(sin)
        e0 = self.time_projection(e).unflatten(1, (6, self.cfg.dim))
        return e.to(dtype), e0.to(dtype)

    def encode_context(self, text: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        """(B, L, text_dim) prompt embeddings (trimmed) + (B, 257, clip_dim) -> (B, 257 + text_len, dim)."""
        if text.shape[1] > self.cfg.text_len:
            raise ValueError(f"prompt embeddings have {text.shape[1]} tokens, more than text_len {self.cfg.text_len}")
        text = F.pad(text, (0, 0, 0, self.cfg.text_len - text.shape[1]))
        return torch.cat([self.img_emb(clip), self.text_embedding(text)], dim=1)

    def audio_tokens(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, F, 5, layers, C) per-video-frame windows -> (B, T, context_tokens, dim)."""
        return self.audio_injection.from_windows(windows, self.cfg.vae_scale)

    def forward(self, x, t, context, clip_fea, y, audio_windows=None, audio_tokens=None, cache=None, trace=None):
        """x (B, 16, T, H, W) noisy latents; t (B,) or scalar timestep (int or float, official: int64);
        context (B, L, text_dim) prompt embeddings; clip_fea (B, 257, 1280); y (B, 20, T, H, W) mask +
        reference latents; audio_windows (B, 4(T-1)+1, 5, layers, C) or precomputed ``audio_tokens``.
        ``cache``: an optional block cache (see ``pipeline.wan.teacache``); ``trace(name, tensor)``: hook."""
        dtype = x.dtype
        b = x.shape[0]
        h = self.patch_embedding(torch.cat([x, y.to(dtype)], dim=1))
        grid = tuple(h.shape[2:])
        h = h.flatten(2).transpose(1, 2)
        e, e0 = self.time_embeddings(torch.as_tensor(t, device=x.device), b, dtype, x.device)
        if audio_tokens is None:
            audio_tokens = self.audio_tokens(audio_windows.to(dtype))
        if audio_tokens.shape[1] != grid[0]:
            raise ValueError(f"audio covers {audio_tokens.shape[1]} latent frames, the latents have {grid[0]}")
        ctx = self.encode_context(context.to(dtype), clip_fea.to(dtype))
        if trace is not None:
            for name, val in (("patch_embedding", h.transpose(1, 2).unflatten(2, grid)), ("time_embedding", e),
                              ("time_projection", e0.flatten(1)), ("text_embedding", ctx[:, self.cfg.clip_tokens:]),
                              ("img_emb", ctx[:, : self.cfg.clip_tokens]), ("audio_injection", audio_tokens)):
                trace(name, val)
        rope = rope_tables(self._angles, grid, x.device)
        compute = True if cache is None else cache.begin(e0)
        if compute:
            start = h
            for i, block in enumerate(self.blocks):
                if self.checkpoint_blocks and torch.is_grad_enabled():  # training (trainer.v3): recompute in backward
                    h = checkpoint(block, h, e0, rope, ctx, audio_tokens, use_reentrant=False)
                else:
                    h = block(h, e0, rope, ctx, audio_tokens)
                if trace is not None:
                    trace(f"blocks.{i}", h)
            if cache is not None:
                cache.store(h - start)
        else:
            h = h + cache.residual.to(h.device, h.dtype)
        if cache is not None:
            cache.end_call()
        out = self.head(h, e)
        if trace is not None:
            trace("head", out)
        return self.unpatchify(out, grid)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        p = self.cfg.patch_size
        c = self.cfg.out_dim
        x = x.view(x.shape[0], *grid, *p, c)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(x.shape[0], c, *(g * s for g, s in zip(grid, p)))
