"""LoRA adapters for a loaded EchoMimic model set: read, validate, apply with a strength, export for peft.

An adapter file is one ``.safetensors`` written by ``echomimic-train export`` of a LoRA run; its tensor names,
metadata and versions are described in :mod:`.files`. :mod:`.apply` merges an adapter into a model set (the
CLI) or computes one layer's patched weight for a patch mechanism (the ComfyUI nodes, which apply adapters
through ComfyUI's ModelPatcher); :mod:`.peft_layout` writes peft's ``save_pretrained`` layout. :mod:`.wan_files` reads community Wan2.1 LoRAs
(ComfyUI, lightx2v, kohya/musubi, diffusers layouts) for EchoMimicV3 flash-pro and maps them onto its parameters.
:mod:`.stack` checks and merges several adapters at once (``--lora`` given more than once).
"""
from .apply import (FINGERPRINT_RTOL, LoraPatch, apply_lora, fingerprint, fingerprints_match, patched_weight, prepare_lora,
                    resolve_layers, rounding_seed)
from .files import (FORMAT, FORMAT_VERSION, NETWORKS, VERSION_NAMES, LoraAdapter, LoraInfo, adapter_tensors, check_strength,
                    check_version, load_checked, read_lora, write_lora)
from .peft_layout import peft_state, write_peft
from .stack import StackDelta, apply_stack, apply_wan_stack, load_stack, merge_stack
from .wan_files import WanLora, apply_wan_lora, load_wan_lora, read_wan_lora, resolve_wan_lora, shapes_of, wan_parameters

__all__ = ["FINGERPRINT_RTOL", "FORMAT", "FORMAT_VERSION", "NETWORKS", "VERSION_NAMES", "LoraAdapter", "LoraInfo", "LoraPatch",
           "adapter_tensors", "apply_lora", "check_strength", "check_version", "fingerprint", "fingerprints_match", "load_checked",
           "patched_weight", "peft_state", "prepare_lora", "read_lora", "resolve_layers", "rounding_seed", "write_lora", "write_peft",
           "WanLora", "apply_wan_lora", "load_wan_lora", "read_wan_lora", "resolve_wan_lora", "shapes_of", "wan_parameters",
           "StackDelta", "apply_stack", "apply_wan_stack", "load_stack", "merge_stack"]
