"""Which network of a model set sits on the compute device during each stage of a generation.

A generation runs in stages; each needs only some networks of the set::

    audio         whisper-tiny                  (the audio features; the audio encoder node)
    vae_encode    VAE                           (the reference latents)
    reference     reference UNet                (the reference bank, once per video)
    reference_kv  denoiser, condition encoder   (the bank projected to keys/values once)
    denoise       denoiser, condition encoder   (the denoising loop)
    decode        VAE                           (latents -> frames)

:class:`Placement` is told each stage as it begins (``Sampler`` calls :meth:`Placement.enter` from its
stage functions) and asks a backend to load what the stage needs and to unload what it does not:

- :class:`MoveBackend` (library, CLI, bench): plain ``Module.to``.
- In ComfyUI the nodes pass a backend over ``comfy.model_management`` (``nodes/loader.py``), so ComfyUI
  loads, evicts and unloads the networks like its own models.

``keep_loaded``: nothing is unloaded between stages or at the end; the backend (ComfyUI) still evicts
when it needs the room. ``stream_denoiser``: the denoiser is never loaded whole; its blocks are moved
to the device one at a time while they run (:mod:`.streaming`), the low-VRAM mode.
"""
from __future__ import annotations

import logging
from typing import Protocol

import torch

from . import estimate
from .streaming import BlockStreamer

log = logging.getLogger(__name__)

STAGES: dict[str, tuple[str, ...]] = {
    "audio": ("audio_encoder",),
    "vae_encode": ("vae",),
    "reference": ("reference",),
    "reference_kv": ("denoiser", "cond_encoder"),
    "denoise": ("denoiser", "cond_encoder"),
    "decode": ("vae",),
}


class Backend(Protocol):
    def is_loaded(self, name: str) -> bool: ...

    def load(self, names: list[str], extra_bytes: int) -> None:
        """Put these networks on the compute device, leaving room for ``extra_bytes`` of activations."""

    def unload(self, names: list[str]) -> None: ...

    def reserve(self, nbytes: int) -> None:
        """Make room for ``nbytes`` that will be allocated outside the backend (streamed weights, activations)."""


def module_device(module: torch.nn.Module) -> torch.device | None:
    for t in module.parameters():
        return t.device
    return None


class MoveBackend:
    """Networks moved whole with ``Module.to``; ``reserve`` is a no-op (nothing else shares the device)."""

    def __init__(self, modules: dict, device, offload_device="cpu"):
        self.modules, self.device, self.offload_device = modules, torch.device(device), torch.device(offload_device)

    def is_loaded(self, name: str) -> bool:
        return module_device(self.modules[name]) == self.device

    def load(self, names, extra_bytes: int = 0) -> None:
        for n in names:
            self.modules[n].to(self.device)

    def unload(self, names) -> None:
        if self.offload_device == self.device:
            return
        for n in names:
            self.modules[n].to(self.offload_device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def reserve(self, nbytes: int) -> None:
        pass


class Placement:
    """Stage-by-stage placement of one model set (see the module docstring)."""

    def __init__(self, models, device, backend: Backend | None = None, *, keep_loaded: bool = False,
                 stream_denoiser: bool = False, settings=None, offload_device="cpu", streamer: BlockStreamer | None = None,
                 on_stage=None):
        self.models = models
        self.device = torch.device(device)
        self.modules = models.modules()
        self.backend = backend if backend is not None else MoveBackend(self.modules, self.device, offload_device)
        self.keep_loaded = keep_loaded
        self.settings = settings
        self.stage: str | None = None
        self.on_stage = on_stage  # called with the stage name once the previous stage's networks left (bench meters)
        self.streamer = None
        if stream_denoiser:
            self.streamer = streamer or BlockStreamer(models.denoiser, self.device, offload_device)

    @property
    def dtype(self) -> torch.dtype:
        return self.models.dtype

    def enter(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage '{stage}'; one of {', '.join(STAGES)}")
        need = [n for n in STAGES[stage] if n in self.modules]
        streamed = self.streamer is not None and "denoiser" in need
        if not self.keep_loaded:
            drop = [n for n in self.modules if n not in need and self.backend.is_loaded(n)]
            if self.streamer is not None:
                drop = [n for n in drop if n != "denoiser"]
            if drop:
                self.backend.unload(drop)
        if self.streamer is not None and not streamed:
            self.streamer.detach()
        if self.on_stage is not None:
            self.on_stage(stage)
        extra = self._stage_bytes(stage)
        load = [n for n in need if not (streamed and n == "denoiser")]
        held = [b.attn1 for b in self.models.denoiser.transformer_blocks().values()] if streamed and stage == "reference_kv" else []
        if streamed:
            extra += self.streamer.window_bytes() + self.streamer.bytes_of(held)
        if load:
            self.backend.load(load, extra)
        else:
            self.backend.reserve(extra)
        if streamed:
            self.streamer.attach()
            self.streamer.release()
            self.streamer.hold(held)  # prepare_reference calls each block's attn1 projections directly
        self.stage = stage
        log.debug("stage %s: %s on %s (+%.2f GB estimated)", stage, ", ".join(need), self.device, extra / 1e9)

    def _stage_bytes(self, stage: str) -> int:
        if stage == "decode" and self.settings is not None:
            per_frame = estimate.decode_frame_bytes(self.models.vae, self.settings.height, self.settings.width)
            return min(self._below_denoise_peak(), per_frame * max(1, int(self.settings.decode_batch)))
        return estimate.stage_bytes(stage, self.models, self.settings)

    def decode_budget(self) -> int | None:
        """Bytes the VAE decode may use: what the denoising stage used beyond the VAE's weights, so that
        decoding never sets the peak (None when the settings are unknown, and on the CPU: host memory is not what
        the budget guards, so the decode there is the one without a placement, never tiled -- a budget below one
        frame, as with small windows on small weights, tiled the decode and changed the frames)."""
        if self.settings is None or self.device.type == "cpu":
            return None
        return self._below_denoise_peak()

    def _below_denoise_peak(self) -> int:
        denoise = estimate.stage_bytes("denoise", self.models, self.settings)
        if self.streamer is not None:
            denoise += self.streamer.window_bytes()
        elif not self.keep_loaded:  # the denoiser leaves before the VAE comes
            denoise += estimate.weight_bytes(self.models.denoiser)
        return max(0, denoise - estimate.weight_bytes(self.models.vae))

    def close(self) -> None:
        """End of a run (also after a failure or Cancel): unload everything unless keep_loaded."""
        if self.streamer is not None:
            self.streamer.detach()
        if not self.keep_loaded:
            loaded = [n for n in self.modules if self.backend.is_loaded(n)]
            if loaded:
                self.backend.unload(loaded)
        self.stage = None
