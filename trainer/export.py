"""``echomimic-train export``: a checkpoint -> the official EchoMimic file set, loadable unchanged by the
ComfyUI nodes and ``echomimic animate``.

Written into ``DEST`` (flat, like a release's ``pretrained_weights/``), for the run's weight set
(``v1_audio``: reference_unet, denoising_unet, motion_module, face_locator; ``v1_pose``: the same with
``_pose``; ``v2``: ... pose_encoder), each as ``.pth`` and ``.safetensors``; plus
``sd-image-variations-diffusers/unet/config.json`` and ``inference_config.json`` (the architecture),
``sd-vae-ft-mse/`` and ``audio_processor/whisper_tiny.pt`` (copied, or symlinked with ``link``).
A stage-1 model has no motion modules; its ``motion_module`` file comes from ``model.motion_init``
(AnimateDiff, released, or zero-output modules, which leave every frame as the stage-1 model makes it).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from echomimic_lib.config import EchoConfig, inference_config_dict, unet_config_dict
from echomimic_lib.io.file_safety import refuse_existing, refuse_input_as_output, temp_folder_beside, write_text_atomic
from echomimic_lib.modes import WEIGHT_SETS
from echomimic_lib.io.weights import save_state_dict

from .checkpoint import read_meta, refuse_in_checkpoints, resolve_resume
from .config import ConfigError
from .export_paths import NewFolders, check_export_folder, refuse_foreign_folder

log = logging.getLogger(__name__)
FORMATS = (".pth", ".safetensors")


def load_checkpoint_weights(ckpt: Path, ema: bool = False) -> dict:
    """The TrainingNet state dict of a checkpoint (``reference.*``, ``denoiser.*``, ``cond_encoder.*``)."""
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    files = sorted(ckpt.glob("model*.safetensors")) or sorted(ckpt.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{ckpt}: no model weights in this checkpoint")
    if files[0].suffix != ".safetensors" or ema:
        from .safe_resume import check_checkpoint

        check_checkpoint(ckpt)  # a pickle-based file that would build anything but tensors is refused, naming it
    state = load_file(str(files[0])) if files[0].suffix == ".safetensors" else torch.load(files[0], map_location="cpu", weights_only=True)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if ema:
        meta = read_meta(ckpt)
        if meta.get("ema_index") is None:
            raise ConfigError(f"{ckpt}: --ema exports the EMA weights, but this run did not keep an EMA (ema.enabled: false); "
                              "export without --ema (the trained weights), or train with ema.enabled: true")
        shadow = torch.load(ckpt / f"custom_checkpoint_{meta['ema_index']}.pkl", map_location="cpu", weights_only=True)["shadow_params"]
        names = meta["param_names"]
        if len(names) != len(shadow):
            raise ValueError(f"{ckpt}: EMA has {len(shadow)} tensors for {len(names)} parameters")
        state.update({n: s for n, s in zip(names, shadow)})
    return state


def checkpoint_files(ckpt: Path) -> dict:
    """{"the checkpoint's NAME": path} of every file of a checkpoint folder (what an export must never write over)."""
    return {f"the checkpoint's {p.name}": p for p in sorted(Path(ckpt).iterdir()) if p.is_file()}


def split_state(state: dict) -> dict[str, dict]:
    parts = {"reference": {}, "denoiser": {}, "motion": {}, "cond": {}}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        if head == "reference":
            parts["reference"][rest] = v
        elif head == "denoiser":
            parts["motion" if "motion_modules." in rest else "denoiser"][rest] = v
        elif head == "cond_encoder":
            parts["cond"][rest] = v
    return parts


def _place(src: Path, dst: Path, link: bool) -> None:
    """``dst`` becomes a copy of (or with ``link`` a symlink to) ``src``, whole or not at all: the copy is made under a
    temporary name beside it and only then takes the place of what was there (an earlier export's VAE folder, with
    ``--force``), which is kept until then; a copy that fails (a full disk) leaves ``dst`` as it was. A device, pipe or
    socket at ``dst`` is never replaced."""
    if dst.exists() and src.exists() and os.path.samefile(src, dst):  # exported into the folder the run read it from:
        log.info("%s is already in place (the run's own); kept as it is", dst)  # removing it would lose the source
        return
    if os.path.lexists(dst) and not dst.is_symlink() and not (dst.is_dir() or dst.is_file()):
        raise ConfigError(f"DEST: {dst} is not a file or folder (a device, pipe or socket) and is never replaced; move it "
                          "away or give another DEST")
    work = temp_folder_beside(dst)  # (its folders made)
    try:
        new = work / dst.name
        if link:
            new.symlink_to(src.resolve(), target_is_directory=src.is_dir())
        elif src.is_dir():
            shutil.copytree(src, new)
        else:
            shutil.copy2(src, new)
        aside = work / ".old" if os.path.lexists(dst) else None
        if aside is not None:
            os.replace(dst, aside)  # (a folder cannot be renamed over: the earlier one steps aside first)
        try:
            os.replace(new, dst)
        except BaseException:
            if aside is not None:
                os.replace(aside, dst)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)  # what was left of the copy, or the earlier one (a link: the link only)


def export(source: str | Path, dest: str | Path, ema: bool = False, formats=FORMATS, dtype: str = "float32", link: bool = False,
           verify: bool = True, merge: bool = False, force: bool = False) -> list[Path]:
    """Export the checkpoint ``source`` (a checkpoint folder, or a run folder: its newest checkpoint) to ``dest``.
    A LoRA run exports its adapter as one ``.safetensors`` (:mod:`trainer.lora`), or with ``merge`` the
    official file set of the base model with the adapters merged in.

    No existing file is replaced unless ``force`` (checked before anything is read); when a write fails
    (a full disk), what this call wrote is removed again."""
    ckpt = resolve_resume(str(source), Path(source))
    meta = read_meta(ckpt)
    run_dir = ckpt.parent.parent
    dest = Path(dest)
    if meta.get("family") == "v3":  # (its LoRA record was called "edited or damaged")
        raise ConfigError(f"{ckpt}: an EchoMimicV3 LoRA checkpoint (`echomimic-train v3-fit`); export it with "
                          f"`echomimic-train v3-export {source} {dest if dest.suffix == '.safetensors' else 'LORA.safetensors'}`")
    if merge and not meta.get("lora"):
        raise ConfigError(f"{ckpt}: --merge is for LoRA runs; this checkpoint holds a full model (export it without --merge)")
    peft = "peft" in formats
    if peft and (merge or not meta.get("lora")):
        raise ConfigError(f"{ckpt}: --format peft writes a LoRA run's adapter (without --merge); choose both, pth or safetensors here")
    if meta.get("lora") and not merge:
        from .lora import adapter_path, export_adapter, export_peft, peft_dir

        if tuple(formats) == (".pth",):  # (said, not refused: the adapter file is what every reader of it takes)
            log.warning("--format pth: a LoRA run's adapter is written as one .safetensors file (the form the LoRA node "
                        "and `echomimic animate --lora` read); .pth is for full-model exports and --merge")

        target = adapter_path(ckpt, dest, meta, ema)
        refuse_input_as_output(target, checkpoint_files(ckpt), "DEST")  # not even with --force: the source itself
        refuse_in_checkpoints(target, "DEST")  # before anything is read: rotation would delete the export
        if not force:
            refuse_existing([target] + ([peft_dir(target)] if peft else []), what="LoRA file")
        with NewFolders(target.parent):  # the missing folders: said, and removed again on a failure
            written = [export_adapter(ckpt, dest, meta, load_checkpoint_weights(ckpt, ema), ema, getattr(torch, dtype))]
            if peft:
                try:
                    written += export_peft(written[0], force)
                except BaseException:
                    written[0].unlink(missing_ok=True)  # all or nothing
                    raise
        return written
    ws = WEIGHT_SETS[meta["weights"]]
    names = ws.files("normal")
    planned = [dest / f"{names[key]}{fmt}" for key in ("reference", "denoiser", "motion", "cond") for fmt in formats]
    planned += [dest / rel for rel in (*SHARED_OUTPUTS, "export.json")]
    refuse_in_checkpoints(dest, "DEST")  # before anything is read: rotation would delete the export
    check_export_folder(dest)
    if not force:
        refuse_existing(planned, what="exported model file")
        refuse_foreign_folder(dest)  # a folder of the user's other files: not mixed into
    existed = {p for p in planned if os.path.lexists(p)}  # only with force; never removed below
    with NewFolders(dest):  # the missing folders: said, and removed again (once emptied below) on a failure
        try:
            return _export_files(ckpt, meta, run_dir, dest, ema, formats, dtype, link, verify, merge)
        except BaseException:
            for p in planned:  # what this call wrote
                if p in existed:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                elif os.path.lexists(p):
                    p.unlink()
            for sub in ("sd-image-variations-diffusers/unet", "sd-image-variations-diffusers", "audio_processor"):
                _rmdir_quiet(dest / sub)
            raise


SHARED_OUTPUTS = ("sd-image-variations-diffusers/unet/config.json", "inference_config.json", "sd-vae-ft-mse",
                  "audio_processor/whisper_tiny.pt")


def _rmdir_quiet(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass


def _export_files(ckpt, meta, run_dir, dest: Path, ema, formats, dtype, link, verify, merge) -> list[Path]:
    from .config_file import load_config
    from .init import motion_state

    state = load_checkpoint_weights(ckpt, ema)
    if merge:
        state = merged_state(run_dir, state, meta)
    dest.mkdir(parents=True, exist_ok=True)
    echo_cfg = EchoConfig.from_dict(meta["echo_config"])
    parts = split_state(state)
    if not parts["motion"]:
        cfg = load_config(run_dir / "config.yaml")
        files = None
        if cfg.model.motion_init == "released":
            from echomimic_lib.model_set import resolve_files

            files = resolve_files(cfg.model.echomimic_path, cfg.model.weights, cfg.model.variant, need=("motion",))
        if cfg.model.motion_init == "none":
            cfg.model.motion_init = "random"
        parts["motion"] = motion_state(cfg, files, echo_cfg, cfg.seed)
        log.info("stage-1 model: motion modules from motion_init '%s'", cfg.model.motion_init)
    names = WEIGHT_SETS[meta["weights"]].files("normal")
    td = getattr(torch, dtype)
    written = []
    for comp, key in (("reference", "reference"), ("denoiser", "denoiser"), ("motion", "motion"), ("cond", "cond")):
        state = {k: (v if k.endswith("pos_encoder.pe") else v.to(td)) for k, v in parts[comp].items()}
        for fmt in formats:
            written.append(save_state_dict(state, dest / f"{names[key]}{fmt}"))
    cfg_path = dest / "sd-image-variations-diffusers" / "unet" / "config.json"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg_path, json.dumps(unet_config_dict(echo_cfg), indent=1))  # a new file: a hard-linked old one
    write_text_atomic(dest / "inference_config.json", json.dumps(inference_config_dict(echo_cfg), indent=1))  # stays
    _place(Path(meta["vae_path"]), dest / "sd-vae-ft-mse", link)
    _place(Path(meta["whisper_path"]), dest / "audio_processor" / "whisper_tiny.pt", link)
    written += [cfg_path, dest / "inference_config.json", dest / "sd-vae-ft-mse", dest / "audio_processor" / "whisper_tiny.pt"]
    write_text_atomic(dest / "export.json", json.dumps({"checkpoint": str(ckpt), "step": meta["step"], "weights": meta["weights"],
                                                        "ema": ema, "dtype": dtype}, indent=1))
    if verify:
        from echomimic_lib.model_set import load_models

        load_models(dest, meta["weights"], "normal", with_vae=False, with_audio=False)
    log.info("exported %s (step %d) to %s", meta["weights"], meta["step"], dest)
    return written


def merged_state(run_dir: Path, state: dict, meta: dict) -> dict:
    """The run's base model with the adapters of ``state`` merged in by peft: a TrainingNet state dict with
    the official parameter names (``reference.*``, ``denoiser.*``, ``cond_encoder.*``)."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    from echomimic_lib.lora import fingerprints_match

    from .config_file import load_config
    from .init import build
    from .net import is_lora_param

    cfg = load_config(run_dir / "config.yaml")
    net = build(cfg).net
    if not fingerprints_match(meta["lora"]["base"]["fingerprint"], net.lora["base"]["fingerprint"]):
        raise ConfigError(f"{run_dir}: the base model at {cfg.model.echomimic_path} is not the one the adapters were trained on; "
                          "restore it (or set model.echomimic_path in the run's config.yaml) to merge")
    own = {k for k in net.state_dict() if is_lora_param(k)}
    adapters = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items() if is_lora_param(k)}
    if set(adapters) != own:
        raise ConfigError(f"{run_dir}: the checkpoint's adapters do not match the run's LoRA config (config.yaml edited?)")
    net.load_state_dict(adapters, strict=False)
    with torch.no_grad():
        for name, mod in list(net.named_modules()):
            if isinstance(mod, BaseTunerLayer):
                mod.merge(safe_merge=True)
                parent, _, child = name.rpartition(".")
                setattr(net.get_submodule(parent), child, mod.get_base_layer())
    return net.state_dict()
