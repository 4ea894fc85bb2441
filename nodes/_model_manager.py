"""Model-manager pieces of the ComfyUI bridge that do not import ComfyUI themselves.

- :class:`ManagedNetwork` and its named subclasses: the container each network is handed to
  ``ModelPatcher`` in (ComfyUI logs the class name: "Requested to load EchoMimicDenoiser").
- :func:`make_castable`: plain ``torch.nn`` layers become ComfyUI's castable layers (``comfy.ops``), so
  that ComfyUI's partial loading (``--lowvram``, ``--novram``, not enough free VRAM) can leave a layer's
  weights in RAM and cast them per call, as for core models. Numerics are unchanged: a castable layer
  runs the plain layer's forward unless ComfyUI switches casting on.
- :class:`StandInModelManager` / :class:`StandInPatcher`: the same books as ``comfy.model_management``
  (``current_loaded_models``, ``load_models_gpu``, ``free_memory``, ``unload_all_models``, the "Requested to
  load ..." log line) and the weight patching of ``comfy.model_patcher.ModelPatcher`` (clones, ``add_patches``,
  patching on load of the parameters ComfyUI's load patches, ``ON_LOAD`` callbacks, backups restored on unload,
  ComfyUI's plain rounding into bf16 / fp16) for tests and scripts outside ComfyUI.
- :class:`LoraWeightPatch`: one adapted layer as a ComfyUI weight adapter (the bridge makes it a subclass of
  ``comfy.weight_adapter.WeightAdapterBase`` inside ComfyUI).
"""
from __future__ import annotations

import logging
import uuid
import zlib
from typing import NamedTuple

import torch
from torch import nn

from ..echomimic_lib.memory.rounding import FORMATS, stochastic_round

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


class _Backup(NamedTuple):  # comfy.model_patcher's backup record
    weight: torch.Tensor
    inplace_update: bool


def _set_param(model: nn.Module, key: str, value: torch.Tensor) -> None:
    """comfy.utils.set_attr_param: the parameter object is replaced (the old one stays valid as a backup)."""
    owner, _, name = key.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, name, nn.Parameter(value, requires_grad=False))


