"""Validation clips of an EchoMimicV3 LoRA run: the inference on a fixed reference and speech at each checkpoint.

``validation: {reference: me.png, audio: hello.wav}`` renders ``OUTPUT/samples/step-XXXXXXXX.mp4`` with the current
adapters, as ``echomimic animate --version v3-flash`` would with the exported LoRA at strength 1 (the same sampler:
8 Flow-UniPC steps, audio CFG, official TeaCache, colour transfer; the run's size; the seed fixed, so the clips of
successive checkpoints differ only by the training). The reference is framed as the training frames are (centre crop
to the run's aspect, resize). The inputs are read and checked before any network loads; their CLIP features, audio
windows and prompt states are computed once with the run's encoders; the VAE loads only while a clip decodes.
"""
from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError
from .config import V3Validation

log = logging.getLogger("trainer.v3")


@dataclass
class Validator:
    """Checked validation inputs (:func:`prepare`), then their encodings (:meth:`encode`), then clips (:meth:`render`)."""
    cfg: V3Validation
    ref_u8: np.ndarray       # at the run's size
    wav: np.ndarray          # the start of the speech the mp4 muxes (the clip's length and 1 s more)
    sample_rate: int
    samples_16k: np.ndarray  # loudness-normalised, cut to the frames
    frames: int
    prompt: str
    encoded: dict = field(default_factory=dict)

    def encode(self, encoders, prompt_states: torch.Tensor) -> None:
        from echomimic_lib.pipeline.wan.encoders import clip_features

        self.encoded = {"clip": clip_features(encoders.files["clip"], self.ref_u8, device=encoders.device,
                                              dtype=encoders.dtype, model=encoders.clip),
                        "windows": encoders.wav2vec.windows(self.samples_16k, self.frames).cpu(),
                        "prompt": prompt_states[None]}

    @torch.no_grad()
    def render(self, model, files: dict, step: int, out_dir: Path, device, dtype) -> Path:
        """Sample with ``model`` as it is now and write ``out_dir/samples/step-N.mp4`` (whole or not at all)."""
        from echomimic_lib.io.video_writer import Mp4Writer
        from echomimic_lib.models.wan.vae import load_wan_vae
        from echomimic_lib.pipeline.wan.sampler import V3Settings, generate

        settings = V3Settings(steps=self.cfg.steps, audio_cfg=self.cfg.audio_cfg, seed=self.cfg.seed,
                              teacache_skip_start=min(5, self.cfg.steps))
        was_training = model.training
        model.eval()
        vae = load_wan_vae(files["vae"], dtype=dtype, device=device)
        try:
            e = self.encoded
            res = generate(model, vae, self.ref_u8, e["prompt"], e["clip"], e["windows"], settings)
        finally:
            model.train(was_training)
            del vae
            gc.collect()
        path = Path(out_dir) / "samples" / f"step-{step:08d}.mp4"
        writer = Mp4Writer(path, 25, audio=self.wav, sample_rate=self.sample_rate)
        try:
            writer.write(res.frames)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise


def prepare(cfg: V3Validation, width: int, height: int, data_frames: int, data_prompt: str) -> Validator | None:
    """Read and check the validation inputs (no network); ``None`` when validation is off."""
    from echomimic_lib.audio.wav2vec import FPS
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.jobs.reference_input import read_reference
    from echomimic_lib.jobs.v3_speech import read_v3_speech

    from .windows import fit_frame

    cfg.check()
    if not cfg.reference:
        return None
    frames = cfg.frames or data_frames
    try:
        ref = read_reference(cfg.reference)
        # one decode pass holding the start the clip uses: the loudness is still measured over the whole track
        speech = read_v3_speech(cfg.audio, frames)
    except EchoMimicError as exc:
        raise ConfigError(f"validation: {exc}".replace("--reference", "reference").replace("--audio", "audio")) from None
    if speech.seconds < (frames - 1) / FPS:
        raise ConfigError(f"validation.audio {cfg.audio}: {speech.seconds:.2f} s of speech, {frames} frames need "
                          f"{frames / FPS:.2f} s; give longer speech or set validation.frames (4k+1)")
    keep = math.ceil((frames / FPS + 1.0) * speech.sample_rate)  # the sound muxed under the clip (and 1 s more)
    wav = speech.wav[:, :keep].copy() if keep < speech.wav.shape[1] else speech.wav
    return Validator(cfg, fit_frame(ref, width, height), wav, speech.sample_rate, speech.prepared(frames), frames,
                     cfg.prompt or data_prompt)
