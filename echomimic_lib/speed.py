"""The speed options of a V1/V2 generation (and ``compile`` of a V3 one): checked before any weight loads,
applied after loading.

- ``compile``: regional ``torch.compile`` of the denoiser (:mod:`echomimic_lib.models.unet.compile`): every
  ResNet block, spatial transformer and motion module compiled on its own. The first denoiser call per
  batch shape compiles (about a minute on a GPU, several minutes on a CPU); every later call of that shape
  is faster (about 20-25 % per call on an H200). The output differs from the eager one by float rounding.
  EchoMimicV3 flash-pro takes ``compile`` only (:func:`compile_transformer`: each DiT block compiled on its
  own, :mod:`echomimic_lib.models.wan.compile`); the same checks apply (``cuda_graphs`` and ``low_vram`` are
  no V3 options, so only the CPU warning can come up).
- ``cuda_graphs``: the sampler records the denoiser call once per generation and replays it
  (``SampleSettings.cuda_graphs``, :mod:`echomimic_lib.models.unet.graphs`): no per-kernel launch overhead.
  Needs a CUDA GPU.
- ``deep_cache`` / ``deep_cache_branch`` (opt-in; unlike the two above it changes the output): DeepCache
  (:mod:`echomimic_lib.pipeline.deep_cache`): a full denoiser pass every ``deep_cache`` steps, the steps between
  reuse its deep features and run only the shallow layers of one branch (0, the shallowest, is the fastest).
  :func:`check_deep_cache` refuses an interval outside 0..10, a branch the denoiser does not have, and a branch
  given without an interval of 2 or more (it would be ignored). V1/V2 only.

What goes with what:

- fp8 weights and compile: yes. The per-layer upcast of :mod:`echomimic_lib.memory.fp8` is part of each
  layer's ``forward``, so it is traced into the block's graph (one graph per block kind, no graph break;
  checked on the CPU with the ``aot_eager`` backend in ``tests/test_speed_options.py``). The same for the V3
  transformer's fp8 blocks, with ``inductor`` too (the eager fp8 output up to 5e-7 on the tiny model;
  ``tests/test_sampler_image_cancel.py``).
- low-VRAM streaming and compile: no. The streamer's forward hooks sit on the very blocks that are compiled
  (:func:`echomimic_lib.memory.streaming.stream_units`); Dynamo traces into them, meets their slot
  bookkeeping and recompiles for every block until its recompile limit (measured on the tiny UNet: 147
  graphs instead of 19, and the run many times slower than eager).
- low-VRAM streaming and CUDA graphs: no. A recorded graph replays fixed weight addresses, and streaming
  copies each block's weights into one of two shared buffers while it runs.
- compile and CUDA graphs together: yes (the compiled blocks are recorded like eager ones).

The messages name the option as the front end shows it (:data:`CLI` for ``echomimic``, the nodes pass
their own :class:`OptionNames`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import EchoMimicError, as_whole

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptionNames:
    """How a front end names the options in a message, and how its user picks a CUDA device."""

    compile: str
    cuda_graphs: str
    low_vram: str
    on_cuda: str  # the fix when cuda_graphs meets another device
    deep_cache: str = "--deep-cache"
    deep_cache_branch: str = "--deep-cache-branch"


CLI = OptionNames("--compile", "--cuda-graphs", "--low-vram",
                  "run on an NVIDIA GPU (--device auto or cuda, with a CUDA build of PyTorch)")


def check_speed_options(device, *, compile: bool = False, cuda_graphs: bool = False, low_vram: bool = False,
                        names: OptionNames = CLI) -> None:
    """Refuse a combination that cannot work, naming the problem and the fix (no weights needed)."""
    import torch  # (here, not at import: the command line refuses bad input before torch loads)

    device = torch.device(device)
    if cuda_graphs and device.type != "cuda":
        raise EchoMimicError(f"{names.cuda_graphs} records the denoiser call as a CUDA graph and needs a CUDA GPU, but "
                             f"this run is on '{device}'; drop {names.cuda_graphs}, or {names.on_cuda}.")
    if cuda_graphs and low_vram:
        raise EchoMimicError(f"{names.cuda_graphs} cannot go with {names.low_vram}: a recorded graph replays fixed weight "
                             f"addresses, and {names.low_vram} streams the denoiser's weights block by block through "
                             f"shared buffers. Drop one of them ({names.low_vram} for a small GPU, {names.cuda_graphs} for "
                             "speed).")
    if compile and low_vram:
        raise EchoMimicError(f"{names.compile} cannot go with {names.low_vram}: the streaming hooks sit on the blocks that "
                             "are compiled, and torch.compile would recompile for every block (slower than without "
                             f"it). Drop one of them ({names.low_vram} for a small GPU, {names.compile} for speed).")
    if compile and device.type != "cuda":
        log.warning("%s on '%s': the first denoiser call per batch shape compiles the blocks first, which takes "
                    "several minutes here (about a minute on a GPU); it pays off only on long renders. Drop %s for a "
                    "quick run.", names.compile, device, names.compile)


def _whole_number(value, name: str) -> int:
    text = isinstance(value, str)  # a batch cell
    try:
        number = as_whole(float(value) if text else value)
    except ValueError:
        number = None
    if number is None:
        raise EchoMimicError(f"{name} {value!r}: give a whole number.")
    return number


def check_deep_cache(interval, branch, cfg=None, names: OptionNames = CLI) -> tuple[int, int]:
    """Refuse DeepCache settings that cannot work or would be ignored (no weights needed); returns (interval,
    branch) as whole numbers. ``cfg``: the denoiser's :class:`~echomimic_lib.config.EchoConfig` when it is known,
    else SD1.5's (every released V1/V2 set)."""
    from .config import SD15  # (light imports: the command line checks this before torch loads)
    from .modes import MAX_DEEP_CACHE

    interval = _whole_number(interval, names.deep_cache)
    branch = _whole_number(branch, names.deep_cache_branch)
    if not 0 <= interval <= MAX_DEEP_CACHE:
        raise EchoMimicError(f"{names.deep_cache} {interval}: the DeepCache interval is 0 (off) to {MAX_DEEP_CACHE}, a "
                             "full denoiser pass every N steps with the steps between reusing its deep features; 2 or 3 "
                             f"is typical. Use {names.deep_cache} 2 or 3, or 0 to switch it off.")
    n = (cfg or SD15).up_layers  # DeepCache's branches (pipeline.deep_cache.branch_count)
    if not 0 <= branch < n:
        raise EchoMimicError(f"{names.deep_cache_branch} {branch}: this denoiser has DeepCache branches 0 to {n - 1} (0, "
                             "the shallowest, is the fastest; a larger branch recomputes more and stays closer to the "
                             f"output without DeepCache). Use {names.deep_cache_branch} 0 to {n - 1}.")
    if branch and interval <= 1:
        raise EchoMimicError(f"{names.deep_cache_branch} has no effect without {names.deep_cache} N (N >= 2): add "
                             f"{names.deep_cache} 2 or 3, or set {names.deep_cache_branch} back to 0.")
    return interval, branch


def compile_denoiser(models) -> int:
    """Regional compile of ``models.denoiser`` (after LoRA merges and fp8 storage); returns the number of
    blocks compiled (0 when it already was). Compiling is lazy: the time is spent in the first call."""
    from .models.unet.compile import compile_regions

    n = compile_regions(models.denoiser)
    if n:
        log.info("compile: %d denoiser blocks will be compiled by torch.compile on their first call (once per batch "
                 "shape)", n)
    return n


def compile_transformer(model) -> int:
    """Regional compile of an EchoMimicV3 flash-pro transformer (each DiT block; after any weight merge such as a
    LoRA, see :mod:`echomimic_lib.models.wan.compile`); returns the number of blocks compiled (0 when it already
    was). Lazy as :func:`compile_denoiser`: the first call per input shape compiles."""
    from .models.wan.compile import compile_blocks

    n = compile_blocks(model)
    if n:
        log.info("compile: %d transformer blocks will be compiled by torch.compile on their first call (the first "
                 "shape static, the first other length or size once more with symbolic sizes)", n)
    return n
