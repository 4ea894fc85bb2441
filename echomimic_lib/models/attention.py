"""Multi-head attention with the diffusers parameter names (to_q/to_k/to_v/to_out.0) and a
pluggable memory-efficient backend.

Backends: ``sdpa`` (PyTorch scaled_dot_product_attention, the default) and ``xformers`` (when
installed and asked for). A naive attention would materialise the score matrix (12 GiB for one
512-px reference-attention call), so there is no "math" backend here.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("sdpa", "xformers")


def resolve_backend(name: str | None) -> str:
    """Return the backend that will actually run; falls back to sdpa with a logged reason."""
    name = (name or "sdpa").lower()
    if name in ("auto", "sdpa", "default"):
        return "sdpa"
    if name == "xformers":
        try:
            import xformers.ops  # noqa: F401
        except Exception as exc:  # pragma: no cover - xformers is CUDA-only and optional
            log.warning("attention backend 'xformers' unavailable (%s); using PyTorch SDPA instead", exc)
            return "sdpa"
        return "xformers"
    raise ValueError(f"unknown attention backend '{name}'; choose one of {', '.join(BACKENDS)}")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, backend: str = "sdpa") -> torch.Tensor:
    """Softmax attention. q: (B, Lq, H*D), k/v: (B, Lk, H*D) -> (B, Lq, H*D)."""
    b, lq, inner = q.shape
    d = inner // heads
    if backend == "xformers" and q.is_cuda:  # pragma: no cover - needs CUDA
        import xformers.ops as xops

        out = xops.memory_efficient_attention(
            q.view(b, lq, heads, d), k.view(b, -1, heads, d), v.view(b, -1, heads, d)
        )
        return out.reshape(b, lq, inner)
    qh = q.view(b, lq, heads, d).transpose(1, 2)
    kh = k.view(b, -1, heads, d).transpose(1, 2)
    vh = v.view(b, -1, heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh)
    return out.transpose(1, 2).reshape(b, lq, inner)


class Attention(nn.Module):
    """Projections of one attention layer; the math lives in :func:`attend`."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.backend = "sdpa"
        kv_dim = kv_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, extra_kv=None) -> torch.Tensor:
        """Attend from ``x`` to ``context`` (default: ``x``); ``extra_kv`` = (k, v) of shape (1 or B, L2, dim)
        already projected, appended to the keys/values (reference attention)."""
        ctx = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
        if extra_kv is not None:
            ek, ev = extra_kv
            b = x.shape[0]
            k = torch.cat([k, ek.to(k.dtype).expand(b, -1, -1)], dim=1)  # (1 or b, L2, dim) -> (b, L2, dim)
            v = torch.cat([v, ev.to(v.dtype).expand(b, -1, -1)], dim=1)
        return self.to_out[0](attend(q, k, v, self.heads, self.backend))

    def project_kv(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_k(tokens), self.to_v(tokens)

    def zero_context_output(self) -> torch.Tensor:
        """Output for an all-zero context: keys and values are exactly 0 (the projections have no bias),
        so the attention output is 0 and the layer returns its output bias."""
        return self.to_out[0].bias
