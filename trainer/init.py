"""Building the networks of a run from its config: SD1.5 image-variations weights (the paper's start),
released EchoMimic weights / a previous export (fine-tuning, stage 2), or random (tests).

SD1.5 image-variations (``model.init: sd``, ``model.sd_path`` = the diffusers folder with ``unet/``):
- architecture from ``unet/config.json`` (+ EchoMimic's additional kwargs: 384-d audio attention,
  motion-module layout);
- reference UNet: every SD key except the transformer blocks' attn2/norm2 and conv_norm_out/conv_out,
  checked strictly (the reference has exactly the remaining keys);
- denoising UNet: every key whose name and shape match; the audio attention's to_k/to_v (768-d text in
  SD, 384-d whisper here) keep their fresh initialisation -- as the official loader does;
- condition encoder: fresh, output convolution zero (ControlNet-style, the model starts unconditioned).
Motion modules (``model.motion_init``): ``released`` (the folder's motion_module file), ``animatediff``
(an ``mm_sd_v15_v2`` file: same key names as motion_module.pth), ``random`` (fresh, proj_out zero so the
model starts equal to its single-frame version) or ``none``.
Fresh parameters are drawn under ``torch.manual_seed(seed)`` so a run is reproducible.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from echomimic_lib.config import PRESETS as ARCH_PRESETS
from echomimic_lib.config import EchoConfig
from echomimic_lib.model_set import VAE_DIRS, WHISPER_FILES, load_vae, read_config, resolve_files
from echomimic_lib.models.unet import ConditionEncoder, EchoUNet
from echomimic_lib.modes import WEIGHT_SETS
from echomimic_lib.io.weights import load_strict, read_state_dict

from .config import ConfigError, TrainConfig
from .net import TrainingNet, enable_gradient_checkpointing
from .phases import needs_motion

log = logging.getLogger(__name__)
SD_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.safetensors")


@dataclass
class Built:
    net: TrainingNet
    vae: nn.Module
    config: EchoConfig
    cond_channels: int
    vae_path: Path
    whisper_path: Path
    report: dict = field(default_factory=dict)


def _search(dirs: list[Path], names) -> Path | None:
    for d in dirs:
        for n in names:
            if (d / n).exists():
                return d / n
    return None


def _is_ref_key(k: str) -> bool:
    if k.startswith(("conv_norm_out.", "conv_out.")):
        return False
    return not (".transformer_blocks." in k and (".attn2." in k or ".norm2." in k))


def sd_unet_files(sd_path: str | Path) -> tuple[Path, Path]:
    root = Path(sd_path)
    unet = root / "unet" if (root / "unet" / "config.json").is_file() else root
    weights = _search([unet], SD_WEIGHT_FILES)
    if not (unet / "config.json").is_file() or weights is None:
        raise FileNotFoundError(f"{root}: expected a diffusers UNet folder (unet/config.json + diffusion_pytorch_model.safetensors)")
    return unet / "config.json", weights


def sd_unet_config(sd_path: str | Path) -> tuple[EchoConfig, Path]:
    """The architecture of an SD1.5 image-variations folder's UNet (its ``unet/config.json``) and its weights file. A
    config that is damaged or not a diffusers UNet's is a ConfigError naming the file (``fit`` reads it before anything
    is written: :func:`trainer.loop.fit`)."""
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.io.json_file import read_json

    cfg_json, weights = sd_unet_files(sd_path)
    fix = (f"model.sd_path: give the sd-image-variations-diffusers folder as it was downloaded (download "
           f"{cfg_json.name} again into {cfg_json.parent})")
    data = read_json(cfg_json, "not a diffusers UNet config", fix, ConfigError, max_bytes=1 << 20, expect=dict)
    try:
        return EchoConfig.from_diffusers(data, None), weights
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # (OverflowError: 1e999 as int)
        if isinstance(exc, EchoMimicError):
            raise  # (a layout EchoMimic does not have: its own words)
        why = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ConfigError(f"{cfg_json}: not a diffusers UNet config ({why}); {fix}") from None


def map_sd_weights(sd_state: dict, reference: EchoUNet, denoiser: EchoUNet) -> dict:
    """Copy SD1.5 UNet weights into fresh reference / denoising UNets; returns what was copied / kept fresh."""
    ref_state = {k: v for k, v in sd_state.items() if _is_ref_key(k)}
    load_strict(reference, ref_state, "SD1.5 UNet -> reference UNet", "cpu", torch.float32)
    own = denoiser.state_dict()
    copy = {k: v for k, v in sd_state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    fresh = sorted(k for k in own if k not in copy and "motion_modules." not in k)
    denoiser.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in copy.items()}}, strict=True)
    return {"reference_keys": len(ref_state), "denoiser_copied": len(copy), "denoiser_fresh": fresh,
            "sd_unused": sorted(k for k in sd_state if k not in own)}


def zero_init_(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def _fresh_motion(den: EchoUNet) -> None:
    for n, m in den.named_modules():
        if n.endswith("temporal_transformer.proj_out"):
            zero_init_(m)


def motion_state(cfg: TrainConfig, files: dict | None, echo_cfg: EchoConfig, seed: int) -> dict:
    """The motion-module state dict ``model.motion_init`` asks for (for building and for export)."""
    mi = cfg.model.motion_init
    if mi in ("released", "animatediff"):
        path = cfg.model.motion_path if mi == "animatediff" else (cfg.model.motion_path or (files or {}).get("motion"))
        if path is None:
            raise FileNotFoundError("model.motion_init: released needs model.init: echomimic (its motion_module file) or model.motion_path")
        state = {k: v for k, v in read_state_dict(path).items() if "motion_modules." in k}
        if not state:
            raise ValueError(f"{path}: no motion-module keys (expected AnimateDiff mm_sd_v15_v2 / motion_module.pth names)")
        return state
    with torch.random.fork_rng():
        torch.manual_seed(seed + 3)
        den = EchoUNet(echo_cfg, "denoiser", motion=True)
    _fresh_motion(den)
    return {k: v for k, v in den.state_dict().items() if "motion_modules." in k}


def echomimic_files(cfg: TrainConfig) -> dict:
    """The files of ``model.echomimic_path`` the run loads (file tests only): a folder of another weight set (a V2 config
    given V1 weights, or the reverse) or a missing file is named with where to get it, before the run writes anything."""
    m = cfg.model
    motion = needs_motion(cfg.phases)
    if motion and m.motion_init == "none":
        raise ConfigError("a temporal phase needs motion modules: set model.motion_init (released / animatediff / random)")
    need = ("reference", "denoiser", "cond", "vae", "whisper") + (("motion",) if motion and m.motion_init == "released" else ())
    return resolve_files(m.echomimic_path, m.weights, m.variant, need=need)


def build(cfg: TrainConfig) -> Built:
    m = cfg.model
    ws = WEIGHT_SETS[m.weights]
    motion = needs_motion(cfg.phases)
    if motion and m.motion_init == "none":
        raise ConfigError("a temporal phase needs motion modules: set model.motion_init (released / animatediff / random)")
    report: dict = {"init": m.init, "motion_init": m.motion_init if motion else "none"}
    files = None
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        if m.init == "echomimic":
            files = echomimic_files(cfg)
            echo_cfg = read_config(files)
            fresh_motion = motion and m.motion_init == "random"
            with torch.device("meta"):
                ref = EchoUNet(echo_cfg, "reference")
                enc = ConditionEncoder(ws.cond_channels, echo_cfg.cond_out_channels, echo_cfg.cond_block_channels)
            with torch.device("cpu" if fresh_motion else "meta"):
                den = EchoUNet(echo_cfg, "denoiser", motion=motion)
            load_strict(ref, read_state_dict(files["reference"]), Path(files["reference"]).name, "cpu", torch.float32)
            state = {k: v for k, v in read_state_dict(files["denoiser"]).items() if "motion_modules." not in k}
            if fresh_motion:
                _fresh_motion(den)
                state.update({k: v for k, v in den.state_dict().items() if "motion_modules." in k})
            elif motion:
                state.update(motion_state(cfg, files, echo_cfg, cfg.seed))
            load_strict(den, state, Path(files["denoiser"]).name, "cpu", torch.float32)
            load_strict(enc, read_state_dict(files["cond"]), Path(files["cond"]).name, "cpu", torch.float32)
            vae_path, whisper_path = Path(m.vae_path or files["vae"]), Path(m.whisper_path or files["whisper"])
            report["files"] = {k: str(v) for k, v in files.items() if v is not None}
        else:
            if m.init == "sd":
                echo_cfg, weights = sd_unet_config(m.sd_path)
                dirs = [Path(m.sd_path), Path(m.sd_path).parent]
            else:
                if m.arch not in ARCH_PRESETS:
                    raise ValueError(f"model.arch must be one of {', '.join(ARCH_PRESETS)} for init: random")
                echo_cfg, dirs = ARCH_PRESETS[m.arch], []
            ref = EchoUNet(echo_cfg, "reference")
            den = EchoUNet(echo_cfg, "denoiser", motion=motion)
            if m.init == "sd":
                report.update(map_sd_weights(read_state_dict(weights), ref, den))
            if motion and m.motion_init == "random":
                _fresh_motion(den)
            elif motion:
                den.load_state_dict({**den.state_dict(), **motion_state(cfg, None, echo_cfg, cfg.seed)})
            enc = ConditionEncoder(ws.cond_channels, echo_cfg.cond_out_channels, echo_cfg.cond_block_channels)
            zero_init_(enc.conv_out)
            vae_path = Path(m.vae_path) if m.vae_path else _search(dirs, VAE_DIRS)
            whisper_path = Path(m.whisper_path) if m.whisper_path else _search(dirs, WHISPER_FILES)
            if vae_path is None or whisper_path is None:
                raise FileNotFoundError("model.vae_path / model.whisper_path: give the sd-vae-ft-mse folder and the whisper tiny checkpoint")
    vae = load_vae(vae_path).requires_grad_(False)
    for mod in (ref, den):
        enable_gradient_checkpointing(mod, m.gradient_checkpointing)
        mod.set_attention_backend(m.attention)
    net = TrainingNet(ref.train(), den.train(), enc.train())
    if cfg.lora.enabled:  # peft adapters on the frozen base (trainer.lora)
        from .lora import inject

        report["lora"] = inject(net, cfg)
    log.info("built %s networks (%s init; motion modules: %s)", m.weights, m.init, report["motion_init"])
    return Built(net, vae, echo_cfg, ws.cond_channels, vae_path, whisper_path, report)
