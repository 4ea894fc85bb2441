"""EchoMimic networks (diffusers parameter names, so the official files load strictly)."""
from .condition import ConditionEncoder
from .unet import EchoUNet, ReferenceKV

__all__ = ["EchoUNet", "ConditionEncoder", "ReferenceKV"]
