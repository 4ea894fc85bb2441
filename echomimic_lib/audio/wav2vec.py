"""EchoMimicV3 flash-pro audio features: speech -> per-video-frame windows of all wav2vec2 layer outputs.

Model: chinese-wav2vec2-base in Hugging Face format, run with transformers' own ``Wav2Vec2Model`` and
``Wav2Vec2FeatureExtractor`` (``do_normalize`` read from ``preprocessor_config.json``). The official code
subclasses ``Wav2Vec2Model`` and asks the encoder for ``output_hidden_states``, which returns None on
transformers 5.x; here the per-layer outputs are taken with forward hooks on the encoder layers, which
works on transformers 4.x and 5.x.

Official procedure reproduced (``infer_flash.py`` + ``src/wav2vec2.py``):

1. frames ``F = min(int(duration * 25), cap)``, then ``(F - 1) // 4 * 4 + 1`` (unless F == 1);
2. 16 kHz mono (soxr HQ, librosa's length rule ``ceil(n * 16000 / rate)``);
3. loudness of the **whole** clip normalised to -23 LUFS (:mod:`.loudness`), then the first
   ``int(F / 25 * 16000)`` samples kept;
4. feature extractor -> CNN features -> **linear interpolation (align_corners) to F frames before the
   encoder** -> feature projection -> encoder; the outputs of all layers stacked -> (F, layers, C);
5. per video frame a 5-frame window ``clamp(i-2 .. i+2)`` (edges repeated, nothing masked) -> (1, F, 5, L, C).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .loudness import loudness_normalise

FPS = 25
RATE = 16000
WINDOW = 5
MAX_FRAMES = 81


def frame_count(duration_s: float, cap: int = MAX_FRAMES, vae_scale: int = 4) -> int:
    """Video frames for a clip: 25 fps, at most ``cap``, rounded down to ``vae_scale * k + 1``."""
    from ..errors import EchoMimicError

    if not (isinstance(cap, (int, np.integer)) and cap >= 1):
        raise EchoMimicError(f"a cap of {cap!r} frames: give 1 or more (81 = one flash-pro shot).")
    f = min(int(duration_s * FPS), cap)
    if f < 1:
        raise EchoMimicError(f"the audio is {duration_s:.3f} s long: at least {1 / FPS:.2f} s is needed for one frame; "
                             "give a longer speech clip.")
    return f if f == 1 else (f - 1) // vae_scale * vae_scale + 1


def resample_16k(mono: np.ndarray, rate: float) -> np.ndarray:
    """float32 mono at ``rate`` -> 16 kHz with soxr HQ, padded/cut to ``ceil(n * 16000 / rate)`` (librosa)."""
    from .resample import resample

    out = resample(np.asarray(mono, dtype=np.float32), rate, RATE)
    n = int(math.ceil(mono.shape[0] * RATE / rate)) if float(rate) != RATE else mono.shape[0]
    return np.pad(out, (0, max(0, n - out.shape[0])))[:n]


def window_indices(frames: int, window: int = WINDOW) -> torch.Tensor:
    half = window // 2
    return (torch.arange(frames)[:, None] + torch.arange(-half, half + 1)[None]).clamp(0, frames - 1)


@dataclass
class Wav2VecV3:
    """A loaded wav2vec2 (transformers) + its feature extractor."""

    model: object
    extractor: object

    @property
    def device(self):
        return next(self.model.parameters()).device

    def input_values(self, samples: np.ndarray) -> torch.Tensor:
        iv = self.extractor(samples, sampling_rate=RATE).input_values
        return torch.from_numpy(np.squeeze(np.asarray(iv))).float()[None]

    @torch.no_grad()
    def hidden_states(self, input_values: torch.Tensor, frames: int, trace=None) -> torch.Tensor:
        """(1, N) input values -> (frames, layers, C): every encoder layer's output at 25 fps."""
        m = self.model
        p = next(m.parameters())
        cnn = m.feature_extractor(input_values.to(p.device, p.dtype))  # (1, C, N_cnn)
        interp = F.interpolate(cnn, size=frames, mode="linear", align_corners=True).transpose(1, 2)
        if trace is not None:
            trace("cnn_features", cnn)
            trace("cnn_features_interpolated", interp)
        proj = m.feature_projection(interp)
        h = proj[0] if isinstance(proj, tuple) else proj
        outs = []
        hooks = [layer.register_forward_hook(lambda _m, _i, o: outs.append(o[0] if isinstance(o, tuple) else o))
                 for layer in m.encoder.layers[:-1]]
        try:
            enc = m.encoder(h, attention_mask=None)
        finally:
            for hk in hooks:
                hk.remove()
        last = enc[0] if isinstance(enc, tuple) else enc.last_hidden_state
        states = torch.stack(outs + [last], dim=2)  # (1, F, layers, C); last = encoder output (as official)
        return states[0]

    def windows(self, samples_16k: np.ndarray, frames: int, trace=None) -> torch.Tensor:
        """Loudness-normalised, cut 16 kHz samples -> (1, frames, 5, layers, C) windows."""
        iv = self.input_values(samples_16k)
        if trace is not None:
            trace("input_values", iv)
        hs = self.hidden_states(iv, frames, trace)
        if trace is not None:
            trace("hidden_states", hs)
        return hs[window_indices(frames).to(hs.device)][None]


def prepare_samples(mono_16k: np.ndarray, frames: int) -> np.ndarray:
    """Whole-clip loudness normalisation, then the first ``int(frames / 25 * 16000)`` samples."""
    return loudness_normalise(mono_16k, RATE)[: int(frames / FPS * RATE)]


def load_wav2vec(folder: str | Path, device="cpu", dtype=torch.float32) -> Wav2VecV3:
    """transformers ``Wav2Vec2Model`` + ``Wav2Vec2FeatureExtractor`` from a local Hugging Face folder."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected the chinese-wav2vec2-base folder (Hugging Face format)")
    from ..io.weights import from_hf_folder

    what = "chinese-wav2vec2-base audio encoder"
    model = from_hf_folder(lambda: Wav2Vec2Model.from_pretrained(str(folder), local_files_only=True), folder, what)
    model = model.to(device=device, dtype=dtype).eval()
    extractor = from_hf_folder(lambda: Wav2Vec2FeatureExtractor.from_pretrained(str(folder), local_files_only=True), folder, what)
    return Wav2VecV3(model, extractor)


def audio_windows(encoder: Wav2VecV3, mono: np.ndarray, rate: float, cap: int = MAX_FRAMES) -> tuple[torch.Tensor, int]:
    """Mono samples at ``rate`` -> ((1, F, 5, layers, C) windows, F) for one flash-pro shot."""
    frames = frame_count(mono.shape[0] / float(rate), cap)
    samples = prepare_samples(resample_16k(mono, rate), frames)
    return encoder.windows(samples, frames), frames
