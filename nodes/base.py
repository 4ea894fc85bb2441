"""What every EchoMimic node shares, declared once: ComfyUI's class attributes from a few declarations.

A node subclasses :class:`Node` and declares

- ``OUTPUTS``: one ``(type, name, tooltip)`` per output (ComfyUI's ``RETURN_TYPES``, ``RETURN_NAMES`` and
  ``OUTPUT_TOOLTIPS``, made here), and ``DESCRIPTION``;
- :meth:`Node.inputs`: the required inputs in widget order, :meth:`Node.optional_inputs` the optional ones (read
  at every ``INPUT_TYPES`` call, so the folder lists in them stay current);
- ``execute``: ComfyUI calls it with the inputs by name.

The input helpers below write the specs that several nodes use alike.
"""
from __future__ import annotations

import math

from ..echomimic_lib.errors import EchoMimicError


class Node:
    CATEGORY = "EchoMimic"
    FUNCTION = "execute"
    OUTPUTS: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.RETURN_TYPES, cls.RETURN_NAMES, cls.OUTPUT_TOOLTIPS = (tuple(column) for column in zip(*cls.OUTPUTS))

    @classmethod
    def INPUT_TYPES(cls):
        spec = {"required": cls.inputs()}
        optional = cls.optional_inputs()
        if optional:
            spec["optional"] = optional
        return spec

    @classmethod
    def inputs(cls) -> dict:
        return {}

    @classmethod
    def optional_inputs(cls) -> dict:
        return {}


def link(kind: str, tooltip: str) -> tuple:
    """An input that takes another node's output (no widget)."""
    return (kind, {"tooltip": tooltip})


def switch(tooltip: str, default: bool = False) -> tuple:
    """An on/off widget."""
    return ("BOOLEAN", {"default": default, "tooltip": tooltip})


def check_fps(fps, what: str = "fps") -> float:
    """A frame rate that came through a link (ComfyUI range-checks widgets only): a positive number, else an error
    naming the input, before any work."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(fps, bool) or not (math.isfinite(value) and value > 0):
        raise EchoMimicError(f"{what} {fps!r}: the frame rate must be a positive number of frames per second (24 or 25 "
                             "is typical); link the frame rate of the video (Get Video Components' fps) or type one.")
    return value


def frame_rate(tooltip: str, default: float = 24.0, step: float = 0.01) -> tuple:
    """A frame-rate widget (1 to 120 frames per second)."""
    return ("FLOAT", {"default": default, "min": 1.0, "max": 120.0, "step": step, "tooltip": tooltip})
