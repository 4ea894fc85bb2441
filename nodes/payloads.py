"""What travels on the pack's custom sockets (typed dataclasses, never string-keyed dicts), and the
IMAGE / MASK / AUDIO conversions between ComfyUI tensors and the library's arrays.

Landmark and pose payloads keep the whole driving sequence; the sampler retimes it to the number of video
frames the audio needs and draws one context window at a time (memory stays flat in video length).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..echomimic_lib.errors import EchoMimicError
from ..echomimic_lib.landmarks import draw_landmark_sequence
from ..echomimic_lib.pipeline import FrameCondition
from ..echomimic_lib.pose import draw_hands_batch
from ..echomimic_lib.retime import retime_indices
from .base import socket

log = logging.getLogger(__name__)

MODEL = "ECHOMIMIC_MODEL"
AUDIO_FEATURES = "ECHOMIMIC_AUDIO_FEATURES"
LANDMARKS = "ECHOMIMIC_LANDMARKS"
POSES = "ECHOMIMIC_POSES"
RETIME_POLICIES = ["ping-pong", "loop", "hold-last", "stretch", "fail"]
POSE_RETIME_POLICIES = RETIME_POLICIES + ["continue"]  # continue: the poses once, then gestures matched to the speech


@dataclass(eq=False)
class ModelHandle:
    """A loaded model set plus how the loader wants it placed (ECHOMIMIC_MODEL).

    ``patchers``: network name -> the model ComfyUI manages for it (comfy ModelPatcher, or the bridge's
    stand-in); ``key`` names the weights the set was built from (files, dtype, LoRA, fp8)."""

    models: Any  # echomimic_lib.model_set.EchoMimicModels
    weights: str  # 'v1_audio' | 'v1_pose' | 'v2'
    variant: str  # 'normal' | 'acc'
    keep_loaded: bool
    key: tuple = ()
    patchers: dict = field(default_factory=dict)
    low_vram: bool = False  # the denoiser is streamed block by block
    fp8: bool = False
    compiled: bool = False  # the denoiser's blocks are compiled (the loader's 'compile')


@dataclass(eq=False)
class AudioTrack:
    """Whisper features of one clip at a frame rate, and the clip itself for muxing (ECHOMIMIC_AUDIO_FEATURES)."""

    features: Any  # echomimic_lib.audio.AudioFeatures (rows on CPU)
    fps: float
    audio: dict  # ComfyUI AUDIO

    @property
    def frame_count(self) -> int:
        """Frames of a video that follows the audio: floor(seconds x fps), as in ``echomimic animate``."""
        return self.features.video_frame_count(self.fps)


@dataclass(eq=False)
class LandmarkTrack:
    """A face-landmark sequence in pixel coordinates of a ``coord_size`` frame (ECHOMIMIC_LANDMARKS)."""

    pixels: np.ndarray  # (F, N, 2)
    coord_size: tuple[int, int]  # (W, H) the pixels refer to
    fps: float | None
    parts: frozenset | None = None  # None: the model's default parts
    retime: str = "ping-pong"
    sequence: Any = None  # LandmarkSequence with mesh and pose (extractor output; None once aligned)
    report: str = ""

    def condition(self, num_frames: int, width: int, height: int, fps: float, default_parts) -> FrameCondition:
        idx = retime_indices(len(self.pixels), num_frames, self.retime, self.fps, fps)
        parts = frozenset(default_parts) if self.parts is None else self.parts  # empty = no parts, not the default
        px, coord = self.pixels[idx], self.coord_size
        return FrameCondition(num_frames, lambda sel: draw_landmark_sequence(px[list(sel)], (width, height), parts, coord_size=coord))


@dataclass(eq=False)
class PoseTrack:
    """A V2 hand-pose sequence and how to fit it to the video length (ECHOMIMIC_POSES)."""

    sequence: Any  # echomimic_lib.pose.PoseSequence
    retime: str = "continue"  # the V2 default: the sequence once, then gestures matched to the speech
    notes: list = field(default_factory=list)
    stabilize: str = "off"  # steadier hands (echomimic_lib.pose.stabilize), applied to the retimed frames as animate does

    def condition(self, num_frames: int, width: int, height: int, fps: float, audio=None) -> FrameCondition:
        from ..echomimic_lib.pose.gestures.continuation import retime_pose_sequence
        from ..echomimic_lib.pose.stabilize import stabilize_poses

        # continue needs the speech (the sampler passes its AUDIO); without it, or without a gesture in the
        # sequence, it falls back to ping-pong and says so in the log
        seq = retime_pose_sequence(self.sequence, num_frames, fps, self.retime, audio=audio)
        seq = stabilize_poses(seq, self.stabilize, flag="stabilize")  # a folder saved stabilized: not twice (warns)
        return FrameCondition(num_frames, lambda sel: draw_hands_batch(seq, sel, (width, height)))


socket(MODEL, ModelHandle, "EchoMimic Model Loader or EchoMimic LoRA")
socket(AUDIO_FEATURES, AudioTrack, "EchoMimic Audio Encoder or Landmark-Only Driving")
socket(LANDMARKS, LandmarkTrack, "EchoMimic Landmark Extractor, Part-Aware Aligner or Face Track")
socket(POSES, PoseTrack, "EchoMimic Hand-Pose Sequence Loader or Gestures from Audio")


# ------------------------------------------------------------------------------------------ tensors
def image_batch(image, what: str = "image") -> np.ndarray:
    """ComfyUI IMAGE [B, H, W, C] float 0..1 -> uint8 (B, H, W, 3) RGB."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise EchoMimicError(f"{what}: expected a ComfyUI IMAGE [batch, height, width, 3], got {shape}; connect a colour "
                             "picture (RGB, or RGBA: its alpha is dropped). A MASK or a 1-channel picture: turn it into an "
                             "IMAGE first (core's Convert Mask to Image).")
    if image.shape[0] == 0:
        raise EchoMimicError(f"{what}: the IMAGE batch is empty (no frame in it: a Load Video of a file without frames, "
                             "or a frame range / skip past its end, or a node that dropped them all); connect a picture or "
                             "frames that are there.")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise EchoMimicError(f"{what}: the IMAGE is {image.shape[2]}x{image.shape[1]} px (no pixels); connect a picture or "
                             "frames that are not empty (check a crop or resize node before this one).")
    return (image[..., :3].detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy())


