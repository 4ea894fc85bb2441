"""The feed-forward step of the transformer blocks over token chunks (CPU inference).

``ff(norm(h)) + h`` acts on each token on its own, so it can run on slices of the tokens and give the
same result. On the CPU this pays: a GEGLU feed-forward widens every token eightfold, and at the first UNet
level a 12-frame CFG window holds 6,144 tokens, so its intermediate is 63 MB. Blocks that large are fresh
``mmap`` allocations in glibc (above its 32 MB threshold): every call pays page faults and zeroing, and
the product leaves the caches before the next layer reads it. Chunks of about 16 MB stay in the heap and
in the last-level cache (``bench/bench_chunks.py`` measures it side by side, bit-identical).

Only CPU inference is chunked: GPUs have a caching allocator and want big kernels, and training keeps the
plain graph for autograd.
"""
from __future__ import annotations

import torch
from torch import nn

CHUNK_BYTES = 16 * 2**20  # bytes of one chunk's widest intermediate (GEGLU: 8 x dim per token)
MIN_TOKENS = 1024  # smaller matrix products lose more to blocking than they gain


def chunk_tokens(tokens: int, dim: int, itemsize: int) -> int:
    """Tokens per chunk for ``tokens`` tokens of width ``dim`` (``tokens`` itself when no split pays)."""
    per_token = 8 * dim * itemsize
    return min(tokens, max(MIN_TOKENS, CHUNK_BYTES // per_token))


def residual_ff(ff: nn.Module, norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``ff(norm(h)) + h``, in token chunks written into one output on the CPU without autograd."""
    if h.device.type != "cpu" or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return ff(norm(h)) + h
    dim = h.shape[-1]
    tokens = h.numel() // dim
    chunk = chunk_tokens(tokens, dim, h.element_size())
    if chunk >= tokens:
        return ff(norm(h)) + h
    flat = h.reshape(tokens, dim)
    out = torch.empty_like(flat)
    for s in range(0, tokens, chunk):
        part = flat[s : s + chunk]
        torch.add(ff(norm(part)), part, out=out[s : s + chunk])
    return out.view(h.shape)
