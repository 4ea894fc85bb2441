"""LoRA adapters on the EchoMimicV3 flash-pro transformer (peft), and their export as a Wan LoRA file.

- :func:`inject`: ``peft.inject_adapter_in_model`` on the ``nn.Linear`` layers of the 30 blocks whose names end in
  ``lora.targets`` (``self_attn.q`` ... ``ffn.2``; ``cross_attn.k_audio`` / ``v_audio`` are V3's audio attention).
  Fresh A, zero B: the network starts equal to the release. Everything else is frozen.
- Checkpoints keep only the adapter tensors (the V1/V2 trainer's accelerate hooks, :mod:`trainer.lora`), with a
  fingerprint of the base weights: a resume on another base model is refused.
- :func:`export_wan_lora`: one ``.safetensors`` in the layout ComfyUI and diffusion-pipe write for Wan
  (``diffusion_model.blocks.N.<layer>.lora_A.weight`` / ``lora_B.weight`` / ``.alpha``), read by
  ``echomimic animate --version v3-flash --lora``, the **EchoMimic V3 LoRA** node and :mod:`echomimic_lib.lora.wan_files`.
  Layers outside V3's audio attention also fit any Wan2.1 1.3B image-to-video network with these names.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError
from ..net import is_lora_param
from ..resume_match import damaged_record
from .config import V3TrainConfig

log = logging.getLogger(__name__)
ADAPTER = "default"
PREFIX = "diffusion_model."
FORMAT = "echomimic-v3-lora"


def target_modules(model: nn.Module, targets: list[str]) -> list[str]:
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n.startswith("blocks.") and n.split(".", 2)[2] in targets]
    if not names:
        raise ConfigError(f"lora.targets {targets} match no linear layer of the transformer's blocks")
    return names


def inject(model: nn.Module, cfg: V3TrainConfig) -> dict:
    """Add the adapters (seeded, :func:`trainer.lora.add_adapters`) and freeze the rest; returns the run's LoRA
    description (checkpoint meta, export)."""
    from echomimic_lib.lora import fingerprint

    from ..lora import add_adapters

    lc = cfg.lora
    names = target_modules(model, lc.targets)
    mods = dict(model.named_modules())
    base_fp = fingerprint({n: mods[n] for n in names})
    n_params = add_adapters(model, names, lc.rank, lc.alpha, lc.dropout, cfg.seed)
    if not lc.fp32_inputs:  # peft's switch (peft.helpers.disable_input_dtype_casting), kept for the run
        for m in model.modules():
            if hasattr(m, "cast_input_dtype_enabled"):
                m.cast_input_dtype_enabled = False
    desc = {"rank": lc.rank, "alpha": lc.alpha, "targets": list(lc.targets), "layers": len(names), "parameters": n_params,
            "fp32_inputs": lc.fp32_inputs,
            "base": {"path": str(cfg.model.path), "config_key": "model.path", "fingerprint": base_fp}}
    model.lora = desc
    return desc


def cast_base_(model: nn.Module, dtype: torch.dtype) -> None:
    """Adapters in float32 (the optimiser's precision); the frozen base stays in ``dtype``."""
    for n, p in model.named_parameters():
        if is_lora_param(n):
            p.data = p.data.float()
        elif p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def wan_lora_tensors(state: dict, alpha: float, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Adapter tensors of a state dict (peft names, ``module.`` allowed) -> the Wan LoRA file's tensors."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not is_lora_param(k):
            continue
        k = k[len("module."):] if k.startswith("module.") else k
        k = k.replace(f".lora_A.{ADAPTER}.", ".lora_A.").replace(f".lora_B.{ADAPTER}.", ".lora_B.")
        out[PREFIX + k] = v.detach().to("cpu", dtype).contiguous()
        layer = k.split(".lora_", 1)[0]
        out[f"{PREFIX}{layer}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return out


def export_path(ckpt: Path, dest: Path, step: int) -> Path:
    from ..export_paths import lora_file_target

    return lora_file_target(dest, f"{ckpt.parent.parent.name}-step{step}.safetensors")


def _check_lora_record(ckpt: Path, desc) -> None:
    """The checkpoint's LoRA rank and alpha as the file will hold them: a damaged record (a text, rank 0) is a
    ConfigError naming meta.json, an alpha whose scale no reader takes (:func:`echomimic_lib.lora.files.check_scale`) a
    WeightsError."""
    from echomimic_lib.lora.files import check_scale

    try:
        alpha, rank = float(desc["alpha"]), desc["rank"]
        ok = isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1 and math.isfinite(alpha) and alpha > 0
    except (KeyError, TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise damaged_record(ckpt, "its lora rank / alpha are not a rank of 1 or more and a positive number")
    check_scale(str(ckpt), alpha, rank, alpha / rank, "train it again with an ordinary lora.alpha (e.g. lora.alpha = "
                "lora.rank)")


def export_wan_lora(ckpt: Path, dest: Path, force: bool = False, dtype=torch.float32, verify: bool = True) -> Path:
    """Checkpoint folder (or run folder: its newest checkpoint) -> one Wan LoRA ``.safetensors`` (written whole)."""
    from safetensors.torch import load_file, save_file

    from echomimic_lib.io.file_safety import publish, refuse_existing, refuse_input_as_output, regular_target, temp_beside
    from echomimic_lib.io.os_errors import writing

    from ..checkpoint import latest_checkpoint, read_meta, refuse_in_checkpoints, refuse_missing
    from ..export import checkpoint_files
    from ..export_paths import NewFolders

    ckpt = Path(ckpt)
    refuse_missing(ckpt)
    if not (ckpt / "meta.json").is_file():
        found = latest_checkpoint(ckpt / "checkpoints") if ckpt.is_dir() else None
        if found is None:
            raise ConfigError(f"{ckpt}: neither a checkpoint folder (meta.json) nor a run folder with checkpoints/")
        ckpt = found
    meta = read_meta(ckpt)
    if meta.get("family") != "v3" or "lora" not in meta:
        raise ConfigError(f"{ckpt}: not an EchoMimicV3 LoRA checkpoint (`echomimic-train v3-fit`); V1/V2 runs export with "
                          "`echomimic-train export`")
    desc = meta["lora"]
    _check_lora_record(ckpt, desc)  # an absurd or damaged alpha: said before anything is written
    path = export_path(ckpt, dest, int(meta["step"]))
    refuse_input_as_output(path, checkpoint_files(ckpt), "DEST")  # not even with --force: the source itself
    refuse_in_checkpoints(path, "DEST")  # rotation would delete the exported file
    if os.path.lexists(path):
        if not force:
            refuse_existing([path], what="LoRA file")
        regular_target(path)  # a folder, pipe or device is never replaced; a symlink is written through (the link stays)
    tensors = wan_lora_tensors(load_file(str(ckpt / "model.safetensors")), float(desc["alpha"]), dtype)
    if not tensors:
        raise ConfigError(f"{ckpt}: no adapter tensors in this checkpoint")
    info = {"format": FORMAT, "rank": str(desc["rank"]), "alpha": str(desc["alpha"]), "targets": json.dumps(desc["targets"]),
            "base_model": str(desc["base"]["path"]), "step": str(meta["step"]), "checkpoint": str(ckpt)}
    with NewFolders(path.parent):  # export's rule: the missing folders said, and removed again on a failure
        tmp = temp_beside(path, ".partial.safetensors")  # unique (two exports at once); check_export wants the suffix
        try:
            with writing(path):  # a full disk names the destination, not the temporary file removed below
                save_file(tensors, str(tmp), metadata=info)
            if verify:
                check_export(tmp, desc)
            publish(tmp, path)  # a refused rename says "cannot write <path>" too
        finally:
            tmp.unlink(missing_ok=True)
    log.info("Wan LoRA (%d layers, rank %s) written to %s", desc["layers"], desc["rank"], path)
    return path


def check_export(path: Path, desc: dict) -> None:
    """Read the written file back as the inference does and map it onto the base set's parameters (their shapes from
    the weight files' headers; when the base files are gone, only the file's structure is checked, with a warning)."""
    from echomimic_lib.jobs.v3_plan import lora_shapes
    from echomimic_lib.lora.wan_files import read_wan_lora, resolve_wan_lora
    from echomimic_lib.models.wan.sources import resolved_files

    lora = read_wan_lora(path)
    files = resolved_files(Path(desc["base"]["path"]))
    if not ((files["base"] / "diffusion_pytorch_model.safetensors").is_file() and Path(files["flash"]).is_file()):
        log.warning("export check: the base files under %s are not there; the file's structure was checked, not its fit",
                    desc["base"]["path"])
        return
    got = resolve_wan_lora(lora, lora_shapes(Path(desc["base"]["path"])))
    if len(got.keys) != int(desc["layers"]):
        raise ConfigError(f"export check: {len(got.keys)} layers map onto the network, the run trained {desc['layers']}")
