"""EchoMimic Audio Encoder: ComfyUI AUDIO -> whisper-tiny features per video frame (+ the audio for muxing)."""
from __future__ import annotations

import torch

from ..echomimic_lib.audio import encode_audio
from ..echomimic_lib.audio import check_audible as check_samples_audible
from ..echomimic_lib.audio.waveform import check_sample_rate, read_raw_audio
from ..echomimic_lib.errors import EchoMimicError
from ..echomimic_lib.modes import DEFAULT_FPS, check_frame_rate
from .base import Node, frame_rate, link
from .loader import finish, placement
from .payloads import AUDIO_FEATURES, MODEL, AudioTrack


def check_audible(audio) -> None:
    """Refuse a clip with no audible sound: EchoMimic would animate a still, closed mouth."""
    wave = audio.get("waveform") if isinstance(audio, dict) else None
    if not isinstance(wave, torch.Tensor):
        raise EchoMimicError("audio: expected a ComfyUI AUDIO (connect Load Audio, or the audio of Get Video Components).")
    check_sample_rate(audio.get("sample_rate"))  # before whisper is loaded (1 GHz was "too short" after it)
    if (wave.ndim == 3 and wave.shape[0] != 1) or (wave.numel() and not bool(torch.isfinite(wave).all())):
        read_raw_audio(audio)  # the library's own words (a batch of clips, NaN/Inf samples), before whisper is loaded
    if wave.numel() == 0:
        return  # the library says "the waveform is empty"
    check_samples_audible(wave, "Connect a clip with audible speech, or check that Load Audio picked the right file.")


def encode(handle, audio: dict, fps: float) -> AudioTrack:
    """Run whisper on ComfyUI's device (loaded by ComfyUI's model manager for this stage only, unless
    keep_loaded); features are kept on the CPU (the sampler moves one window at a time). ``fps``: the sampler's
    1..120, checked before whisper runs (a linked value is not range-checked by ComfyUI)."""
    fps = check_frame_rate(fps)
    check_audible(audio)
    place = placement(handle)
    try:
        place.enter("audio")
        features = encode_audio(audio, handle.models.audio_encoder, device="cpu", dtype=torch.float32)
    finally:
        finish(place)
    return AudioTrack(features, fps, audio)


class EchoMimicAudioEncoder(Node):
    OUTPUTS = (
        (AUDIO_FEATURES, "audio_features", "Whisper features for every video frame; they know their frame count at this "
                                           "fps."),
        ("AUDIO", "audio", "The same audio, for Create Video (the sampler also outputs it cut to the video length)."),
        ("INT", "frame_count", "How many video frames the audio yields at this fps."),
    )
    DESCRIPTION = "Encodes speech with the model's whisper-tiny into per-frame audio features (computed once, sliced per window)."

    @classmethod
    def inputs(cls):
        return {
            "model": link(MODEL, "From EchoMimic Model Loader (its whisper-tiny encoder is used)."),
            "audio": link("AUDIO", "Speech that drives the animation (Load Audio accepts audio and video files)."),
            "fps": frame_rate("Frame rate of the output video (fractional rates such as 29.97 work); the number of frames follows "
                              "the audio length.", default=float(DEFAULT_FPS)),
        }

    def execute(self, model, audio, fps):
        track = encode(model, audio, fps)
        return (track, audio, track.frame_count)
