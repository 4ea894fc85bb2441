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

from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from ..compile import RECOMPILE_LIMIT, is_compiled, uncompile_regions  # noqa: F401 (this module's face since V1/V2)
from ..compile import compile_regions as _compile_regions
from .motion import MotionModule
from .transformer import SpatialTransformer

REGIONS = (ResnetBlock2D, SpatialTransformer, MotionModule)


def compile_regions(module: nn.Module, *, regions: tuple[type, ...] = REGIONS, mode: str | None = None,
                    backend: str = "inductor", fullgraph: bool = False, dynamic: bool | None = False) -> int:
    """Compile every region block of ``module`` in place; returns how many were compiled (0 if already).

    ``mode`` is torch.compile's (``None``, ``"max-autotune-no-cudagraphs"``, ``"reduce-overhead"`` = CUDA
    graphs per region, for repeated shapes); ``backend="aot_eager"`` traces without generating code
    (a quick check that the blocks capture). The work is :func:`echomimic_lib.models.compile.compile_regions`."""
    return _compile_regions(module, regions, mode=mode, backend=backend, fullgraph=fullgraph, dynamic=dynamic)


__all__ = ["REGIONS", "RECOMPILE_LIMIT", "compile_regions", "is_compiled", "uncompile_regions"]
