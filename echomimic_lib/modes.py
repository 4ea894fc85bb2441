"""What differs between EchoMimic modes, as data: weight files, condition type, sampler defaults.

One pipeline serves every row of these tables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import EchoMimicError


@dataclass(frozen=True)
class WeightSet:
    name: str
    folder: str  # sub-folder of the models directory
    hf_repo: str
    reference: str
    denoiser: str
    motion: str
    cond: str
    cond_channels: int
    acc_denoiser: str
    acc_motion: str

    def files(self, variant: str) -> dict[str, str]:
        """Component -> file stem for ``variant`` ('normal' or 'acc')."""
        if variant not in ("normal", "acc"):
            raise EchoMimicError(f"unknown weights variant '{variant}': use 'normal' or 'acc'.")
        acc = variant == "acc"
        return {
            "reference": self.reference,
            "denoiser": self.acc_denoiser if acc else self.denoiser,
            "motion": self.acc_motion if acc else self.motion,
            "cond": self.cond,
        }


WEIGHT_SETS: dict[str, WeightSet] = {
    "v1_audio": WeightSet("v1_audio", "v1", "BadToBest/EchoMimic", "reference_unet", "denoising_unet", "motion_module",
                          "face_locator", 1, "denoising_unet_acc", "motion_module_acc"),
    "v1_pose": WeightSet("v1_pose", "v1", "BadToBest/EchoMimic", "reference_unet_pose", "denoising_unet_pose",
                         "motion_module_pose", "face_locator_pose", 3, "denoising_unet_pose_acc", "motion_module_pose_acc"),
    "v2": WeightSet("v2", "v2", "BadToBest/EchoMimicV2", "reference_unet", "denoising_unet", "motion_module",
                    "pose_encoder", 3, "denoising_unet_acc", "motion_module_acc"),
}


@dataclass(frozen=True)
class Mode:
    name: str
    weights: str  # key of WEIGHT_SETS
    condition: str  # "face_mask" | "landmarks" | "hand_pose"
    window_shift: int  # context-window shift per denoising step index
    clamp_noise: bool  # initial noise clamped to +-1.5
    size: int  # default width = height
    seed: int
    landmark_parts: tuple[str, ...] = ()

    @property
    def weight_set(self) -> WeightSet:
        return WEIGHT_SETS[self.weights]


MODES: dict[str, Mode] = {
    "v1-audio": Mode("v1-audio", "v1_audio", "face_mask", 2, True, 512, 420),
    "v1-landmarks": Mode("v1-landmarks", "v1_pose", "landmarks", 3, False, 512, 420,
                         ("eyes", "brows", "pupils", "nose", "mouth")),
    "v1-audio+landmarks": Mode("v1-audio+landmarks", "v1_pose", "landmarks", 3, False, 512, 420,
                               ("eyes", "brows", "pupils", "nose")),
    "v2-halfbody": Mode("v2-halfbody", "v2", "hand_pose", 3, True, 768, 3407),
}
MODE_ALIASES = {"audio": "v1-audio", "landmarks": "v1-landmarks", "audio+landmarks": "v1-audio+landmarks",
                "halfbody": "v2-halfbody", "v2": "v2-halfbody", "v1": "v1-audio"}

MAX_STEPS = 200  # denoising steps (the nodes' widget and --steps range; a DDIM schedule has 1000 at most)
MAX_DEEP_CACHE = 10  # DeepCache interval limit (SampleSettings.deep_cache): past it the kept features are from far noisier steps
SAMPLER_DEFAULTS = {"normal": {"steps": 30, "cfg": 2.5}, "acc": {"steps": 6, "cfg": 1.0}}
CONTEXT_DEFAULTS = {"context_frames": 12, "context_overlap": 3}
DEFAULT_FPS = 24
FPS_RANGE = (1.0, 120.0)  # frames per second of a video the sampler makes (the nodes' widget range)
MAX_SOURCE_FPS = 240.0  # frames per second of a video given to read (a phone's slow motion: 240)
# EchoMimicV3 speech over one 81-frame shot, in chunks (pipeline.wan.long): each from the reference, or on from the last
V3_LONG_MODES = ("reanchor", "continue")


def check_frame_rate(fps, what: str = "fps", top: float = FPS_RANGE[1]) -> float:
    """The video's frame rate as a float, 1 to 120 (the sampler's rule; the nodes that fix a video's frame rate check a
    linked value with it before their work, the command line its ``--fps``), else an error naming ``what`` (the node's
    input or the flag) in one shape for both. The rate of a video given to read (the nodes that take a video's frames,
    ``evaluate --fps``) may go up to ``top`` = :data:`MAX_SOURCE_FPS`."""
    try:
        value = math.nan if isinstance(fps, bool) else float(fps)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and FPS_RANGE[0] <= value <= top):
        raise EchoMimicError(f"{what} {fps}: the frame rate must be a number between {FPS_RANGE[0]:g} and {top:g} "
                             "(24 or 25 is typical).")
    return value


def get_mode(name: str) -> Mode:
    key = MODE_ALIASES.get(name, name)
    if key not in MODES:
        raise EchoMimicError(f"unknown mode '{name}'; choose one of {', '.join(list(MODES) + list(MODE_ALIASES))}.")
    return MODES[key]
