"""peft's ``save_pretrained`` layout of an adapter, one folder per network::

    <dest>/<network>/adapter_config.json        peft.LoraConfig (r, lora_alpha, use_rslora, target_modules)
    <dest>/<network>/adapter_model.safetensors  base_model.model.<module path>.lora_A.weight / .lora_B.weight

so that ``peft.PeftModel.from_pretrained(unet, "<dest>/denoiser")`` (or ``set_peft_model_state_dict``) adds the
adapter to that network built by :mod:`echomimic_lib` (or any model with the same module names). Module
names are the full paths inside the network; layers whose alpha differs from the configured one go to
``alpha_pattern``. The folders are written next to each other and appear whole (a temporary folder of a unique name,
``.<network>.XXXXXXXX.partial``, is renamed; it is removed on any failure).
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from ..errors import EchoMimicError
from ..io.file_safety import ExistingFileError, temp_folder_beside
from ..io.os_errors import writing
from .files import NETWORKS, LoraAdapter

PEFT_PREFIX = "base_model.model."


def _peft_alpha(adapter: LoraAdapter, layer: str) -> float:
    rank = adapter.info.rank
    return adapter.scale(layer) * (math.sqrt(rank) if adapter.info.use_rslora else rank)


def peft_state(adapter: LoraAdapter, network: str) -> dict:
    """The network's adapter tensors under peft's saved names."""
    out = {}
    for layer, (a, b) in adapter.layers.items():
        net, _, path = layer.partition(".")
        if net == network:
            out[f"{PEFT_PREFIX}{path}.lora_A.weight"] = a.contiguous()
            out[f"{PEFT_PREFIX}{path}.lora_B.weight"] = b.contiguous()
    return out


def write_peft(adapter: LoraAdapter, dest: str | Path, force: bool = False) -> list[Path]:
    """Write one peft adapter folder per network of ``adapter`` under ``dest``; returns the folders."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    dest = Path(dest)
    plan = []
    for network in NETWORKS:
        paths = sorted(layer.partition(".")[2] for layer in adapter.layers if layer.partition(".")[0] == network)
        if paths:
            plan.append((network, paths, dest / network))
    for _, _, final in plan:  # every folder checked before any is written
        if os.path.lexists(final) and (final.is_symlink() or not final.is_dir()):
            raise ExistingFileError(f"{final} exists and is not a folder (a file or a link); it is never replaced, not even "
                                    "with --force. Move it away or choose another destination.")
        if final.exists() and not force:
            raise EchoMimicError(f"{final} exists; remove it or pass --force to replace it.")
    written = []
    for network, paths, final in plan:
        pattern = {p: _peft_alpha(adapter, f"{network}.{p}") for p in paths}
        pattern = {p: a for p, a in pattern.items() if not math.isclose(a, adapter.info.alpha, rel_tol=1e-6)}
        cfg = LoraConfig(r=adapter.info.rank, lora_alpha=adapter.info.alpha, use_rslora=adapter.info.use_rslora, target_modules=paths,
                         alpha_pattern=pattern, lora_dropout=0.0, bias="none", init_lora_weights=True,
                         base_model_name_or_path=str(adapter.info.base.get("path") or "") or None)
        tmp = temp_folder_beside(final)  # unique: two writers of one destination never share (or delete) it
        try:
            with writing(final):  # safetensors' full disk is no OSError: the folder named, in the one form
                cfg.save_pretrained(str(tmp))
                save_file(peft_state(adapter, network), str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        written.append(final)
    return written
