"""An EchoMimicV3 request and its plan (``echomimic animate --version v3-flash``): :func:`plan_v3` checks every input of
:func:`echomimic_lib.jobs.animate_v3.run_v3` -- the numbers (:func:`check_v3_settings`, the V3 nodes' rule too), the
output, the reference, the speech's length, the LoRA files against the set's shapes (:func:`check_lora`) -- with no
weight loaded and nothing downloaded."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import EchoMimicError, as_whole

log = logging.getLogger(__name__)
SMOKE_LENGTH = 25  # frames a smoke run renders without --length: the first second at 25 fps (4k+1)


@dataclass
class V3Request:
    reference: str
    audio: str
    output: str
    models: str  # the v3-flash folder
    prompt: str = "A person is speaking."
    steps: int = 8
    audio_cfg: float = 3.0
    seed: int = 43
    size: tuple[int, int] = (768, 768)  # target area (width, height) of the size rule
    length: int = 0  # 0: one shot (<= 81 frames); more than 81: chunked
    long_mode: str = "reanchor"  # chunks of a long clip: reanchor (each from the reference) or continue (pipeline.wan.long)
    teacache: str = "official"
    color_transfer: bool = True
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype | None = None  # None: dtype (--dtype auto on Apple MPS: ComfyUI's, devices.resolve_vae_dtype)
    download: bool = True  # fetch missing files from Hugging Face first (the command line: unless --offline or --smoke)
    lora: str | tuple[str, ...] | None = None  # a Wan2.1 1.3B LoRA .safetensors (see docs/v3.md), or a list / tuple to stack
    lora_strength: float | tuple[float, ...] = 1.0  # one for every LoRA, or one each in order
    compile: bool = False  # regional torch.compile of the transformer's blocks (echomimic_lib.speed.compile_transformer)
    resumable: bool = False  # a long clip keeps its finished chunks beside the output; a rerun goes on (pipeline.wan.chunk_state)
    fp8: bool = False  # the transformer blocks' weights stored in float8_e4m3fn, upcast per layer (models.wan.transformer_to_fp8)
    vae_tiling: bool = False  # the VAE encodes and decodes in overlapping tiles (models.wan.vae.set_tiling): a lower peak
    smoke: bool = False  # a smoke run (tiny random weights): length 0 means its first second, SMOKE_LENGTH frames


@dataclass
class V3Plan:
    """A checked request (:func:`plan_v3`): everything the render needs except the networks."""
    req: V3Request
    output: Path
    ref_u8: np.ndarray       # the reference at the sample size
    wav: object              # the speech as the mp4 muxes it
    sample_rate: int
    speech: object           # jobs.v3_speech.V3Speech: the track's start and its whole loudness
    frames: int
    size: tuple[int, int]    # (width, height)
    lora: tuple = ()         # the request's LoRA files, read and checked: (lora.wan_files.WanLoraFile, strength) each


def plan_v3(req: V3Request) -> V3Plan:
    """Every input check of :func:`run_v3`, no weights and no download (raises :class:`EchoMimicError`)."""
    from .output_file import check_output
    from .reference_input import read_reference
    from . import speech_length
    from .speech_length import HEADER_MARGIN, check_video_length, header_seconds
    from ..audio.resample import resampled_length
    from ..audio.wav2vec import FPS, frame_count
    from .v3_speech import read_v3_speech
    from ..pipeline.wan.sampler import resize_reference, sample_size
    from ..speed import check_speed_options

    if req.compile:  # V3's only speed option: on a CPU a warning that compiling takes minutes
        check_speed_options(req.device, compile=True)
    if req.fp8:  # a torch without float8, or Apple MPS: refused before any file is read
        from ..memory import check_fp8

        check_fp8(req.device)
    check_v3_numbers(req)
    out = check_output(req.output, {"--reference": req.reference, "--audio": req.audio})
    ref = read_reference(req.reference, "v3")
    from .speech_input import check_speech_file

    check_speech_file(req.audio)  # a missing file or a folder named as --audio (was "x: file not found." from the header read)
    # Speech longer than a video can be (MAX_LENGTH frames at 25 fps) is refused: V3 normalises loudness over the whole
    # clip, so the whole file is decoded whatever --length is; the header first (1.5 times over), then the exact length.
    # One pass holds only the start a video of ``cap`` frames uses, the rest measured a piece at a time.
    check_video_length(req.audio, header_seconds(req.audio), FPS, speech_length.MAX_LENGTH, HEADER_MARGIN, whole_clip=True)
    length = req.length or (SMOKE_LENGTH if req.smoke else 0)
    cap = max(81, int(length))
    speech = read_v3_speech(req.audio, cap)
    wav, sr = speech.wav, speech.sample_rate
    check_video_length(req.audio, resampled_length(speech.samples, sr) / 16000.0, FPS, speech_length.MAX_LENGTH,
                       whole_clip=True)
    seconds = speech.seconds
    frames = frame_count(seconds, cap)
    if req.smoke and not req.length:  # the smoke run's own length: not a --length the user gave (was "--length 25")
        if length > frames:
            log.info("smoke run: the first %d frames (1 s), or as much as the audio covers: it lasts %.2f s; the video "
                     "has %d frames.", length, seconds, frames)
        else:
            frames = length
    elif length and length < frames:
        frames = frame_count(length / FPS, length)
        if frames != length:  # (was silent)
            log.warning("--length %d: EchoMimicV3 renders 4k+1 frames (1, 5, ... 77, 81, 85, ...); the video has %d.",
                        length, frames)
    elif length and length > frames and length <= int(seconds * FPS):  # the audio covers it: the 4k+1 rule
        log.warning("--length %d: EchoMimicV3 renders 4k+1 frames (1, 5, ... 77, 81, 85, ...); the video has %d.",
                    length, frames)  # (was "beyond the audio" of a clip long enough for it)
    elif length and length > frames:  # as V1/V2: the video follows the audio, and says so
        log.warning("--length %d is beyond the audio: it lasts %.2f s, %d frames at %g fps (4k+1); the video has %d frames "
                    "(the length follows the audio).", length, seconds, frames, FPS, frames)
    if not length and frame_count(seconds, speech_length.MAX_LENGTH) > frames:  # the default one shot (was silent)
        log.warning("the speech lasts %.2f s; EchoMimicV3 renders one %d-frame shot (%.2f s) of it by default, as the "
                    "official script: --length %d renders all of it, in 81-frame chunks (--long-mode).", seconds, frames,
                    frames / FPS, frame_count(seconds, speech_length.MAX_LENGTH))
    try:
        h, w = sample_size(ref.shape[1], ref.shape[0], req.size)
    except EchoMimicError as exc:  # scaled under 16 px by a small --width x --height: the size rule's own reason
        if min(ref.shape[:2]) >= 16:
            raise EchoMimicError(f"--reference {req.reference}: {exc} (the target area is --width x --height)") from None
        raise EchoMimicError(f"--reference {req.reference}: {ref.shape[1]}x{ref.shape[0]} px is too small; EchoMimicV3 needs at "
                             "least 16 px on each side and renders at the reference's size (never enlarged, up to --width x "
                             "--height): give a larger image.") from None
    if ref.shape[1] * ref.shape[0] < req.size[0] * req.size[1] and (w, h) != tuple(req.size):
        log.warning("--reference is %dx%d px, smaller than --width x --height %dx%d: EchoMimicV3 renders at the reference's "
                    "size, %dx%d (never enlarged, as the official code); give a larger image for a larger video.",
                    ref.shape[1], ref.shape[0], *req.size, w, h)
    lora = check_lora(req) if req.lora else ()
    keep = math.ceil((frames / FPS + 1.0) * sr)  # the sound muxed under the frames (and 1 s more), not the whole track:
    wav = wav[:, :keep].copy() if keep < wav.shape[1] else wav  # the loudness is in ``speech``
    if req.resumable:  # something that is no folder where the chunks are kept: refused before any work
        from ..pipeline.wan.chunk_state import check_state_folder, chunk_state_path

        check_state_folder(chunk_state_path(out))
    return V3Plan(req, out, resize_reference(ref, h, w), wav, sr, speech, frames, (w, h), lora)


def check_v3_numbers(req: V3Request) -> None:
    """The request's numbers, before any file is read: finite and in range (a NaN guidance rendered noise, a negative
    length or a size under 16 px stopped with a traceback, after the weights had loaded)."""
    from . import speech_length  # (the bound read now, where it is defined)

    check_v3_settings(req.steps, req.audio_cfg, req.seed, req.long_mode, req.size,
                      length_check=(req.length, speech_length.MAX_LENGTH))


CLI_NAMES = {"steps": "--steps", "audio_cfg": "--audio-cfg", "seed": "--seed", "long_mode": "--long-mode",
             "size": ("--width", "--height"), "teacache": "--teacache"}


def check_v3_settings(steps, audio_cfg, seed, long_mode, size, teacache=None, names=None, length_check=None) -> None:
    """V3's numbers and choices (shared by the command line and the V3 nodes, whose linked values ComfyUI does not
    range-check): raises :class:`EchoMimicError` naming the option (``names``: option -> its name for the user;
    ``size`` names its width and height) before any weight is read. ``seed`` / ``teacache`` None: not checked."""
    from .animate_checks import MAX_CFG, MAX_STEPS, SIZE_RANGE
    from ..pipeline.wan.sampler import SIZE_MULTIPLE

    names = names or CLI_NAMES

    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not (whole(steps) and 1 <= steps <= MAX_STEPS):
        raise EchoMimicError(f"{names['steps']} {steps}: give 1..{MAX_STEPS} (flash-pro default 8)")
    if not (isinstance(audio_cfg, (int, float)) and math.isfinite(audio_cfg) and 0 <= audio_cfg <= MAX_CFG):
        raise EchoMimicError(f"{names['audio_cfg']} {audio_cfg}: give a number from 0 to {MAX_CFG:g} (official 3.0; 1 or "
                             "less: one pass per step, no audio guidance)")
    if seed is not None and not (as_whole(seed) is not None and 0 <= as_whole(seed) < 2**64):
        raise EchoMimicError(f"{names['seed']} {seed}: use a whole number from 0 to 2^64-1 (default 43)")
    if length_check is not None:
        length, most = length_check
        if not (whole(length) and 0 <= length <= most):
            raise EchoMimicError(f"--length {length}: the number of frames must be 0 (follow the audio) .. {most}")
    from ..pipeline.wan.long import LONG_MODES

    if long_mode not in LONG_MODES:
        raise EchoMimicError(f"{names['long_mode']} {long_mode!r}: one of {', '.join(LONG_MODES)} (reanchor: every 81-frame "
                             "chunk starts from the reference; continue: each chunk goes on from the previous one's last "
                             "frames)")
    if teacache is not None:
        from ..pipeline.wan.teacache import MODES

        if teacache not in MODES:
            raise EchoMimicError(f"{names['teacache']} {teacache!r}: one of {', '.join(MODES)}")
    for name, v in zip(names["size"], size):
        if not (whole(v) and v >= SIZE_MULTIPLE):
            raise EchoMimicError(f"{name} {v}: the EchoMimicV3 target area needs at least {SIZE_MULTIPLE} px a side (default "
                                 "768x768; the reference is scaled down to about that many pixels, never up)")
        if v > SIZE_RANGE[1]:  # a large photo at its own size: hours and more memory than a GPU has (was not checked)
            from ..models.wan import WanV3Config
            from ..pipeline.wan.memory import denoise_bytes

            gb = denoise_bytes(WanV3Config(), 81, v // 16 * 16, v // 16 * 16) / 1e9
            raise EchoMimicError(f"{name} {v}: the EchoMimicV3 target area is at most {SIZE_RANGE[1]} px a side (the V3 "
                                 f"Sampler node's range): a picture that large, rendered at {v}x{v}, would need about {gb:.0f} GB for the "
                                 "transformer's activations alone, and flash-pro was trained at 768 px. Use e.g. 768.")


def lora_shapes(folder: Path) -> dict:
    """The transformer's parameter shapes without loading a weight: the base and V3 files' safetensors headers (the
    V3 file over the base, as the loader merges them), else -- files not there yet, to be downloaded -- the release's
    network's (built on the meta device)."""
    from safetensors import safe_open

    from ..models.wan import WanV3Config, WanV3Transformer
    from ..models.wan.sources import resolved_files

    files = resolved_files(folder)
    shapes: dict = {}
    try:
        for path in (files["base"] / "diffusion_pytorch_model.safetensors", files["flash"]):
            with safe_open(str(path), framework="pt", device="cpu") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        return shapes
    except Exception:  # missing (the release is downloaded), or unreadable (the loader says why); checked again once loaded
        with torch.device("meta"):
            return {k: tuple(p.shape) for k, p in WanV3Transformer(WanV3Config()).named_parameters()}


def check_lora(req: V3Request) -> tuple:
    """The request's LoRA files, each read and checked (strengths and their count, no file twice; every key maps onto
    the set's parameters and fits), no weights: ((WanLoraFile, strength), ...)."""
    from .animate_checks import check_lora_stack
    from ..lora.wan_files import read_wan_lora, resolve_wan_lora

    stack = check_lora_stack(req.lora, req.lora_strength)
    shapes = lora_shapes(Path(req.models)) if stack else {}
    out = []
    for path, strength in stack:
        lora = read_wan_lora(path)
        resolve_wan_lora(lora, shapes)
        out.append((lora, strength))
    return tuple(out)