def first_image(image, what: str = "image") -> np.ndarray:
    """The one picture an input takes: the first of an IMAGE batch; a batch of several is said in the log (a video's
    frames linked to a picture input take the first frame, which is rarely what was meant)."""
    n = len(image) if isinstance(image, torch.Tensor) and image.dim() == 4 else 1
    if n > 1:
        log.warning("%s: a batch of %d pictures; the first is used (link one picture, e.g. through core's ImageFromBatch).", what, n)
    return image_batch(image[:1] if isinstance(image, torch.Tensor) else image, what)[0]


def to_image(frames) -> torch.Tensor:
    """uint8 / float (B, H, W, 3) or one (H, W, 3) -> ComfyUI IMAGE float32 [B, H, W, 3] in 0..1."""
    t = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if t.dim() == 3:
        t = t.unsqueeze(0)
    return (t.float() / 255.0 if t.dtype == torch.uint8 else t.float()).contiguous()


def to_mask(mask) -> torch.Tensor:
    """uint8 0..255 or float (H, W) -> ComfyUI MASK [1, H, W] float 0..1."""
    t = torch.as_tensor(np.asarray(mask))
    return (t.float() / 255.0 if t.dtype == torch.uint8 else t.float()).unsqueeze(0)


def check_finite(image: torch.Tensor, what: str, fix: str) -> None:
    """NaN / inf in an IMAGE or MASK (a broken upstream node): refused; casting them to pixels gave arbitrary values."""
    if not bool(torch.isfinite(image).all()):
        raise EchoMimicError(f"{what}: the {'MASK' if what == 'mask' else 'IMAGE'} holds NaN or infinite values (a node "
                             f"before this one produced them); {fix}")


def mask_plane(mask) -> torch.Tensor:
    """ComfyUI MASK [B, H, W] (or [H, W]) -> its one (H, W) plane. The V1 face mask is one picture for the whole video
    (the pipeline has no per-frame masks): a batch of equal masks is that mask, a batch of differing ones is refused (it
    used the first without a word); NaN / inf and a mask with nothing selected are refused too (the official inference
    marks the whole picture when it finds no face, never nothing)."""
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3):
        raise EchoMimicError("mask: expected a ComfyUI MASK [batch, height, width].")
    if mask.dim() == 3 and mask.shape[0] == 0:
        raise EchoMimicError("mask: the MASK batch is empty (no mask in it); connect EchoMimic Reference Preparation's "
                             "mask, or disconnect 'mask' to animate the whole picture.")
    check_finite(mask, "mask", "connect EchoMimic Reference Preparation's mask, or disconnect 'mask' to animate the "
                               "whole picture.")
    plane = mask[0] if mask.dim() == 3 else mask
    if mask.dim() == 3 and mask.shape[0] > 1 and not bool((mask == plane).all()):
        raise EchoMimicError(f"mask: a batch of {mask.shape[0]} different masks; the sampler takes one face mask for the "
                             "whole video (no per-frame masks). Pass one mask (EchoMimic Reference Preparation's mask, "
                             "or one picked from the batch).")
    if not bool((plane > 0).any()):
        raise EchoMimicError("mask: the mask is all zero (nothing selected): the model would be told there is no face "
                             "to animate. Connect EchoMimic Reference Preparation's mask (the face region), or "
                             "disconnect 'mask' to animate the whole picture.")
    return plane


def comfy_waveform(wave: torch.Tensor) -> torch.Tensor:
    """An AUDIO waveform as ComfyUI's [batch, channels, samples]. Load Audio gives that; some audio nodes give
    [channels, samples] or [samples], which the encoders take and core's Create Video / Save Video do not."""
    return wave if wave.dim() >= 3 else wave.reshape((1,) * (3 - wave.dim()) + tuple(wave.shape))


def trim_audio(audio: dict, num_frames: int, fps: float) -> dict:
    """The AUDIO cut to the video's duration (num_frames / fps), for CreateVideo ([batch, channels, samples])."""
    wave, sr = comfy_waveform(audio["waveform"]), int(audio["sample_rate"])
    keep = min(wave.shape[-1], math.ceil(num_frames / fps * sr))
    return {"waveform": wave[..., :keep], "sample_rate": sr}
