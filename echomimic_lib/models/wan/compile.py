"""Optional regional ``torch.compile`` of the EchoMimicV3 flash-pro transformer: each :class:`.transformer.Block`.

What is compiled: the 30 DiT blocks, each on its own (``nn.Module.compile``); they run the same code on the same
shapes, so Dynamo keeps one graph for all 30 (the weights are graph inputs). What stays eager: the top-level
forward (patch / time / text / CLIP / audio embeddings, RoPE tables, head, unpatchify), the TeaCache decision and
residual (:mod:`echomimic_lib.pipeline.wan.teacache`), the audio CFG combination and the long-video chunking.
Parameters and state-dict keys are unchanged, so a compiled transformer saves and loads like an eager one.

Order: compile **after** every weight change that is not an in-place copy (a LoRA merge, a dtype / storage
change): the blocks are traced as they are on their first call, and a changed module layout would retrace.

Shapes. A block sees ``x`` (batch, latent frames x tokens per frame, dim), the RoPE tables, the context and the
audio tokens (batch, latent frames, tokens, dim). Audio CFG is two batch-1 calls per step (audio, zero audio),
so CFG on or off gives the same shapes: no recompile; TeaCache only skips calls. The size and the clip length set
the token count, the length the latent-frame count, so ``dynamic=None`` (torch's automatic dynamic shapes) is the
default here: the first shape gets a static graph; the first call where one of these counts differs compiles once
more with that count symbolic (the shorter last chunk of a long clip is such a call: both counts change), and the
symbolic graph serves every later length and size. Each recompile makes two graphs (the first block's input is a
view of the patch embedding, the others are not), so single-row calls stay at 3 graphs, 5 when a size change
comes before the first length change (``tests/test_v3_compile.py`` counts them). ``dynamic=False`` gives one
static graph per shape instead, up to :data:`echomimic_lib.models.compile.RECOMPILE_LIMIT` (then Dynamo runs the
blocks eagerly). Nothing is padded: the frames are the eager ones up to float rounding.
"""
from __future__ import annotations

from torch import nn

from ..compile import compile_regions, is_compiled, uncompile_regions
from .transformer import Block

REGIONS = (Block,)


def compile_blocks(model: nn.Module, *, mode: str | None = None, backend: str = "inductor", fullgraph: bool = False,
                   dynamic: bool | None = None) -> int:
    """Compile every transformer block of ``model`` in place (lazy: the first call traces); returns how many
    were compiled (0 when they already were). Arguments as :func:`echomimic_lib.models.compile.compile_regions`."""
    return compile_regions(model, REGIONS, mode=mode, backend=backend, fullgraph=fullgraph, dynamic=dynamic)


__all__ = ["REGIONS", "compile_blocks", "is_compiled", "uncompile_regions"]
