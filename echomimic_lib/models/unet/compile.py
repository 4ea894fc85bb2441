"""Optional regional compilation of the UNets (``torch.compile`` per repeated block).

Each ResNet block, spatial transformer and motion module is compiled on its own (``nn.Module.compile``:
parameters and state-dict keys are unchanged). Blocks of one kind and size run the same code with the
same shapes, so they share one compiled graph: a few dozen graphs for the whole denoiser instead of one
huge one, which keeps compile time short; the UNet's own control flow, the context windows and the
sampler stay eager. Shapes are static (one compile per resolution / batch); the recompile limit is
raised so that every block kind and size keeps its graph. Off by default (a GPU option; on a CPU the
compile takes minutes).
"""
from __future__ import annotations

import torch
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from .motion import MotionModule
from .transformer import SpatialTransformer

REGIONS = (ResnetBlock2D, SpatialTransformer, MotionModule)
RECOMPILE_LIMIT = 64


def compile_regions(module: nn.Module, *, mode: str | None = None, backend: str = "inductor",
                    fullgraph: bool = False, dynamic: bool | None = False) -> int:
    """Compile every region block of ``module`` in place; returns how many were compiled (0 if already).

    ``mode`` is torch.compile's (``None``, ``"max-autotune-no-cudagraphs"``, ``"reduce-overhead"`` = CUDA
    graphs per region, for repeated shapes); ``backend="aot_eager"`` traces without generating code
    (a quick check that the blocks capture)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))
    n = 0
    for m in module.modules():
        if isinstance(m, REGIONS) and getattr(m, "_compiled_call_impl", None) is None:
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
