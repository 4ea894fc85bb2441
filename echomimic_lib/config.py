"""Network configuration: one config type for the reference UNet, the denoising UNet and the
condition encoder, with the official SD1.5-size preset and a tiny test preset.

The official files were built from the SD1.5 image-variations UNet config plus the EchoMimic
``unet_additional_kwargs``; :meth:`EchoConfig.from_diffusers` reads those two documents, so a folder
with other widths (a fixture set, a fine-tune) configures the same classes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import EchoMimicError, WeightsError
from .io.json_file import read_json

CONFIG_FIX = ("copy it again from where it came (a test folder: make it again with `echomimic make-tiny`), or delete it: "
              "the built-in SD1.5 layout of the released weights applies then")


@dataclass(frozen=True)
class EchoConfig:
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_attention: tuple[bool, ...] = (True, True, True, False)  # CrossAttnDown x3 + Down
    layers_per_block: int = 2
    attention_heads: int = 8  # SD1.5's "attention_head_dim" is really the head count
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    in_channels: int = 4
    out_channels: int = 4
    # audio cross-attention (denoiser attn2)
    audio_dim: int = 384
    audio_scale: float = 3.0
    # motion modules (AnimateDiff v2 layout)
    motion_resolutions: tuple[int, ...] = (1, 2, 4, 8)
    motion_mid_block: bool = True
    motion_heads: int = 8
    motion_max_len: int = 32
    # condition encoder (face locator / pose encoder)
    cond_block_channels: tuple[int, ...] = (16, 32, 96, 256)
    # numerics of the reference: the reference bank is rounded to this dtype before use
    bank_round_dtype: str | None = "float16"

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    @property
    def cond_out_channels(self) -> int:
        return self.block_out_channels[0]

    @property
    def up_layers(self) -> int:
        """Layers of the denoiser's up path (DeepCache's branches, :mod:`echomimic_lib.pipeline.deep_cache`)."""
        return len(self.block_out_channels) * (self.layers_per_block + 1)

    def up_layer_input(self, k: int) -> tuple[int, int]:
        """(channels, times halved from the latent size) of the input of the up path's ``k``-th layer counted from
        the output (0: the last), before its skip is joined: what DeepCache's branch ``k`` keeps."""
        n, per = len(self.block_out_channels), self.layers_per_block + 1
        block, layer = divmod(self.up_layers - 1 - k, per)
        rev = list(reversed(self.block_out_channels))
        channels = rev[block] if layer else (rev[block - 1] if block else rev[0])
        return channels, n - 1 - block

    def with_(self, **kw) -> "EchoConfig":
        return replace(self, **kw)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EchoConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise EchoMimicError(f"unknown EchoConfig keys: {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)

    @classmethod
    def from_diffusers(cls, unet_config: dict, additional_kwargs: dict | None = None, cond_block_channels=None) -> "EchoConfig":
        """Build from a diffusers ``UNet2DConditionModel`` config.json and EchoMimic's ``unet_additional_kwargs``."""
        add = additional_kwargs or {}
        mm = add.get("motion_module_kwargs", {})
        down_types = unet_config.get("down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"])
        heads = unet_config.get("attention_head_dim", 8)
        if isinstance(heads, (list, tuple)):
            if len(set(heads)) != 1:
                raise EchoMimicError("per-block attention head counts are not supported")
            heads = heads[0]
        if unet_config.get("use_linear_projection", False):
            raise EchoMimicError("use_linear_projection=True is not an EchoMimic layout (SD1.5 uses 1x1 convs)")
        kw = dict(
            block_out_channels=tuple(unet_config["block_out_channels"]),
            down_attention=tuple("CrossAttn" in t for t in down_types),
            layers_per_block=int(unet_config.get("layers_per_block", 2)),
            attention_heads=int(heads),
            norm_num_groups=int(unet_config.get("norm_num_groups", 32)),
            norm_eps=float(unet_config.get("norm_eps", 1e-5)),
            in_channels=int(unet_config.get("in_channels", 4)),
            out_channels=int(unet_config.get("out_channels", 4)),
            audio_dim=int(add.get("cross_attention_dim", 384)),
            motion_resolutions=tuple(add.get("motion_module_resolutions", (1, 2, 4, 8))),
            motion_mid_block=bool(add.get("motion_module_mid_block", True)),
            motion_heads=int(mm.get("num_attention_heads", 8)),
            motion_max_len=int(mm.get("temporal_position_encoding_max_len", 32)),
        )
        if cond_block_channels is not None:
            kw["cond_block_channels"] = tuple(cond_block_channels)
        if add.get("motion_module_decoder_only", False):
            raise EchoMimicError("motion_module_decoder_only=True is not supported (EchoMimic uses encoder + decoder modules)")
        return cls(**kw)

    @classmethod
    def from_files(cls, unet_config_json: str | Path, inference_config: str | Path | None = None) -> "EchoConfig":
        """The config of a diffusers UNet ``config.json`` and EchoMimic's inference config (JSON or YAML); a damaged or
        foreign file is a :class:`WeightsError` naming it and the fix."""
        unet_cfg = read_config_json(unet_config_json, "UNet config.json")
        add = None if inference_config is None else additional_kwargs(_read_mapping(Path(inference_config)), inference_config)
        return config_from_documents(unet_cfg, add, unet_config_json)


