"""Multi-head attention with the diffusers parameter names (to_q/to_k/to_v/to_out.0) and a
pluggable memory-efficient backend.

Backends: ``sdpa`` (PyTorch scaled_dot_product_attention with PyTorch's pick of kernel, the default),
``sdpa-flash`` / ``sdpa-cudnn`` / ``sdpa-efficient`` (the same call with that CUDA kernel first and the
memory-efficient one as the fallback: SD1.5's 40-wide heads at the first level suit some kernels better
than others, ``bench/gpu_attention.py`` times them; on the CPU they are plain ``sdpa``) and ``xformers``
(when installed and asked for). A naive attention would materialise the score matrix (12 GiB for one
512-px reference-attention call), so there is no "math" backend here.
"""
from __future__ import annotations

import contextlib
import inspect
import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from .reference_kv import join_kv

log = logging.getLogger(__name__)


def _plain_linear(m: nn.Module) -> bool:
    """A Linear that computes with its weight as stored: torch's own, or one of ComfyUI's castable layers
    (``comfy.ops``, which the ComfyUI bridge swaps in) while it is not casting. fp8 layers (which cast) and
    adapter wrappers (LoRA) are not."""
    if type(m) is nn.Linear:
        return True
    return (isinstance(m, nn.Linear) and getattr(m, "comfy_cast_weights", True) is False
            and not getattr(m, "weight_function", None) and not getattr(m, "bias_function", None))


SDPA_KERNELS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION"}
BACKENDS = ("sdpa", *SDPA_KERNELS, "xformers")


def resolve_backend(name: str | None) -> str:
    """Return the backend that will actually run; falls back to sdpa with a logged reason."""
    name = (name or "sdpa").lower()
    if name in ("auto", "sdpa", "default"):
        return "sdpa"
    if name in SDPA_KERNELS:
        _priority_supported()
        return name
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
    with sdpa_choice(backend if q.is_cuda else "sdpa"):
        out = F.scaled_dot_product_attention(qh, kh, vh)
    return out.transpose(1, 2).reshape(b, lq, inner)


def sdpa_choice(backend: str):
    """The SDPA kernels a ``sdpa-*`` backend allows, its own first and then the memory-efficient one (any head
    width, any float dtype); a no-op context for ``sdpa``. Works inside ``torch.compile`` regions."""
    kernel = SDPA_KERNELS.get(backend)
    if kernel is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [getattr(SDPBackend, kernel), SDPBackend.EFFICIENT_ATTENTION]
    if _priority_supported():  # torch >= 2.6: the list order is the priority
        return sdpa_kernel(order, set_priority=True)
    return sdpa_kernel(order[:1])  # older torch picks by its own order within the set: only the asked kernel


_PRIORITY: list[bool] = []


def _priority_supported() -> bool:
    if not _PRIORITY:  # looked up once (resolve_backend does it before any compiled call)
        from torch.nn.attention import sdpa_kernel

        _PRIORITY.append("set_priority" in inspect.signature(sdpa_kernel).parameters)
    return _PRIORITY[0]


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
        """Attend from ``x`` to ``context`` (default: ``x``). ``extra_kv`` (reference attention) is either
        (k, v) of shape (1 or B, L2, dim), already projected and appended to the keys/values, or a joiner
        ``(k, v) -> (K, V)`` that does the same into buffers kept between calls (:mod:`.reference_kv`)."""
        qkv = self.fused_qkv_weight() if context is None and not torch.is_grad_enabled() else None
        if qkv is not None:  # self-attention with fused projections: one GEMM for q, k and v
            q, k, v = F.linear(x, qkv).split(self.to_q.out_features, dim=-1)
        else:
            ctx = x if context is None else context
            q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
        if callable(extra_kv):
            k, v = extra_kv(k, v)
        elif extra_kv is not None:
            k, v = join_kv(k, v, *extra_kv)
        return self.to_out[0](attend(q, k, v, self.heads, self.backend))

    def fuse_qkv(self) -> bool:
        """Store the q, k and v weights as consecutive rows of one buffer (same Parameter objects, same
        values, no extra memory), so that self-attention projects with one GEMM; see
        :meth:`fused_qkv_weight`. Layers wrapped by adapters (LoRA) or stored in fp8 are left alone."""
        if self.fused_qkv_weight() is not None:
            return True
        lins = (self.to_q, self.to_k, self.to_v)
        if any(not _plain_linear(m) or m.bias is not None for m in lins):
            return False
        ws = [m.weight for m in lins]
        if len({(w.shape, w.dtype, w.device) for w in ws}) != 1 or ws[0].device.type == "meta":
            return False
        with torch.no_grad():
            buf = torch.cat([w.detach() for w in ws])
            n = ws[0].shape[0]
            for i, m in enumerate(lins):
                m.weight.data = buf[i * n : (i + 1) * n]
        return True

    def fused_qkv_weight(self) -> torch.Tensor | None:
        """The (3*dim, dim) q|k|v weight when the three plain Linear weights are consecutive rows of one
        storage (after :meth:`fuse_qkv`, and until something re-assigns a weight), else None."""
        lins = (self.to_q, self.to_k, self.to_v)
        if torch.compiler.is_compiling() or any(not _plain_linear(m) for m in lins) or is_fake(self.to_q.weight):
            return None
        wq, wk, wv = (m.weight for m in lins)
        size = wq.numel()
        st = wq.untyped_storage()
        if not (wq.is_contiguous() and wk.is_contiguous() and wv.is_contiguous() and wq.shape == wk.shape == wv.shape
                and wk.untyped_storage().data_ptr() == st.data_ptr() == wv.untyped_storage().data_ptr()
                and wk.storage_offset() == wq.storage_offset() + size and wv.storage_offset() == wq.storage_offset() + 2 * size
                and wq.dtype == wk.dtype == wv.dtype):
            return None
        return wq.new_empty(0).set_(st, wq.storage_offset(), (3 * wq.shape[0], wq.shape[1]), (wq.shape[1], 1))

    def project_kv(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_k(tokens), self.to_v(tokens)

    def zero_context_output(self) -> torch.Tensor:
        """Output for an all-zero context: keys and values are exactly 0 (the projections have no bias),
        so the attention output is 0 and the layer returns its output bias."""
        return self.to_out[0].bias
