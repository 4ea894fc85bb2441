"""The official EchoMimic V1 code beside the project, for side-by-side benchmarks only.

The official code is a checkout of ``BadToBest/EchoMimic`` (fetched into /tmp, never committed; pass its
path). It was written against diffusers 0.24; the shims below adapt the few names newer diffusers moved
or removed. They are installed here, in the benchmark, never in the library:

- ``diffusers.models.embeddings.PositionNet`` / ``CaptionProjection``: renamed upstream
  (``GLIGENTextBoundingboxProjection`` / ``PixArtAlphaTextProjection``); imported, never used by V1;
- ``diffusers.models.attention.AdaLayerNorm``: moved to ``diffusers.models.normalization``; unused by V1;
- ``diffusers.models.lora.LoRACompatibleConv`` / ``LoRACompatibleLinear``: removed upstream; plain
  ``nn.Conv2d`` / ``nn.Linear`` that accept (and ignore) the old ``scale`` argument (no LoRA is loaded);
- ``diffusers.models.dual_transformer_2d``: moved to ``diffusers.models.transformers``; unused by V1;
- ``ReferenceAttentionControl`` builds its CFG row mask on ``cuda`` by default: the default becomes the CPU.

Everything else (model classes, reference-attention hooks, pipeline loop, per-frame VAE decode) runs as
published, on the installed diffusers building blocks (ResnetBlock2D, Attention, FeedForward ...).
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import torch
from torch import nn


class _LoRACompatibleConv(nn.Conv2d):
    def __init__(self, *args, lora_layer=None, **kwargs):
        super().__init__(*args, **kwargs)

    def forward(self, x, scale: float = 1.0):
        return super().forward(x)


class _LoRACompatibleLinear(nn.Linear):
    def __init__(self, *args, lora_layer=None, **kwargs):
        super().__init__(*args, **kwargs)

    def forward(self, x, scale: float = 1.0):
        return super().forward(x)


def install_shims() -> None:
    import diffusers.models.attention as att
    import diffusers.models.embeddings as emb
    import diffusers.models.lora as lora
    import diffusers.models.normalization as norm

    if not hasattr(emb, "PositionNet"):
        emb.PositionNet = emb.GLIGENTextBoundingboxProjection
    if not hasattr(emb, "CaptionProjection"):
        emb.CaptionProjection = emb.PixArtAlphaTextProjection
    if not hasattr(att, "AdaLayerNorm"):
        att.AdaLayerNorm = norm.AdaLayerNorm
    if not hasattr(lora, "LoRACompatibleConv"):
        lora.LoRACompatibleConv = _LoRACompatibleConv
        lora.LoRACompatibleLinear = _LoRACompatibleLinear
    try:
        importlib.import_module("diffusers.models.dual_transformer_2d")
    except ImportError:
        sys.modules["diffusers.models.dual_transformer_2d"] = importlib.import_module(
            "diffusers.models.transformers.dual_transformer_2d")


def import_official(path: str | Path) -> types.SimpleNamespace:
    """Import the official model and pipeline classes from a checkout at ``path``."""
    path = Path(path).resolve()
    if not (path / "src" / "models" / "unet_3d_echo.py").is_file():
        raise SystemExit(f"{path} is not a checkout of BadToBest/EchoMimic (src/models/unet_3d_echo.py missing)")
    install_shims()
    sys.path.insert(0, str(path))
    mods = {n: importlib.import_module(f"src.{n}") for n in (
        "models.unet_2d_condition", "models.unet_3d_echo", "models.face_locator", "models.mutual_self_attention",
        "pipelines.pipeline_echo_mimic")}
    rac = mods["models.mutual_self_attention"].ReferenceAttentionControl
    defaults = list(rac.register_reference_hooks.__defaults__)
    rac.register_reference_hooks.__defaults__ = tuple(
        torch.device("cpu") if isinstance(d, torch.device) else d for d in defaults)
    return types.SimpleNamespace(
        UNet2D=mods["models.unet_2d_condition"].UNet2DConditionModel,
        UNet3D=mods["models.unet_3d_echo"].EchoUNet3DConditionModel,
        FaceLocator=mods["models.face_locator"].FaceLocator,
        Control=rac,
        Pipeline=mods["pipelines.pipeline_echo_mimic"].Audio2VideoPipeline,
        path=path,
    )


def unet3d_config(base_config: dict) -> dict:
    """What ``EchoUNet3DConditionModel.from_pretrained_2d`` makes of the 2D base config."""
    c = dict(base_config)
    c["_class_name"] = "EchoUNet3DConditionModel"
    c["down_block_types"] = ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"]
    c["up_block_types"] = ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3
    c["mid_block_type"] = "UNetMidBlock3DCrossAttn"
    return c


def build_sharing(off, base_config: dict, additional_kwargs: dict, ref_state: dict, den_state: dict, loc_state: dict):
    """Official reference UNet, denoiser and face locator built on the meta device and assigned the given
    tensors (shared with the project's modules: one copy of the weights in memory for both)."""
    with torch.device("meta"):
        ref = off.UNet2D.from_config(base_config)
        den = off.UNet3D.from_config(unet3d_config(base_config), **additional_kwargs)
        loc = off.FaceLocator(320, conditioning_channels=1, block_out_channels=(16, 32, 96, 256))
    for mod, state in ((ref, ref_state), (den, den_state), (loc, loc_state)):
        mod.load_state_dict(state, strict=True, assign=True)
        mod.eval().requires_grad_(False)
    return ref, den, loc


def load_like_infer_script(off, root: Path, vae_dir: Path, base_dir: Path, additional_kwargs: dict):
    """The model initialisation of the official ``infer_audio2vid.py`` (V1 audio, CPU, fp32, no whisper /
    face detector: neither side loads them in these benchmarks)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(vae_dir))
    reference_unet = off.UNet2D.from_pretrained(str(base_dir), subfolder="unet")
    reference_unet.load_state_dict(torch.load(root / "reference_unet.pth", map_location="cpu", weights_only=True))
    denoising_unet = off.UNet3D.from_pretrained_2d(str(base_dir), str(root / "motion_module.pth"), subfolder="unet",
                                                   unet_additional_kwargs=additional_kwargs)
    denoising_unet.load_state_dict(torch.load(root / "denoising_unet.pth", map_location="cpu", weights_only=True), strict=False)
    face_locator = off.FaceLocator(320, conditioning_channels=1, block_out_channels=(16, 32, 96, 256))
    face_locator.load_state_dict(torch.load(root / "face_locator.pth", map_location="cpu", weights_only=True))
    return vae, reference_unet, denoising_unet, face_locator


class FeatureGuider:
    """Stands in for the official whisper ``audio_guider``: hands over precomputed per-frame chunks (the
    same ones the project's sampler uses), so both sides see identical audio conditioning."""

    def __init__(self, chunks):
        self.chunks = chunks  # numpy (F, 50, 384)

    def audio2feat(self, audio_path):
        return None

    def feature2chunks(self, feature_array=None, fps=24):
        return self.chunks


def make_pipeline(off, vae, ref, den, loc, chunks, scheduler_kwargs: dict):
    from diffusers import DDIMScheduler

    pipe = off.Pipeline(vae=vae, reference_unet=ref, denoising_unet=den, audio_guider=FeatureGuider(chunks),
                        face_locator=loc, scheduler=DDIMScheduler(**scheduler_kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def denoiser_call(off, ref, den, ref_latent, x, audio, face_feat, t):
    """One official CFG denoiser call with the reference bank written by ``ref`` (as the pipeline does)."""
    writer = off.Control(ref, do_classifier_free_guidance=True, mode="write", batch_size=1, fusion_blocks="full")
    reader = off.Control(den, do_classifier_free_guidance=True, mode="read", batch_size=1, fusion_blocks="full")
    ref(ref_latent, torch.zeros_like(torch.as_tensor(t)), encoder_hidden_states=None, return_dict=False)
    reader.update(writer, do_classifier_free_guidance=True)

    def call():
        return den(x.repeat(2, 1, 1, 1, 1), t, encoder_hidden_states=None,
                   audio_cond_fea=torch.cat([torch.zeros_like(audio), audio]),
                   face_musk_fea=torch.cat([torch.zeros_like(face_feat), face_feat]), return_dict=False)[0]

    return call, (reader, writer)


SD_VAE_CONFIG = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                     up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2, in_channels=3,
                     out_channels=3, norm_num_groups=32, sample_size=256)


def make_model_folder(root: Path, seed: int = 0) -> Path:
    """Official-size random V1 audio weights in the official layout (fp32 .pth like the release), the SD1.5
    base UNet folder the official loader reads first (``sd-image-variations-diffusers/unet``: config +
    random safetensors) and an SD VAE folder. ~12 GB; written once, reused (``.complete`` marker)."""
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file

    from _models import random_
    from echomimic_lib.config import SD15, SD15_UNET_CONFIG, inference_config_dict
    from echomimic_lib.models.unet import ConditionEncoder, EchoUNet

    root = Path(root)
    if (root / ".complete").exists():
        return root
    (root / "v1").mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        ref = EchoUNet(SD15, "reference")
    torch.save(random_(ref, seed + 1).state_dict(), root / "v1" / "reference_unet.pth")
    del ref
    with torch.device("meta"):
        den = EchoUNet(SD15, "denoiser")
    sd = random_(den, seed + 2).state_dict()
    torch.save({k: v for k, v in sd.items() if "motion_modules." not in k}, root / "v1" / "denoising_unet.pth")
    torch.save({k: v for k, v in sd.items() if "motion_modules." in k}, root / "v1" / "motion_module.pth")
    del den, sd
    with torch.device("meta"):
        loc = ConditionEncoder(1, 320, SD15.cond_block_channels)
    torch.save(random_(loc, seed + 3).state_dict(), root / "v1" / "face_locator.pth")
    base = root / "sd-image-variations-diffusers" / "unet"
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.json").write_text(json.dumps(SD15_UNET_CONFIG, indent=1))
    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in SD15_UNET_CONFIG.items() if not k.startswith("_")})
    save_file({k: v.contiguous() for k, v in random_(unet, seed + 4).state_dict().items()},
              str(base / "diffusion_pytorch_model.safetensors"))
    del unet
    with torch.device("meta"):
        vae = AutoencoderKL(**SD_VAE_CONFIG)
    random_(vae, seed + 5).save_pretrained(str(root / "sd-vae-ft-mse"))
    (root / "inference_config.json").write_text(json.dumps(inference_config_dict(SD15), indent=1))
    (root / ".complete").write_text("random weights for bench_official.py\n")
    return root
