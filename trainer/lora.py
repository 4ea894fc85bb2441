"""LoRA fine-tuning with peft: adapters on a released (or exported) EchoMimic model, everything else frozen.

- :func:`inject`: ``peft.inject_adapter_in_model`` with a ``peft.LoraConfig`` whose ``target_modules``
  are the exact module names chosen here: the ``nn.Linear`` layers whose name ends in one of
  ``lora.targets`` (default the attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0``) inside
  the networks of ``lora.networks`` (``denoiser`` = the denoising UNet without its motion modules,
  ``reference``, ``motion``). Reference layers that cannot influence the bank are skipped (they would get
  no gradient). The base weights are frozen and, in mixed precision, kept in the frozen dtype.
- Which adapters train in a phase follows the phase's ``train`` groups (:mod:`trainer.net`): an adapter
  belongs to the group of the layer it adapts (attn2 adapters are ``audio`` too, frozen while muted).
- Checkpoints hold only the adapter tensors (accelerate save/load hooks): a few MB instead of the whole
  model; resuming rebuilds the base from ``model.echomimic_path`` and checks its fingerprint.
- Export: :func:`export_adapter` writes one ``.safetensors`` with per-layer ``alpha`` tensors and its config in
  the metadata (:mod:`echomimic_lib.lora.files`), :func:`export_peft` also peft's ``save_pretrained`` layout
  (``export --format peft``); :func:`trainer.export.merged_state` merges the adapters into the base with peft
  (for ``export --merge``, the official file set). The config checks of a LoRA run are in :mod:`trainer.config`.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError
from .net import TrainingNet, is_lora_param, unused_reference_parameters
from .resume_match import damaged_record

if TYPE_CHECKING:
    from .config import TrainConfig

log = logging.getLogger(__name__)
ADAPTER = "default"  # peft adapter name (stripped from exported keys)


def _network(name: str) -> str:
    return "motion" if "motion_modules." in name else name.split(".", 1)[0]


def target_modules(net: TrainingNet, targets: list[str], networks: list[str]) -> list[str]:
    """Full module names (in ``net``) of the linear layers to adapt."""
    from torch import nn

    unused = {n.rsplit(".", 1)[0] for n in unused_reference_parameters(net.reference)}
    names = []
    for name, mod in net.named_modules():
        if not isinstance(mod, nn.Linear) or _network(name) not in networks:
            continue
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if name.startswith("reference.") and name[len("reference."):] in unused:
            continue
        names.append(name)
    if not names:
        raise ConfigError(f"lora.targets {targets} match no linear layer of the networks {networks} "
                          "(attention projections are to_q, to_k, to_v, to_out.0; feed-forward layers e.g. ff.net.2)")
    return names


def _base_layers(net: TrainingNet, names: list[str]) -> dict:
    mods = dict(net.named_modules())
    return {n: getattr(mods[n], "base_layer", mods[n]) for n in names}


def check_rank(model, names: list[str], rank: int) -> None:
    """``lora.rank`` above the smaller dimension of a target layer is refused: the update ``B @ A`` of an in x out layer
    has rank at most min(in, out), so the rest is memory spent on nothing -- most likely a typo (512 for 32)."""
    mods = dict(model.named_modules())
    sizes = {n: (getattr(mods[n], "base_layer", mods[n]).in_features, getattr(mods[n], "base_layer", mods[n]).out_features)
             for n in names}
    over = [n for n, (i, o) in sizes.items() if rank > min(i, o)]
    if not over:
        return
    name = min(over, key=lambda n: min(sizes[n]))
    (i, o), useful = sizes[name], min(min(s) for s in sizes.values())
    raise ConfigError(f"lora.rank {rank} is above the size of {name} ({i} in x {o} out; {len(over)} of the {len(names)} target "
                      f"layers): an adapter's update has rank at most min(in, out), so the rest is memory spent on nothing. "
                      f"Use lora.rank: {useful} or lower (the largest rank that helps every target layer), or leave the "
                      "narrow layers out of lora.targets / lora.networks")


def add_adapters(model, names: list[str], rank: int, alpha: float, dropout: float, seed: int, use_rslora: bool = False) -> int:
    """peft LoRA adapters on the modules ``names`` (seeded: fresh A, zero B, so the model starts equal to its base),
    every other parameter frozen (V1/V2 here, V3 in :mod:`trainer.v3.lora`). Returns the adapter parameter count.
    A rank above a target layer's size is refused first (:func:`check_rank`)."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    check_rank(model, names, rank)
    pcfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none", use_rslora=use_rslora,
                      init_lora_weights=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 11)
        inject_adapter_in_model(pcfg, model, adapter_name=ADAPTER)
    for n, p in model.named_parameters():
        p.requires_grad_(is_lora_param(n))
    n_params = sum(p.numel() for n, p in model.named_parameters() if is_lora_param(n))
    log.info("LoRA: %d layers, rank %d, alpha %g, %.2f M adapter parameters", len(names), rank, alpha, n_params / 1e6)
    return n_params


