"""Regional ``torch.compile`` for any network: every module of the given region classes compiled on its own.

``nn.Module.compile`` compiles a module's call in place: parameters, buffers and state-dict keys stay as they
are (weights load and merge as before), and ``module.forward`` still runs eagerly when called directly. Regions
of one class and size run the same code, so Dynamo keeps one graph for all of them (the parameters are graph
inputs), not one per block; the network's own control flow stays eager. The families pick their regions:
:mod:`.unet.compile` (V1/V2 UNets) and :mod:`.wan.compile` (the V3 DiT).
"""
from __future__ import annotations

import torch
from torch import nn

RECOMPILE_LIMIT = 64  # graphs Dynamo keeps per compiled code object before it falls back to eager


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    """Dynamo's per-function graph limit (default 8) at least ``limit``: every region kind and size keeps its graph."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), limit))


def compile_regions(module: nn.Module, regions: tuple[type, ...], *, mode: str | None = None,
                    backend: str = "inductor", fullgraph: bool = False, dynamic: bool | None = False) -> int:
    """Compile every ``regions`` instance in ``module`` in place; returns how many were compiled (0 if already).

    ``mode`` is torch.compile's (``None``, ``"max-autotune-no-cudagraphs"``, ``"reduce-overhead"`` = CUDA
    graphs per region, for repeated shapes); ``backend="aot_eager"`` traces without generating code (a quick
    check that the regions capture); ``dynamic``: ``False`` one static graph per input shape, ``None``
    torch's automatic dynamic shapes (a size that changes is made symbolic on its first change)."""
    raise_recompile_limit()
    n = 0
    for m in module.modules():
        if isinstance(m, regions) and getattr(m, "_compiled_call_impl", None) is None:
            m.compile(mode=mode, backend=backend, fullgraph=fullgraph, dynamic=dynamic)
            n += 1
    return n


def is_compiled(module: nn.Module) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in module.modules())


def uncompile_regions(module: nn.Module) -> None:
    """Back to eager (e.g. before training or a device change)."""
    for m in module.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    torch._dynamo.reset()
