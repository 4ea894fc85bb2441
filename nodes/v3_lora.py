"""EchoMimic V3 LoRA: a community Wan2.1 1.3B LoRA (from ComfyUI's own ``models/loras``) added to an EchoMimicV3
flash-pro model through ComfyUI's patch mechanism, like core's "LoraLoaderModelOnly".

The output is a new V3 model whose transformer ModelPatcher is a clone (sharing the network) with one patch per
parameter the LoRA changes (low-rank pairs and full deltas on norms, biases, embeddings: the mapping and checks of
:mod:`echomimic_lib.lora.wan_files`); the input model is unchanged, nodes chain, and ComfyUI puts the patches in when
it loads the network and takes them out when it unloads it. Each patch rounds without bias into the weight's dtype
(:class:`~._model_manager.LoraWeightPatch`), as for the V1/V2 adapters (:mod:`.lora`).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..echomimic_lib.errors import WeightsError
from ..echomimic_lib.lora import read_wan_lora, resolve_wan_lora, shapes_of
from . import comfy_bridge as C
from . import names, paths
from .base import Node, link
from .lora import CONTAINER, node_strength  # the network's prefix in its ModelPatcher's state dict (ManagedNetwork.net)
from .v3 import V3_MODEL, V3Handle

log = logging.getLogger(__name__)


def add_wan_lora(handle: V3Handle, lora: str | Path, strength: float = 1.0) -> V3Handle:
    """A new handle with the LoRA patched in at ``strength`` (0: the input handle itself). ``lora``: a name in
    ComfyUI's loras folder, or a path (library use)."""
    strength = node_strength(strength)
    path = lora if isinstance(lora, Path) else paths.resolve_comfy_lora(lora)
    net = handle.patcher.model.net
    adapter = resolve_wan_lora(read_wan_lora(path), shapes_of(net))  # every key mapped and fitting, or an error
    if strength == 0.0:
        return handle
    params = dict(net.named_parameters())
    patches = {CONTAINER + key: C.lora_weight_patch(adapter, key, params[key].dtype) for key in adapter.keys}
    clone = handle.patcher.clone()
    added = clone.add_patches(patches, strength)
    if len(added) != len(patches):
        missing = sorted(set(patches) - set(added))
        raise WeightsError(f"LoRA '{adapter.name}': {len(missing)} parameter(s) are not weights of the managed transformer "
                           f"(e.g. {missing[0]}).")
    log.info("Wan LoRA %s (%s layout) added at strength %s (%d parameters, rank %d); ComfyUI patches it in when it loads "
             "the transformer", adapter.name, adapter.layout, strength, len(patches), adapter.rank)
    return dataclasses.replace(handle, patcher=clone)


class EchoMimicV3Lora(Node):
    OUTPUTS = ((V3_MODEL, "v3_model", "The same V3 model with the LoRA added (the input model stays without it)."),)
    DESCRIPTION = ("Adds a Wan2.1 1.3B LoRA from models/loras (ComfyUI / diffusion-pipe, lightx2v, kohya / musubi or "
                   "diffusers layout) to an EchoMimicV3 flash-pro model through ComfyUI's patch mechanism, like "
                   "'LoraLoaderModelOnly': chain several to stack LoRAs; the base weights come back whenever ComfyUI "
                   "unloads the transformer. A LoRA for another Wan size (e.g. 14B) is refused with a message.")

    @classmethod
    def inputs(cls):
        return {
            "v3_model": link(V3_MODEL, "From EchoMimic V3 Loader (or another EchoMimic V3 LoRA)."),
            "lora": (paths.wan_lora_files() or ["none"], {"tooltip": "A LoRA in models/loras trained on Wan2.1 1.3B "
                     "(image-to-video / Fun-InP, or text-to-video without its input layer); see docs/v3.md. \"none\" (the list "
                     "while the folder holds no such LoRA) passes the model on unchanged."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.05, "tooltip": "How much of the LoRA "
                         "is applied: 1 = as trained, 0 = the model unchanged."}),
        }

    @classmethod
    def IS_CHANGED(cls, lora=None, **_):
        """The file's path, size and time: a LoRA exported again under the same name runs again (ComfyUI cached the
        node's output while its inputs had not changed)."""
        return paths.file_stamp(paths.wan_lora_roots(), lora)

    @classmethod
    def VALIDATE_INPUTS(cls, lora=None):
        return names.check(cls, {"lora": "models/loras"}, lora=lora)

    def execute(self, v3_model, lora, strength):
        if lora == "none":  # "" and null are refused before (base.combo_values)
            return (v3_model,)
        return (add_wan_lora(v3_model, lora, strength),)