def inject(net: TrainingNet, cfg: TrainConfig) -> dict:
    """Add the adapters (:func:`add_adapters`) and freeze the rest.
    Returns the run's LoRA description (stored in every checkpoint's meta and in the exported file)."""
    from echomimic_lib.lora import fingerprint

    lc = cfg.lora
    names = target_modules(net, lc.targets, lc.networks)
    check_rank(net, names, lc.rank)  # (before the fingerprint reads the weights)
    base_fp = fingerprint(_base_layers(net, names))
    n_params = add_adapters(net, names, lc.rank, lc.alpha, lc.dropout, cfg.seed, lc.use_rslora)
    desc = {"rank": lc.rank, "alpha": lc.alpha, "use_rslora": lc.use_rslora, "targets": list(lc.targets), "networks": list(lc.networks),
            "layers": len(names), "parameters": n_params,
            "base": {"path": str(cfg.model.echomimic_path), "weights": cfg.model.weights, "variant": cfg.model.variant,
                     "fingerprint": base_fp}}
    net.lora = desc
    return desc


def cast_base_(net, dtype) -> None:
    """Keep the frozen base weights in ``dtype`` (e.g. bf16: half the memory); adapters stay float32."""
    import torch

    if dtype == torch.float32:
        return
    for n, p in net.named_parameters():
        if not is_lora_param(n) and p.is_floating_point():
            p.data = p.data.to(dtype)


def adapter_tensors(state: dict) -> dict:
    """Adapter tensors of a (checkpoint) state dict, in the exported naming (no ``module.``, no adapter name)."""
    out = {}
    for k, v in state.items():
        if is_lora_param(k):
            k = k[len("module."):] if k.startswith("module.") else k
            out[k.replace(f".lora_A.{ADAPTER}.", ".lora_A.").replace(f".lora_B.{ADAPTER}.", ".lora_B.")] = v
    return out


# ------------------------------------------------------------------------------------------- checkpoints
def register_checkpoint_hooks(acc, net: TrainingNet) -> None:
    """Checkpoints store only the adapter tensors of ``net``; loading restores them strictly and refuses a
    checkpoint trained on other base weights."""

    def save_hook(models, weights, output_dir):
        for i, m in enumerate(models):
            if i < len(weights) and acc.unwrap_model(m) is net:
                weights[i] = {k: v for k, v in weights[i].items() if is_lora_param(k)}

    def load_hook(models, input_dir):
        for m in list(models):
            if acc.unwrap_model(m) is net:
                load_adapter_checkpoint(net, Path(input_dir))
                models.remove(m)

    acc.register_save_state_pre_hook(save_hook)
    acc.register_load_state_pre_hook(load_hook)


