"""EchoMimicV3 flash-pro networks: the Wan 2.1 Fun-InP DiT with audio attention, its audio projector,
config and loader (official release layout)."""
from .audio_proj import AudioProjector, group_windows
from .config import AudioProjConfig, WanV3Config
from .loader import LoadReport, load_v3_transformer, transformer_to_fp8
from .transformer import WanV3Transformer

__all__ = ["AudioProjConfig", "AudioProjector", "LoadReport", "WanV3Config", "WanV3Transformer", "group_windows",
           "load_v3_transformer", "transformer_to_fp8"]
