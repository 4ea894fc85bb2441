"""VAE decode of a latent video, in chunks sized so that decoding never sets the generation's memory peak.

The chunk (frames per VAE call) follows the frame size and a byte budget: the budget the caller gives (a
:class:`~echomimic_lib.memory.Placement` gives what the denoising stage used), else the device's free
memory. When even one frame does not fit, frames are decoded in overlapping tiles (diffusers'
``AutoencoderKL.tiled_decode``; seams are blended, so the output differs slightly from the untiled
decode: it only happens when the frame would not fit otherwise).

On the CPU without a budget, where no memory limit is known, the chunk follows the frame size alone
(:data:`CPU_WORKING_SET`) and is never tiled: big batches gain nothing there (the convolutions already run at the cores'
matrix-product rate) and cost page faults on fresh allocations and memory above the weights
(``bench/bench_chunks.py`` measures it).
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch

from ..memory import estimate
from ..models.cancel_hooks import checked_between
from ..memory.host import check_frames_fit

log = logging.getLogger(__name__)
VAE_SCALE = 0.18215
CPU_WORKING_SET = 128 * 2**20  # estimated decode bytes per call on the CPU: 2 frames at 128 px, 1 from 256 px
HOST_MARGIN = 1.25  # the host-memory check's room over that estimate (measured: tests/test_sampler_host_memory.py)


def free_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device (None elsewhere: no limit known)."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def plan_chunk(vae, height: int, width: int, max_batch: int, budget: int | None) -> tuple[int, bool]:
    """(frames per call, tiled?) for frames of ``width`` x ``height`` within ``budget`` bytes."""
    max_batch = max(1, int(max_batch))
    if budget is None:
        return max_batch, False
    per_frame = estimate.decode_frame_bytes(vae, height, width)
    if per_frame > budget:
        return 1, True
    return max(1, min(max_batch, budget // per_frame)), False


def cpu_chunk(vae, height: int, width: int, max_batch: int) -> int:
    """Frames per VAE call on the CPU: as many as fit in :data:`CPU_WORKING_SET`, at least one (never tiled:
    host memory is not the limit here)."""
    per_frame = estimate.decode_frame_bytes(vae, height, width)
    return max(1, min(int(max_batch), CPU_WORKING_SET // max(per_frame, 1)))


def host_bytes(vae, frames: int, height: int, width: int, max_batch: int, device) -> int:
    """Host memory the decode holds besides the frames it fills (:func:`decode_latents` without a budget on the CPU, as
    a :class:`~echomimic_lib.memory.Placement` gives there): on the CPU one call's working set (:func:`cpu_chunk` frames
    x ``decode_frame_bytes``, with :data:`HOST_MARGIN`), the chunk's float32 copies (``/ 2``, ``+ 0.5``, ``clamp``: 3) and the latents (float32,
    4 channels at 1/8 size); on a GPU the chunk brought back and the one before it (2 x ``max_batch`` float32 frames).
    For the in-memory samplers' host-memory check (:func:`echomimic_lib.memory.host.check_frames_fit`)."""
    frame = int(height) * int(width) * 3 * 4
    if torch.device(device).type != "cpu":
        return 2 * max(1, int(max_batch)) * frame
    chunk = cpu_chunk(vae, height, width, max_batch)
    latents = int(frames) * 4 * (int(height) // 8) * (int(width) // 8) * 4
    return int(chunk * (HOST_MARGIN * estimate.decode_frame_bytes(vae, height, width) + 3 * frame)) + latents


class HostFrames:
    """ComfyUI's IMAGE batch made one way by every sampler node: one (N, H, W, 3) float32 host tensor in [0, 1],
    allocated once (after the host-memory check, when ``fix`` names the streaming alternative; ``working``: what the
    making holds besides the frames) and filled chunk by chunk: float frames in [0, 1] (the V1/V2 decode's) are
    copied in, uint8 frames (EchoMimicV3's) converted in place (``/ 255``, as :func:`nodes.payloads.to_image`).
    :meth:`release` frees its memory when the run stops with an exception (Cancel, out of memory), even while that
    exception's traceback still holds it."""

    def __init__(self, frames: int, height: int, width: int, *, fix: str | None = None, working: int = 0):
        if fix is not None:
            check_frames_fit(frames, height, width, fix, working)
        self.image, self.done = torch.empty((int(frames), int(height), int(width), 3), dtype=torch.float32), 0

    def put(self, start: int, block) -> None:
        """Frames ``start``.. from a (k, H, W, 3) block: a float tensor in [0, 1] or uint8 frames."""
        dst = self.image[start:start + len(block)]
        if len(dst) != len(block):
            raise ValueError(f"frames {start}..{start + len(block) - 1} do not fit a batch of {self.image.shape[0]}")
        if isinstance(block, np.ndarray):
            dst.copy_(torch.from_numpy(np.ascontiguousarray(block)))
            if block.dtype == np.uint8:
                dst.div_(255.0)
        else:
            dst.copy_(block)
        self.done = max(self.done, start + len(block))

    def add(self, block) -> None:
        self.put(self.done, block)

    def result(self) -> torch.Tensor:
        return self.image[:self.done]

    def release(self) -> None:
        """Free the frames' memory now (every view of them becomes empty)."""
        storage, self.done = self.image.untyped_storage(), 0
        self.image = self.image.new_empty((0, *self.image.shape[1:]))
        storage.resize_(0)


def _decode(vae, z: torch.Tensor, tiled: bool) -> torch.Tensor:
    out = vae.tiled_decode(z) if tiled else vae.decode(z)
    return out.sample


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, device, *, max_batch: int = 8, budget: int | None = None,
                   sink: Callable | None = None, check: Callable[[], None] | None = None) -> torch.Tensor | None:
    """Latents (1, 4, F, h, w) -> frames (F, H, W, 3) float32 in [0, 1] on the CPU.

    With ``sink(start, frames)`` the frames are handed over chunk by chunk instead of collected (into
    :class:`HostFrames`, allocated before the first chunk is decoded). ``check`` (ComfyUI's interrupt test, from the
    nodes) runs before the decoder's middle block and each of its up blocks (each tile's, when tiled): Cancel stops a
    long VAE call between them (:mod:`echomimic_lib.models.cancel_hooks`; the frames are the same)."""
    device = torch.device(device)
    f, h8, w8 = latents.shape[2], latents.shape[3], latents.shape[4]
    if budget is None:
        budget = free_bytes(device)
    if budget is None and device.type == "cpu":
        chunk, tiled = cpu_chunk(vae, h8 * 8, w8 * 8, max_batch), False
    else:
        chunk, tiled = plan_chunk(vae, h8 * 8, w8 * 8, max_batch, budget)
    if tiled:
        log.info("VAE decode: one %dx%d frame needs more than its %.2f GB budget (what denoising used beyond the VAE, "
                 "else the free memory); decoding in tiles", w8 * 8, h8 * 8, budget / 1e9)
    out = HostFrames(f, h8 * 8, w8 * 8) if sink is None else None
    decoder = getattr(vae, "decoder", None)
    stages = [getattr(decoder, "mid_block", None), *getattr(decoder, "up_blocks", ())]
    for s in range(0, f, chunk):
        z = latents[0, :, s : s + chunk].transpose(0, 1).to(device, vae.dtype) / VAE_SCALE
        with checked_between(check, stages):
            img = (_decode(vae, z, tiled).float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()
        del z
        (sink or out.put)(s, img)
    return None if out is None else out.result()
