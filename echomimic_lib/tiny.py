"""``echomimic make-tiny``: a complete random-weight model folder in the official file layout, small
enough for CI. Every weight is random, including the outputs that are zero-initialised in a fresh
model, so every path of the networks is exercised.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .config import TINY, EchoConfig, inference_config_dict, unet_config_dict
from .errors import EchoMimicError
from .io.file_safety import publish, refuse_existing
from .io.model_files import TINY_MARKER as MARKER, is_tiny_folder  # noqa: F401 (their home was here)
from .models.unet import ConditionEncoder, EchoUNet
from .modes import WEIGHT_SETS
from .io.weights import save_state_dict

log = logging.getLogger(__name__)

TINY_VAE_CONFIG = dict(
    block_out_channels=[32, 32, 32, 32], down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    latent_channels=4, layers_per_block=1, norm_num_groups=32, sample_size=64, in_channels=3, out_channels=3,
)
# The SD1.5 VAE (sd-vae-ft-mse) architecture: official-size random-weight sets (GPU checks, benchmarks).
SD_VAE_CONFIG = dict(TINY_VAE_CONFIG, block_out_channels=[128, 256, 512, 512], layers_per_block=2, sample_size=256)
# Per weight set: which weight sets of a version go where, and the dtype the official files use.
VERSION_SETS = {"v1": ("v1_audio", "v1_pose"), "v2": ("v2",)}
VERSION_DTYPE = {"v1": torch.float32, "v2": torch.float16}
SHARED_PARTS = ("sd-vae-ft-mse/config.json", "audio_processor/whisper_tiny.pt", "sd-image-variations-diffusers/unet/config.json",
                "inference_config.json")
# Extra models the modes need beyond the weights (not random-generatable), for the make-tiny report.
EXTRA_MODELS = (
    ("mediapipe/face_landmarker.task", "V1 audio (face crop) and V1 landmark modes from a driving video",
     "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/latest/face_landmarker.task"),
    ("dwpose/yolox_l.onnx, dwpose/dw-ll_ucoco_384.onnx",
     "V2 hand poses from a driving video (animate --pose VIDEO, echomimic poses --video, the pose-video node), "
     "--halfbody-crop, --align-poses",
     "https://huggingface.co/yzd-v/DWPose"),
)


def _seed_of(seed: int, version: str, weights: str) -> int:
    """Seed of one weight set: the same whether one set or the whole tiny folder is written."""
    return seed + 100 * (("v1", "v2").index(version) * 2 + VERSION_SETS[version].index(weights))


@torch.no_grad()
def randomize_(module: nn.Module, seed: int, gain: float = 1.0) -> nn.Module:
    """Fill every parameter with a well-scaled random value (norm weights near 1, small biases), drawn on the
    module's device (the CPU draws are those of every tiny folder; a GPU fills official sizes in a moment)."""
    device = next(module.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    norm_params = set()
    for m in module.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            norm_params.update(id(p) for p in m.parameters(recurse=False))
    for name, p in module.named_parameters():
        if id(p) in norm_params:
            base = 1.0 if name.endswith("weight") else 0.0
            scale = 0.1 if name.endswith("weight") else 0.05
            p.copy_(base + scale * torch.randn(p.shape, generator=gen, device=device))
        elif name.endswith("bias"):
            p.copy_(0.02 * torch.randn(p.shape, generator=gen, device=device))
        else:
            fan_in = max(1, p[0].numel()) if p.dim() > 1 else p.numel()
            std = min(max(gain / fan_in**0.5, 0.02), 0.25)
            p.copy_(std * torch.randn(p.shape, generator=gen, device=device))
        p.copy_(p.half().float())  # exactly representable in fp16, like the fixtures
    return module


def _state(module: nn.Module, dtype: torch.dtype, only=None, exclude=None) -> dict:
    out = {}
    for k, v in module.state_dict().items():
        if only and only not in k or exclude and exclude in k:
            continue
        out[k] = v if k.endswith("pos_encoder.pe") else v.to(dtype)
    return out


def write_weight_set(folder: Path, weights: str, cfg: EchoConfig, seed: int, dtype: torch.dtype, fmt: str = ".pth",
                     variants=("normal", "acc"), device="cpu") -> list[Path]:
    """One weight set's random files; ``device``: where the networks are built and filled (a GPU writes official
    sizes in seconds), ``variants``: which denoisers (both by default, as every tiny folder)."""
    ws = WEIGHT_SETS[weights]
    written = []
    with torch.device(device):
        ref = randomize_(EchoUNet(cfg, "reference"), seed)
    written.append(save_state_dict(_state(ref, dtype), folder / f"{ws.reference}{fmt}"))
    del ref
    for i, variant in enumerate(("normal", "acc")):
        if variant not in variants:
            continue
        files = ws.files(variant)
        with torch.device(device):
            den = randomize_(EchoUNet(cfg, "denoiser"), seed + 10 + i)
        written.append(save_state_dict(_state(den, dtype, exclude="motion_modules."), folder / f"{files['denoiser']}{fmt}"))
        written.append(save_state_dict(_state(den, dtype, only="motion_modules."), folder / f"{files['motion']}{fmt}"))
        del den
    enc = randomize_(ConditionEncoder(ws.cond_channels, cfg.cond_out_channels, cfg.cond_block_channels), seed + 20, gain=2.0)
    written.append(save_state_dict(_state(enc, dtype), folder / f"{ws.cond}{fmt}"))
    return written


def write_shared(root: Path, cfg: EchoConfig, seed: int, vae_config: dict = TINY_VAE_CONFIG) -> list[Path]:
    """VAE, whisper and the two config files that describe the architecture (``SD_VAE_CONFIG``: the official VAE)."""
    from diffusers import AutoencoderKL

    from .audio.whisper import save_random_whisper

    root.mkdir(parents=True, exist_ok=True)
    vae = randomize_(AutoencoderKL(**vae_config), seed + 30)
    vae.save_pretrained(str(root / "sd-vae-ft-mse"), safe_serialization=True)
    whisper = root / "audio_processor" / "whisper_tiny.pt"
    whisper.parent.mkdir(parents=True, exist_ok=True)
    save_random_whisper(whisper, seed=seed + 40)
    cfg_path = root / "sd-image-variations-diffusers" / "unet" / "config.json"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(json.dumps(unet_config_dict(cfg), indent=1))
    (root / "inference_config.json").write_text(json.dumps(inference_config_dict(cfg), indent=1))
    return [root / "sd-vae-ft-mse", whisper, cfg_path, root / "inference_config.json"]


def make_tiny(directory: str | Path, version: str | None = None, layout: str = "official", seed: int = 0,
              cfg: EchoConfig = TINY, fmt: str = ".pth", force: bool = False) -> Path:
    """Write a tiny model folder.

    - ``version='v1'`` or ``'v2'`` with the official layout: that release's files flat in ``directory``
      (like its ``pretrained_weights/``), plus VAE, whisper and configs.
    - ``version=None``: both, in ``directory/v1`` and ``directory/v2`` with the shared parts beside them.
    - ``layout='comfyui'``: ``directory`` is ComfyUI's ``models/``; everything goes under
      ``models/echomimic/`` (both versions), and the VAE is also placed in ``models/vae/``.

    Everything is written into a temporary folder inside ``directory`` first and moved into place only when
    complete, so a failure (a full disk, Ctrl-C) leaves nothing behind. A file that already exists with other
    content is never replaced unless ``force`` (:class:`~echomimic_lib.io.file_safety.ExistingFileError`, before
    anything is moved); one with the same content is left as it is.
    """
    if layout not in ("official", "comfyui"):
        raise ValueError("layout must be 'official' or 'comfyui'")
    if version not in (None, "v1", "v2", "all"):
        raise ValueError("version must be v1, v2 or all")
    return write_staged(directory, lambda staging: _write_tiny(staging, version, layout, seed, cfg, fmt), force)


def write_staged(directory: str | Path, write, force: bool = False) -> Path:
    """``write(staging)`` into a temporary folder inside ``directory``, then each file moved into place: nothing is left
    on a failure, a file there with other content is refused unless ``force`` (before anything moves), one with the
    same content is left as it is. :func:`make_tiny`'s, and ``make-tiny --version v3-flash``'s."""
    directory = Path(directory)
    created = [p for p in (directory, *directory.parents) if not os.path.lexists(p)]
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=directory))
    try:
        write(staging)
        plan = [(src, directory / src.relative_to(staging)) for src in sorted(staging.rglob("*")) if src.is_file()]
        differ = [dst for src, dst in plan if os.path.lexists(dst) and not _same_bytes(src, dst)]
        if not force:
            refuse_existing(differ, what="weight or model file")
        for src, dst in plan:
            if os.path.lexists(dst) and dst not in differ:
                continue  # already there, byte for byte
            dst.parent.mkdir(parents=True, exist_ok=True)
            publish(src, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for p in created:  # innermost first; only folders this call made, and only when empty
            try:
                p.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(staging, ignore_errors=True)
    log.debug("tiny models written to %s", directory)
    return directory


def _same_bytes(a: Path, b: Path) -> bool:
    if not b.is_file() or a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _write_tiny(directory: Path, version, layout: str, seed: int, cfg: EchoConfig, fmt: str) -> None:
    versions = ("v1", "v2") if version in (None, "all") or layout == "comfyui" else (version,)
    root = directory / "echomimic" if layout == "comfyui" else directory
    flat = layout == "official" and len(versions) == 1
    for v in versions:
        folder = root if flat else root / v
        for weights in VERSION_SETS[v]:
            write_weight_set(folder, weights, cfg, _seed_of(seed, v, weights), VERSION_DTYPE[v], fmt)
    write_shared(root, cfg, seed)
    _write_marker(root, seed)
    if layout == "comfyui":
        from safetensors.torch import load_file

        vae_state = load_file(str(root / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"))
        save_state_dict(vae_state, directory / "vae" / "echomimic_tiny_vae.safetensors")


def _write_marker(root: Path, seed: int) -> None:
    (root / MARKER).write_text(json.dumps({"random_weights": True, "seed": seed, "written_by": "echomimic make-tiny"}))


def ensure_tiny(root: str | Path, weights: str, seed: int = 0, cfg: EchoConfig = TINY) -> bool:
    """Make sure ``root`` holds a tiny model folder (nested layout) with the weight set ``weights``.

    Writes only what is missing (the one weight set and the shared parts), with the seeds
    :func:`make_tiny` uses, into a temporary folder first and then moves each file into place, so an
    interrupted run leaves no half-written weights. Refuses a folder that has other content and no
    tiny marker: random weights never go into a real models folder. Returns True if it wrote anything."""
    from .model_set import resolve_files

    root = Path(root)
    ws = WEIGHT_SETS[weights]
    version = ws.folder
    try:
        resolve_files(root, weights, "normal")
        resolve_files(root, weights, "acc")
        return False  # complete (tiny or not: a smoke run may use any complete folder)
    except EchoMimicError:
        pass
    if root.is_dir() and any(root.iterdir()) and not is_tiny_folder(root):
        raise EchoMimicError(f"{root} holds files but is not a tiny model folder ({MARKER} missing); smoke runs write "
                             "random weights only into an empty folder or one made by `echomimic make-tiny`. Choose "
                             "another --models folder, or leave it out to use the default tiny folder.")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
    try:
        write_weight_set(staging / version, weights, cfg, _seed_of(seed, version, weights), VERSION_DTYPE[version])
        if not all((root / rel).exists() for rel in SHARED_PARTS):
            write_shared(staging, cfg, seed)
        _write_marker(staging, seed)
        for src in sorted(staging.rglob("*")):
            dst = root / src.relative_to(staging)
            if src.is_dir():
                dst.mkdir(exist_ok=True)
            elif not dst.exists():
                publish(src, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.debug("tiny %s weights written to %s", weights, root)
    return True
