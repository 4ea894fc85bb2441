"""The settings of one V1/V2 generation (:class:`SampleSettings`, checked by its ``validate``), each mode's and
variant's defaults (:func:`settings_for`, from :mod:`echomimic_lib.modes`) and the seed's range (:func:`whole_seed`).
The loop that uses them is :class:`echomimic_lib.pipeline.sampler.Sampler`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..errors import EchoMimicError, as_whole
from ..modes import CONTEXT_DEFAULTS, DEFAULT_FPS, MAX_DEEP_CACHE, MAX_STEPS, SAMPLER_DEFAULTS, check_frame_rate, get_mode


@dataclass
class SampleSettings:
    width: int = 512
    height: int = 512
    steps: int = 30
    cfg: float = 2.5
    seed: int = 420
    fps: float = DEFAULT_FPS
    num_frames: int | None = None  # None: follow the audio
    context_frames: int = CONTEXT_DEFAULTS["context_frames"]
    context_overlap: int = CONTEXT_DEFAULTS["context_overlap"]
    window_shift: int = 2
    clamp_noise: bool = True
    windows_per_batch: int = 1
    decode_batch: int = 8
    cuda_graphs: bool = False  # record the denoiser call once and replay it (CUDA only; not with a streamed denoiser)
    # DeepCache (opt-in, changes the output): a full denoiser call every ``deep_cache`` steps; the steps between reuse
    # its deep features and run only the shallow layers of branch ``deep_cache_branch`` (see .deep_cache). 0 or 1: off
    deep_cache: int = 0
    deep_cache_branch: int = 0
    scheduler: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.width % 8 or self.height % 8 or self.width <= 0 or self.height <= 0:
            raise EchoMimicError(f"width and height must be positive multiples of 8 (got {self.width}x{self.height}); try "
                                 f"{max(8, self.width // 8 * 8)}x{max(8, self.height // 8 * 8)}.")
        steps = as_whole(self.steps)  # a linked 2.0 from a math node is 2
        if steps is None:  # (a linked 2.5 was an IndexError in the scheduler)
            raise EchoMimicError(f"steps {self.steps}: give a whole number of steps, 1 or more.")
        self.steps = steps
        if self.steps < 1:
            raise EchoMimicError("steps must be at least 1.")
        if self.steps > MAX_STEPS:  # a linked value (ComfyUI range-checks widgets only) was the scheduler's ValueError
            raise EchoMimicError(f"steps {self.steps}: use 1..{MAX_STEPS} denoising steps (30 normal, 6 acc).")
        self.seed = whole_seed(self.seed)
        check_frame_rate(self.fps)
        if not (math.isfinite(self.cfg) and 0 <= self.cfg <= 20):
            raise EchoMimicError(f"cfg {self.cfg}: guidance must be a number between 0 and 20 (1 or less switches it off).")
        for name in ("context_frames", "context_overlap"):  # a linked 12.0 from a math node is 12 (a float was a
            whole = as_whole(getattr(self, name))  # TypeError in the window schedule, after the models were placed)
            if whole is None:
                raise EchoMimicError(f"{name.replace('_', ' ')} {getattr(self, name)!r}: give a whole number of frames.")
            setattr(self, name, whole)
        if not 1 <= self.context_frames <= 32:
            raise EchoMimicError("context frames must be between 1 and 32 (the motion modules' position table).")
        if not 0 <= self.context_overlap < self.context_frames:
            raise EchoMimicError("context overlap must be >= 0 and smaller than the context frames.")
        if not 0 <= self.deep_cache <= MAX_DEEP_CACHE:
            raise EchoMimicError(f"deep_cache {self.deep_cache}: the DeepCache interval must be between 0 (off) and "
                                 f"{MAX_DEEP_CACHE}; 2 or 3 is typical (a full denoiser pass every 2 or 3 steps).")
        if self.deep_cache_branch < 0:
            raise EchoMimicError(f"deep_cache_branch {self.deep_cache_branch}: the branch must be 0 (the shallowest, "
                                 "fastest) or more.")


def whole_seed(seed) -> int:
    """``seed`` as an int from 0 to 2^64-1 (a linked 7.0 is 7). A negative seed was taken: torch's generator reads -1 as
    2^64-1, a fixed seed like any other, not a random one; 2^64 or more was an overflow after the models loaded."""
    whole = as_whole(seed)
    if whole is None or not 0 <= whole < 2**64:
        raise EchoMimicError(f"seed {seed!r}: use a whole number from 0 to 2^64-1 (-1 is not 'random' here; in ComfyUI, set "
                             "the seed's control to 'randomize' for a new one each run).")
    return whole


def settings_for(mode: str, variant: str = "normal", **overrides) -> SampleSettings:
    """Defaults of a mode (size, seed, window shift, clamp) and variant (steps/cfg), then overrides."""
    m = get_mode(mode)
    base = SampleSettings(width=m.size, height=m.size, seed=m.seed, window_shift=m.window_shift, clamp_noise=m.clamp_noise,
                          **SAMPLER_DEFAULTS[variant])
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})