def read_config_json(path: str | Path, what: str) -> dict:
    """A model folder's JSON config (``unet/config.json``, ``inference_config.json``): an object, or a
    :class:`WeightsError` naming the file, the problem and :data:`CONFIG_FIX` (a folder or pipe under its name is
    refused unread)."""
    return read_json(path, f"not a readable {what}", CONFIG_FIX, WeightsError, max_bytes=1 << 20, expect=dict)


def additional_kwargs(doc: dict, path) -> dict | None:
    """The ``unet_additional_kwargs`` of an inference config (None when absent); another kind is named."""
    add = doc.get("unet_additional_kwargs")
    if add is not None and not isinstance(add, dict):
        raise WeightsError(f"{path}: its unet_additional_kwargs is not an object {{...}} but {type(add).__name__}; {CONFIG_FIX}")
    return add


def config_from_documents(unet_cfg: dict, add: dict | None, where) -> EchoConfig:
    """:meth:`EchoConfig.from_diffusers`, its documents' missing keys and values of another type (were KeyError /
    TypeError tracebacks) said as a :class:`WeightsError` naming ``where`` (the config file)."""
    try:
        return EchoConfig.from_diffusers(unet_cfg, add)
    except EchoMimicError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:  # (Overflow: 1e999 as int)
        said = f"no '{exc.args[0]}' entry" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise WeightsError(f"{where}: not an EchoMimic UNet config ({said}); {CONFIG_FIX}") from None


def _read_mapping(path: Path) -> dict:
    if path.suffix not in (".yaml", ".yml"):
        return read_config_json(path, "inference config")
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover
        raise EchoMimicError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or give the JSON form.") from exc
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as exc:
        raise WeightsError(f"{path}: not a readable inference config ({exc}); {CONFIG_FIX}") from None
    if not isinstance(doc, dict):
        raise WeightsError(f"{path}: not a readable inference config (it holds {type(doc).__name__}, not a mapping); {CONFIG_FIX}")
    return doc


SD15 = EchoConfig()
TINY = EchoConfig(block_out_channels=(32, 32, 64, 64))
PRESETS: dict[str, EchoConfig] = {"sd15": SD15, "tiny": TINY}

# The SD1.5 image-variations UNet config and EchoMimic's inference config, as data (what
# `lambdalabs/sd-image-variations-diffusers/unet/config.json` and `configs/inference/inference_v2.yaml` hold).
SD15_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

SCHEDULER_KWARGS = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "clip_sample": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}


def unet_config_dict(cfg: EchoConfig) -> dict:
    """The diffusers-style config.json that describes ``cfg`` (written by make-tiny / export)."""
    d = dict(SD15_UNET_CONFIG)
    d.update(
        attention_head_dim=cfg.attention_heads,
        block_out_channels=list(cfg.block_out_channels),
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.down_attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.down_attention)],
        layers_per_block=cfg.layers_per_block,
        norm_eps=cfg.norm_eps,
        norm_num_groups=cfg.norm_num_groups,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
    )
    return d


def inference_config_dict(cfg: EchoConfig) -> dict:
    return {
        "unet_additional_kwargs": {
            "use_inflated_groupnorm": True,
            "unet_use_cross_frame_attention": False,
            "unet_use_temporal_attention": False,
            "use_motion_module": True,
            "cross_attention_dim": cfg.audio_dim,
            "motion_module_resolutions": list(cfg.motion_resolutions),
            "motion_module_mid_block": cfg.motion_mid_block,
            "motion_module_decoder_only": False,
            "motion_module_type": "Vanilla",
            "motion_module_kwargs": {
                "num_attention_heads": cfg.motion_heads,
                "num_transformer_block": 1,
                "attention_block_types": ["Temporal_Self", "Temporal_Self"],
                "temporal_position_encoding": True,
                "temporal_position_encoding_max_len": cfg.motion_max_len,
                "temporal_attention_dim_div": 1,
            },
        },
        "noise_scheduler_kwargs": dict(SCHEDULER_KWARGS),
    }


__all__ = ["EchoConfig", "PRESETS", "SD15", "TINY", "SCHEDULER_KWARGS", "SD15_UNET_CONFIG", "unet_config_dict", "inference_config_dict", "field"]