def load_adapter_checkpoint(net: TrainingNet, ckpt: Path) -> None:
    from safetensors.torch import load_file

    from echomimic_lib.lora import fingerprints_match

    from .checkpoint import read_meta

    saved = read_meta(ckpt).get("lora") if (ckpt / "meta.json").is_file() else None
    if saved and not fingerprints_match(saved["base"]["fingerprint"], net.lora["base"]["fingerprint"]):
        key = net.lora["base"].get("config_key", "model.echomimic_path")
        raise ConfigError(f"{ckpt}: this checkpoint's adapters were trained on other base weights ({saved['base']['path']}) than "
                          f"{key} ({net.lora['base']['path']}): resume with the same base model")
    state = load_file(str(ckpt / "model.safetensors"))
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    own = {k for k in net.state_dict() if is_lora_param(k)}
    if set(state) != own:
        missing, extra = sorted(own - set(state)), sorted(set(state) - own)
        raise ConfigError(f"{ckpt}: the adapter tensors do not match this run's LoRA config (lora.rank/targets/networks changed?): "
                          f"{len(missing)} missing (e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]})")
    result = net.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys


# ------------------------------------------------------------------------------------------------ export
def lora_info(meta: dict, ckpt: Path, ema: bool):
    from echomimic_lib.lora import LoraInfo

    d = meta["lora"]
    try:  # (an edited or damaged record: a text, null or 0 where a number belongs was a traceback)
        info = LoraInfo(weights=meta["weights"], variant=d["base"]["variant"], rank=int(d["rank"]), alpha=float(d["alpha"]),
                        use_rslora=bool(d["use_rslora"]), targets=list(d["targets"]), networks=list(d["networks"]),
                        base=d["base"], training={"checkpoint": str(ckpt), "step": meta["step"], "ema": ema})
        ok = info.rank >= 1 and math.isfinite(info.alpha) and info.alpha > 0
    except (KeyError, TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise damaged_record(ckpt, "its lora settings are not as fit writes them: a rank of 1 or more, a positive alpha, "
                             "targets, networks, base")
    return info


def adapter_path(ckpt: Path, dest: Path, meta: dict, ema: bool) -> Path:
    """Where :func:`export_adapter` writes: ``dest`` itself when it ends in .safetensors, else a file named after the run."""
    from .export_paths import lora_file_target

    return lora_file_target(dest, f"{ckpt.parent.parent.name}-step{meta['step']}{'-ema' if ema else ''}.safetensors")


def export_adapter(ckpt: Path, dest: Path, meta: dict, state: dict, ema: bool, dtype=None) -> Path:
    """One ``.safetensors``: ``dest`` itself when it ends in .safetensors, else ``dest/<run>-step<N>.safetensors``."""
    import torch

    from echomimic_lib.lora import write_lora

    dtype = dtype or torch.float32
    tensors = {k: v.to(dtype) for k, v in adapter_tensors(state).items()}
    if not tensors:
        raise ConfigError(f"{ckpt}: no adapter tensors in this checkpoint")
    path = write_lora(adapter_path(ckpt, dest, meta, ema), tensors, lora_info(meta, ckpt, ema))
    log.info("LoRA adapter (%d layers) written to %s", len(tensors) // 2, path)  # lora_A + lora_B per layer (+ alpha)
    return path


def peft_dir(adapter_file: Path) -> Path:
    """Where ``--format peft`` writes peft's layout: ``<adapter file stem>-peft/<network>/``."""
    adapter_file = Path(adapter_file)
    return adapter_file.with_name(f"{adapter_file.stem}-peft")


def export_peft(adapter_file: Path, force: bool = False) -> list[Path]:
    """peft's ``save_pretrained`` layout of an exported adapter file, one folder per network."""
    from echomimic_lib.lora import read_lora, write_peft

    folders = write_peft(read_lora(adapter_file), peft_dir(adapter_file), force=force)
    log.info("peft layout (%s) written to %s", ", ".join(f.name for f in folders), peft_dir(adapter_file))
    return folders
