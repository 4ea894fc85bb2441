"""EchoMimic LoRA: adds an adapter to a loaded model set through ComfyUI's patch mechanism, like core
ComfyUI's "LoraLoaderModelOnly".

The output is a new ECHOMIMIC_MODEL whose reference / denoiser ModelPatchers are clones (sharing the
networks) with the adapter's layers added as patches at the strength; the input model is unchanged. ComfyUI
puts the patches into the weights when it loads a network and takes them out when it unloads it, so nodes
chain (adapters stack, each with its strength) and no base weight is ever overwritten for good. Each patch
rounds its result without bias into the weight's dtype (:class:`~._model_manager.LoraWeightPatch`), so small
adapters survive bf16 / fp16 weights. The Model Loader's ``lora`` widget goes through :func:`add_lora` too.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..echomimic_lib.errors import EchoMimicError, WeightsError
from ..echomimic_lib.jobs.animate_checks import MAX_LORA_STRENGTH
from ..echomimic_lib.lora import LoraAdapter, check_strength, fingerprint, fingerprints_match, load_checked, resolve_layers
from . import comfy_bridge as C
from . import names, paths
from .base import Node, link
from .payloads import MODEL, ModelHandle

log = logging.getLogger(__name__)
CONTAINER = "net."  # the network's prefix in its ModelPatcher's state dict (ManagedNetwork.net)


def node_strength(strength, what: str = "strength") -> float:
    """A LoRA strength in the widgets' -2..2 (the command line's --lora-strength range): a linked value is not
    range-checked by ComfyUI, and 5 was applied without a word."""
    value = check_strength(strength)
    if not -MAX_LORA_STRENGTH <= value <= MAX_LORA_STRENGTH:
        raise EchoMimicError(f"{what} {value:g}: use -{MAX_LORA_STRENGTH:g}..{MAX_LORA_STRENGTH:g} (1 = as trained, 0 = the "
                             "model unchanged); a linked value is not range-checked by ComfyUI.")
    return value


def read_checked(handle: ModelHandle, lora: str | Path | LoraAdapter, strength: float) -> LoraAdapter:
    """The adapter, refused for another weight set, a bad strength or another architecture -- no weight touched."""
    node_strength(strength)
    if isinstance(lora, LoraAdapter):
        adapter = lora
    else:
        path = lora if isinstance(lora, Path) else paths.resolve_lora(lora)
        adapter = load_checked(path, handle.weights, handle.variant, strength)
    for net in {layer.partition(".")[0] for layer in adapter.layers}:
        if net not in handle.patchers:
            raise WeightsError(f"LoRA '{adapter.name}' adapts the {net} network, which this model set does not have.")
    return adapter


def add_lora(handle: ModelHandle, lora: str | Path | LoraAdapter, strength: float = 1.0) -> ModelHandle:
    """A new handle with the adapter patched in at ``strength`` (0: the input handle itself)."""
    adapter = read_checked(handle, lora, strength)
    strength = float(strength)
    if strength == 0.0:
        return handle
    networks = {"reference": handle.models.reference, "denoiser": handle.models.denoiser}
    layers = resolve_layers(adapter, networks)
    expected = adapter.info.base.get("fingerprint")
    if expected and not fingerprints_match(fingerprint(layers), expected):
        log.warning("LoRA '%s' was trained on other base weights (%s) than the loaded ones; the result may not be what it was trained for.",
                    adapter.name, adapter.info.base.get("path", "unknown"))
    patchers = dict(handle.patchers)
    for net in sorted({layer.partition(".")[0] for layer in layers}):
        patches = {f"{CONTAINER}{layer.partition('.')[2]}.weight": C.lora_weight_patch(adapter, layer, lin.weight.dtype)
                   for layer, lin in layers.items() if layer.partition(".")[0] == net}
        clone = handle.patchers[net].clone()
        added = clone.add_patches(patches, strength)
        if len(added) != len(patches):
            missing = sorted(set(patches) - set(added))
            raise WeightsError(f"LoRA '{adapter.name}': {len(missing)} layer(s) are not weights of the managed {net} network "
                               f"(e.g. {missing[0]}).")
        patchers[net] = clone
    log.info("LoRA %s added at strength %s (%d layers, rank %d); ComfyUI patches it in when it loads the networks",
             adapter.name, strength, len(layers), adapter.info.rank)
    key = handle.key + (("lora", str(adapter.path), strength),)
    return dataclasses.replace(handle, patchers=patchers, key=key)


class EchoMimicLora(Node):
    OUTPUTS = ((MODEL, "model", "The same model set with the LoRA added (the input model stays without it)."),)
    DESCRIPTION = ("Adds a LoRA adapter (from models/echomimic/loras/, written by `echomimic-train export` of a LoRA run) to an "
                   "EchoMimic model set through ComfyUI's patch mechanism, like 'LoraLoaderModelOnly': chain several to stack "
                   "adapters, each with its strength; the base weights are restored whenever ComfyUI unloads the networks.")

    @classmethod
    def inputs(cls):
        return {
            "model": link(MODEL, "An EchoMimic model set (from the Model Loader or another EchoMimic LoRA)."),
            "lora": (paths.lora_files() or ["none"], {"tooltip": "A LoRA adapter from models/echomimic/loras/; it must have been "
                     "trained for the model's version. \"none\" (the list while the folder holds no adapter) passes the "
                     "model on unchanged."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.05, "tooltip": "How much of the LoRA is "
                         "applied: 1 = as trained, 0 = the model unchanged."}),
        }

    @classmethod
    def IS_CHANGED(cls, lora=None, **_):
        """The file's path, size and time: a LoRA exported again under the same name runs again (ComfyUI cached the
        node's output while its inputs had not changed)."""
        return paths.file_stamp(paths.lora_roots(), lora)

    @classmethod
    def VALIDATE_INPUTS(cls, lora=None):
        return names.check(cls, {"lora": "models/echomimic/loras"}, lora=lora)

    def execute(self, model, lora, strength):
        if lora == "none":  # "" and null are refused before (base.combo_values)
            return (model,)
        return (add_lora(model, lora, strength),)
