"""Model memory: stage-by-stage placement of a model set, the low-VRAM block streaming, fp8 weight
storage, activation estimates, and the allocation tracker the VRAM bench runs on fake tensors.

Nothing here imports ComfyUI; the nodes hand their own backend (ComfyUI's model manager) to
:class:`Placement`.
"""
from . import estimate
from .fp8 import check_fp8, is_fp8, to_fp8
from .placement import STAGES, MoveBackend, Placement
from .streaming import BlockStreamer, stream_units

__all__ = ["STAGES", "BlockStreamer", "MoveBackend", "Placement", "check_fp8", "estimate", "is_fp8", "stream_units", "to_fp8"]
