"""Model-manager pieces of the ComfyUI bridge that do not import ComfyUI themselves.

- :class:`ManagedNetwork` and its named subclasses: the container each network is handed to
  ``ModelPatcher`` in (ComfyUI logs the class name: "Requested to load EchoMimicDenoiser").
- :func:`make_castable`: plain ``torch.nn`` layers become ComfyUI's castable layers (``comfy.ops``), so
  that ComfyUI's partial loading (``--lowvram``, ``--novram``, not enough free VRAM) can leave a layer's
  weights in RAM and cast them per call, as for core models. Numerics are unchanged: a castable layer
  runs the plain layer's forward unless ComfyUI switches casting on.
- :class:`StandInModelManager` / :class:`StandInPatcher`: the same books as ``comfy.model_management``
  (``current_loaded_models``, ``load_models_gpu``, ``free_memory``, ``unload_all_models``, the "Requested to
  load ..." log line) for tests and scripts outside ComfyUI.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

# layers whose parameters are read outside their forward (a castable layer would keep them in RAM)
KEEP_WHOLE = ("attn2.to_out.0", "embed_positions")


class ManagedNetwork(nn.Module):
    """Holds one network of a model set for ComfyUI's ModelPatcher (which sets bookkeeping attributes on
    the model it manages)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net


class EchoMimicReferenceUNet(ManagedNetwork):
    pass


class EchoMimicDenoiser(ManagedNetwork):
    pass


class EchoMimicConditionEncoder(ManagedNetwork):
    pass


class EchoMimicVAE(ManagedNetwork):
    pass


class EchoMimicWhisper(ManagedNetwork):
    pass


class EchoMimicV3Transformer(ManagedNetwork):
    pass


MANAGED_NAMES = {"reference": EchoMimicReferenceUNet, "denoiser": EchoMimicDenoiser, "cond_encoder": EchoMimicConditionEncoder,
                 "vae": EchoMimicVAE, "audio_encoder": EchoMimicWhisper, "v3_transformer": EchoMimicV3Transformer}


def make_castable(module: nn.Module, ops, keep_whole=KEEP_WHOLE) -> int:
    """Swap plain Linear / Conv / norm layers for ``ops.disable_weight_init``'s castable ones (same
    parameters and state dict). Layers that already cast their weights (fp8) and ``keep_whole`` layers stay."""
    table = {nn.Linear: "Linear", nn.Conv1d: "Conv1d", nn.Conv2d: "Conv2d", nn.Conv3d: "Conv3d", nn.GroupNorm: "GroupNorm",
             nn.LayerNorm: "LayerNorm"}
    swapped = 0
    for name, m in module.named_modules():
        kind = table.get(type(m))
        if kind is None or any(name == k or name.endswith("." + k) for k in keep_whole):
            continue
        m.__class__ = getattr(ops.disable_weight_init, kind)
        swapped += 1
    return swapped


def _nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


class StandInPatcher:
    """What the pack uses of ``comfy.model_patcher.ModelPatcher``."""

    def __init__(self, model: nn.Module, load_device, offload_device):
        self.model, self.load_device, self.offload_device = model, torch.device(load_device), torch.device(offload_device)
        self.size = _nbytes(model)

    def model_size(self) -> int:
        return self.size


class _Loaded:
    def __init__(self, patcher: StandInPatcher):
        self.model = patcher


class StandInModelManager:
    """Outside ComfyUI: ``current_loaded_models`` and the calls of ``comfy.model_management`` the pack uses.
    ``freed`` records the free_memory requests (bytes, device) and ``requests`` every load request."""

    def __init__(self):
        self.current_loaded_models: list[_Loaded] = []
        self.freed: list[tuple[int, str]] = []
        self.requests: list[tuple[list[str], int]] = []

    def _index(self, patcher) -> int | None:
        for i, m in enumerate(self.current_loaded_models):
            if m.model is patcher:
                return i
        return None

    def load_models_gpu(self, patchers, memory_required: int = 0) -> None:
        self.requests.append(([type(p.model).__name__ for p in patchers], int(memory_required)))
        for p in patchers:
            i = self._index(p)
            if i is None:
                log.info("Requested to load %s", type(p.model).__name__)
                p.model.to(p.load_device)
                self.current_loaded_models.insert(0, _Loaded(p))
            else:  # most recently used first, like ComfyUI
                self.current_loaded_models.insert(0, self.current_loaded_models.pop(i))

    def unload(self, patchers) -> None:
        for p in patchers:
            i = self._index(p)
            if i is not None:
                self.current_loaded_models.pop(i)
                p.model.to(p.offload_device)

    def free_memory(self, num_bytes: int, device) -> None:
        self.freed.append((int(num_bytes), str(device)))

    def unload_all_models(self) -> None:
        self.unload([m.model for m in list(self.current_loaded_models)])

    def reset(self) -> None:
        self.unload_all_models()
        self.freed.clear()
        self.requests.clear()
