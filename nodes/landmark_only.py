"""EchoMimic Landmark-Only Driving: the paper's "L" mode in ComfyUI. Stands in for the Audio Encoder: the
model's unconditional audio (zero whisper tokens) for as many frames as the landmark sequence lasts, and a
silent AUDIO of that length for Create Video."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..echomimic_lib.audio.unconditional import UnconditionalAudio
from ..echomimic_lib.errors import EchoMimicError
from ..echomimic_lib.modes import DEFAULT_FPS, check_frame_rate
from .base import Node, frame_rate, link
from .payloads import AUDIO_FEATURES, LANDMARKS, AudioTrack

SILENT_RATE = 16000


def unconditional(landmarks, fps: float) -> tuple[AudioTrack, dict, int]:
    if landmarks is None or not hasattr(landmarks, "pixels"):
        raise EchoMimicError("landmarks: connect EchoMimic Landmark Extractor, Part-Aware Aligner or Face Track.")
    fps = check_frame_rate(fps)  # the sampler's 1..120: a linked value is not range-checked by ComfyUI
    n_src = len(landmarks.pixels)
    src_fps = landmarks.fps or fps
    frames = max(1, int(np.floor(n_src * fps / src_fps + 1e-9)))
    silent = {"waveform": torch.zeros(1, 1, math.ceil(frames / fps * SILENT_RATE)), "sample_rate": SILENT_RATE}
    return AudioTrack(UnconditionalAudio(frames, fps), float(fps), silent), silent, frames


class EchoMimicLandmarkOnlyAudio(Node):
    OUTPUTS = (
        (AUDIO_FEATURES, "audio_features", "Unconditional audio features as long as the landmark sequence (for the "
                                           "sampler)."),
        ("AUDIO", "audio", "Silence of the same length (for Create Video)."),
        ("INT", "frame_count", "The number of video frames."),
    )
    DESCRIPTION = ("Landmark-only driving (no audio, the paper's 'L' mode) with the V1 landmark model: the video follows "
                   "the landmarks alone, including the mouth, and lasts as long as the driving sequence.")

    @classmethod
    def inputs(cls):
        return {
            "landmarks": link(LANDMARKS, "The driving landmarks; their length sets the video's (include 'mouth' in the "
                                         "aligner's parts: no audio moves the lips here)."),
            "fps": frame_rate("Frame rate of the output video.", default=float(DEFAULT_FPS), step=1.0),
        }

    def execute(self, landmarks, fps):
        return unconditional(landmarks, fps)