def final_cast(value: torch.Tensor, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """comfy.float.stochastic_rounding: plain rounding into fp32 / fp16 / bf16, stochastic (seeded) into fp8."""
    if dtype in (torch.float32, torch.float16, torch.bfloat16) or dtype not in FORMATS:
        return value.to(dtype)
    return stochastic_round(value, dtype, torch.Generator(device=value.device).manual_seed(seed))


def loaded_parameter_keys(model: nn.Module) -> set[str]:
    """The parameters ComfyUI's ``ModelPatcher.load`` patches (its ``_load_list``): those of modules with no
    parameters in their sub-modules. A parameter that sits next to sub-modules with parameters (a Wan block's
    ``modulation``) moves with the model but keeps its patch out; so do buffers. (ComfyUI names a module's keys
    ``"{module}.{parameter}"``, the root's too: a parameter of the root itself is never patched either.)"""
    keys = set()
    for name, m in model.named_modules():
        own = [n for n, _ in m.named_parameters(recurse=False)]
        if all(n in own for n, _ in m.named_parameters()):
            keys.update(f"{name}.{n}" for n in own)
    return keys


class StandInCallbacksMP:
    """``comfy.patcher_extension.CallbacksMP``: the callback kind the pack uses."""
    ON_LOAD = "on_load_after"


def calculate_weight(patches: list, weight: torch.Tensor, key: str) -> torch.Tensor:
    """comfy.lora.calculate_weight for the patches the pack makes: weight adapters (objects with
    ``calculate_weight``) and ``("diff", (tensor,))`` / ``("set", (tensor,))`` tuples, in order."""
    for strength, v, strength_model, offset, function in patches:
        if offset is not None:
            raise NotImplementedError("the stand-in patcher does not model patch offsets")
        function = function or (lambda a: a)
        if strength_model != 1.0:
            weight *= strength_model
        if hasattr(v, "calculate_weight"):
            weight = v.calculate_weight(weight, key, strength, strength_model, offset, function, torch.float32, None)
            continue
        kind, data = ("diff", v) if len(v) == 1 else v
        if kind == "diff":
            if strength != 0.0:
                weight += function(strength * data[0].to(weight.device, weight.dtype))
        elif kind == "set":
            weight.copy_(data[0])
        else:
            raise ValueError(f"patch type not recognized: {kind}")
    return weight


class StandInPatcher:
    """What the pack uses of ``comfy.model_patcher.ModelPatcher``, with its semantics: :meth:`clone` shares the
    model, the patch lists are copied and the weight backups shared; :meth:`add_patches` records
    ``(strength_patch, patch, strength_model, offset, function)`` per state-dict key and renews ``patches_uuid``;
    the parameters :func:`loaded_parameter_keys` names are patched when the model is loaded (float32 math, then
    :func:`final_cast`), the replaced tensors kept in ``backup``, then the ``ON_LOAD`` callbacks run (clones copy
    them); :meth:`unpatch_model` puts back every backup, whoever patched it. The model remembers whose patches it
    holds (``current_weight_patches_uuid``)."""

    def __init__(self, model: nn.Module, load_device, offload_device, size: int = 0):
        self.model, self.load_device, self.offload_device = model, torch.device(load_device), torch.device(offload_device)
        self.size = size or _nbytes(model)
        self.patches: dict[str, list] = {}
        self.callbacks: dict[str, list] = {}
        self.backup: dict[str, _Backup] = {}
        self.patches_uuid = uuid.uuid4()
        self.parent = None
        if not hasattr(model, "current_weight_patches_uuid"):
            model.current_weight_patches_uuid = None

    def model_size(self) -> int:
        return self.size

    def clone(self) -> "StandInPatcher":
        n = StandInPatcher(self.model, self.load_device, self.offload_device, self.size)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.callbacks = {k: v[:] for k, v in self.callbacks.items()}
        n.patches_uuid, n.backup, n.parent = self.patches_uuid, self.backup, self
        return n

    def is_clone(self, other) -> bool:
        return getattr(other, "model", None) is self.model

    def add_callback(self, call_type: str, callback) -> None:
        self.callbacks.setdefault(call_type, []).append(callback)

    def model_state_dict(self) -> dict:
        return self.model.state_dict()

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        model_sd = self.model.state_dict()
        added = []
        for key, patch in patches.items():
            if key in model_sd:
                added.append(key)
                self.patches.setdefault(key, []).append((strength_patch, patch, strength_model, None, None))
        self.patches_uuid = uuid.uuid4()
        return added

    @torch.no_grad()
    def patch_weight_to_device(self, key: str, device_to=None) -> None:
        if key not in self.patches:
            return
        weight = self.model.get_parameter(key)
        if key not in self.backup:
            self.backup[key] = _Backup(weight.to(device=self.offload_device, copy=False), False)
        temp = weight.to(device_to if device_to is not None else weight.device, torch.float32, copy=True)
        out = calculate_weight(self.patches[key], temp, key)
        _set_param(self.model, key, final_cast(out, weight.dtype, zlib.crc32(key.encode())))

    def load(self, device_to) -> None:
        """What loading does to the weights (ModelPatcher.partially_load + load, a full load): another clone's
        patches are taken out, this one's put into the parameters ComfyUI's load patches, the model moves, then the
        ``ON_LOAD`` callbacks run (with ComfyUI's arguments: no low-VRAM budget, ``full_load=True``)."""
        if self.model.current_weight_patches_uuid not in (None, self.patches_uuid):
            self.unpatch_model(self.offload_device)
        if self.model.current_weight_patches_uuid is None:
            loaded = loaded_parameter_keys(self.model)
            for key in [k for k in self.patches if k in loaded]:
                self.patch_weight_to_device(key, device_to)
        self.model.to(device_to)
        self.model.current_weight_patches_uuid = self.patches_uuid
        for callback in self.callbacks.get(StandInCallbacksMP.ON_LOAD, []):
            callback(self, device_to, 0, False, True)

    @torch.no_grad()
    def unpatch_model(self, device_to=None, unpatch_weights: bool = True) -> None:
        if unpatch_weights:
            for key, bk in list(self.backup.items()):
                _set_param(self.model, key, bk.weight)
            self.backup.clear()
            self.model.current_weight_patches_uuid = None
        if device_to is not None:
            self.model.to(device_to)

    def detach(self, unpatch_all: bool = True) -> nn.Module:
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=True)
        return self.model


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
                for j in [j for j, m in enumerate(self.current_loaded_models) if m.model.is_clone(p)][::-1]:
                    self.current_loaded_models.pop(j).model.detach(unpatch_all=False)  # like ComfyUI: the next load swaps patches
                p.load(p.load_device)
                self.current_loaded_models.insert(0, _Loaded(p))
            else:  # most recently used first, like ComfyUI
                self.current_loaded_models.insert(0, self.current_loaded_models.pop(i))

    def unload(self, patchers) -> None:
        for p in patchers:
            i = self._index(p)
            if i is not None:
                self.current_loaded_models.pop(i)
                p.detach(unpatch_all=True)

    def free_memory(self, num_bytes: int, device) -> None:
        self.freed.append((int(num_bytes), str(device)))

    def unload_all_models(self) -> None:
        self.unload([m.model for m in list(self.current_loaded_models)])

    def reset(self) -> None:
        self.unload_all_models()
        self.freed.clear()
        self.requests.clear()


class LoraWeightPatch:
    """One layer of an EchoMimic adapter (or one parameter of a Wan LoRA for V3) as a ComfyUI weight adapter
    (``calculate_weight``'s signature).

    ComfyUI computes a patched weight in float32 and casts it into the stored dtype with plain rounding, which
    loses most of a small adapter in bf16; this patch returns ``weight + strength * delta`` already rounded
    without bias onto the stored dtype's values (:func:`echomimic_lib.lora.patched_weight`), so ComfyUI's cast
    is exact. Several adapters on one layer apply in turn, each onto the previous result."""

    name = "echomimic_lora"

    def __init__(self, adapter, layer: str, dtype: torch.dtype):
        self.adapter, self.layer, self.dtype = adapter, layer, dtype
        self.weights = adapter.patch_tensors(layer)  # up, down (the order of ComfyUI's LoRAAdapter), or a full delta
        self.loaded_keys: set[str] = set()

    def calculate_weight(self, weight, key, strength, strength_model, offset, function, intermediate_dtype=torch.float32,
                         original_weight=None):
        from ..echomimic_lib.lora import patched_weight, rounding_seed

        seed = rounding_seed(self.adapter.name, self.layer, float(strength))
        return patched_weight(self.adapter, self.layer, weight, float(strength), self.dtype, seed, function)
