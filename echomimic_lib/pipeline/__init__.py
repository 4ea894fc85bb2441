"""One sampling pipeline for every EchoMimic mode (see :mod:`.sampler`)."""
from .conditions import FrameCondition, MaskCondition, frames_condition
from .context import base_windows, frame_counts, shift_windows, step_windows
from .sampler import SampleResult, Sampler, initial_noise
from .settings import SampleSettings, settings_for
from .scheduler import make_scheduler

__all__ = ["Sampler", "SampleSettings", "SampleResult", "settings_for", "initial_noise", "MaskCondition", "FrameCondition",
           "frames_condition", "base_windows", "shift_windows", "step_windows", "frame_counts", "make_scheduler"]
