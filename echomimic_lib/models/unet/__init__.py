"""The SD1.5-based EchoMimic V1/V2 networks: reference UNet, denoising UNet with motion modules, condition
encoder (diffusers parameter names, so the official files load strictly)."""
from .condition import ConditionEncoder
from .network import EchoUNet, ReferenceKV

__all__ = ["EchoUNet", "ConditionEncoder", "ReferenceKV"]
