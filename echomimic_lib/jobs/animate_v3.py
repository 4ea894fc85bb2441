"""Headless EchoMimicV3 flash-pro: files in, mp4 out (``echomimic animate --version v3-flash``).

Models folder layout (``<models>/v3-flash/``; every name as the releases ship it):

    Wan2.1-Fun-V1.1-1.3B-InP/   config.json, diffusion_pytorch_model.safetensors, Wan2.1_VAE.pth
    echomimicv3-flash-pro/      diffusion_pytorch_model.safetensors (full or audio-only)
    chinese-wav2vec2-base/      Hugging Face wav2vec2 folder
    umt5-xxl/                   Hugging Face UMT5EncoderModel + tokenizer
    clip-vit-h-14/              Hugging Face CLIPVisionModel (ViT-H/14)
    vae/                        optional diffusers AutoencoderKLWan folder, used when Wan2.1_VAE.pth is absent

Where each comes from: :mod:`..models.wan.sources`; ``echomimic download --weights v3-flash`` fetches them.

LoRA (``lora``, ``lora_strength``): a community Wan2.1 1.3B LoRA (:mod:`..lora.wan_files`), or several (a list / tuple:
:mod:`.lora_args`), each read and checked against the set's parameter names and shapes in :func:`plan_v3` (from the
weight files' headers: no weight loads), merged into the transformer after it loads and before sampling, in order
(``W + sum of strength x delta``: :mod:`..lora.stack`; strength 0: not applied, the base model bit for bit).

Frames: as the official CLI, at most one 81-frame shot of the speech (``(F - 1) // 4 * 4 + 1``); asking for
more (``length`` > 81) renders the whole request in chunks re-anchored on the reference (:mod:`.long`).

``resumable``: a long clip keeps each finished chunk in ``<output>.resume-v3/`` (:mod:`..pipeline.wan.chunk_state`); the
same request run again writes the kept chunks and goes on with the next one. A one-shot clip has nothing to keep.
"""
from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import EchoMimicError, as_whole

log = logging.getLogger(__name__)


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


def model_files(root: Path, download: bool = False) -> dict:
    """The set's files in ``root``; missing ones are downloaded first when ``download`` (else the error lists each
    missing file, where it was looked for and where to get it)."""
    from ..model_set import ensure_v3

    return ensure_v3(root, download=download)


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


@dataclass
class V3Models:
    """The loaded networks of one set (:func:`load_v3`), reusable across requests with the same files, device, dtype.
    CLIP-vision loads once. The umT5 encoder is never kept (11 GB in bf16): a prompt missing from the on-disk cache
    is encoded by :func:`encode_prompts`, which frees it before returning."""
    files: dict
    device: torch.device
    dtype: torch.dtype
    transformer: object
    report: object
    vae: object
    wav2vec: object
    clip: object = None      # CLIPVisionModel (None: loaded per call by clip_features)

    def prompt(self, text: str, cache_dir: Path) -> torch.Tensor:
        """The umT5 states of ``text``: from the cache, else encoded (:func:`encode_prompts`)."""
        from ..pipeline.wan.encoders import encode_prompt

        got = encode_prompts(self.files["umt5"], [text], cache_dir, self.device, self.dtype)
        if text in got:
            return got[text]
        return encode_prompt(self.files["umt5"], text, cache_dir=cache_dir, device=self.device, dtype=self.dtype)


def encode_prompts(umt5_dir, texts, cache_dir: Path, device, dtype: torch.dtype) -> dict:
    """Each of ``texts`` missing from the prompt cache in ``cache_dir``, encoded with one load of the umT5 encoder in
    ``umt5_dir`` and written there; umT5 is released before this returns (references dropped, ``gc``, the CUDA cache
    emptied). Returns {text: states} of those it encoded (empty when every one was cached: umT5 not loaded)."""
    from ..pipeline.wan.encoders import encode_prompt, load_umt5, missing_prompts

    todo = missing_prompts(umt5_dir, texts, cache_dir, dtype)
    if not todo:
        return {}
    dev = torch.device(device)
    umt5 = load_umt5(umt5_dir, dev, dtype, prompts=todo)  # a prompt past 512 tokens: said before the model loads
    try:
        return {t: encode_prompt(umt5_dir, t, cache_dir=cache_dir, device=dev, dtype=dtype, encoder=umt5, warned=True)
                for t in todo}
    finally:
        del umt5
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()


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
    # Speech longer than a video can be (MAX_LENGTH frames at 25 fps) is refused: V3 normalises loudness over the whole
    # clip, so the whole file is decoded whatever --length is; the header first (1.5 times over), then the exact length.
    # One pass holds only the start a video of ``cap`` frames uses, the rest measured a piece at a time.
    check_video_length(req.audio, header_seconds(req.audio), FPS, speech_length.MAX_LENGTH, HEADER_MARGIN, whole_clip=True)
    cap = max(81, int(req.length or 0))
    speech = read_v3_speech(req.audio, cap)
    wav, sr = speech.wav, speech.sample_rate
    check_video_length(req.audio, resampled_length(speech.samples, sr) / 16000.0, FPS, speech_length.MAX_LENGTH,
                       whole_clip=True)
    seconds = speech.seconds
    frames = frame_count(seconds, cap)
    if req.length and req.length < frames:
        frames = frame_count(req.length / FPS, req.length)
        if frames != req.length:  # (was silent)
            log.warning("--length %d: EchoMimicV3 renders 4k+1 frames (1, 5, ... 77, 81, 85, ...); the video has %d.",
                        req.length, frames)
    elif req.length and req.length > frames:  # as V1/V2: the video follows the audio, and says so
        log.warning("--length %d is beyond the audio: it lasts %.2f s, %d frames at %g fps (4k+1); the video has %d frames "
                    "(the length follows the audio).", req.length, seconds, frames, FPS, frames)
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


def apply_lora(models: "V3Models", plan: V3Plan) -> "V3Models":
    """Merge the plan's LoRAs into the loaded transformer in order (strength 0: skipped; none: nothing changes); each
    checked again on the network."""
    active = [(lora, s) for lora, s in plan.lora if s != 0]
    if active:
        from ..lora.stack import apply_wan_stack
        from ..lora.wan_files import resolve_wan_lora, shapes_of

        shapes = shapes_of(models.transformer)
        apply_wan_stack(models.transformer, [(resolve_wan_lora(lora, shapes), s) for lora, s in active], keep_base=False)
    return models


def ready_models(models: "V3Models", plan: V3Plan) -> "V3Models":
    """The loaded set made ready for the plan: its LoRAs merged (:func:`apply_lora`), then, with ``fp8``, the blocks'
    weights stored in fp8 (after the merge: a merge needs the full-precision weights)."""
    apply_lora(models, plan)
    if plan.req.fp8:
        from ..models.wan import transformer_to_fp8

        saved = transformer_to_fp8(models.transformer)
        log.info("fp8 weight storage of the transformer blocks: %.2f GB saved", saved / 1e9)
    return models


def load_v3(files: dict, device, dtype: torch.dtype, clip: bool = True, vae_dtype: torch.dtype | None = None) -> V3Models:
    """The set's networks (``files``: :func:`model_files`) on ``device`` in ``dtype`` (wav2vec2: fp32 on the CPU);
    ``clip``: also CLIP-vision (kept for the following requests). Every change of the transformer's weights (a LoRA
    merge, fp8 storage) belongs after it, in :func:`ready_models`: :func:`render_v3` compiles the blocks (``compile``)
    after that."""
    from ..audio.wav2vec import load_wav2vec
    from ..models.wan import load_v3_transformer
    from ..models.wan.vae import load_wan_vae
    from ..pipeline.wan.encoders import load_clip_vision

    dev = torch.device(device)
    enc = load_wav2vec(files["wav2vec2"])  # fp32 on the CPU, as the official; first: a damaged download is named early
    vision = load_clip_vision(files["clip"], device=dev, dtype=dtype) if clip else None
    model, report = load_v3_transformer(files["base"], files["flash"], dtype=dtype, device=dev)
    vae = load_wan_vae(files["vae"], dtype=vae_dtype or dtype, device=dev)
    return V3Models(files, dev, dtype, model, report, vae, enc, vision)


def render_v3(plan: V3Plan, models: V3Models, progress=None, prompt=None, clip=None, on_frames=None) -> dict:
    """Generate ``plan`` with loaded ``models`` and write its mp4 (atomically: nothing is left on failure);
    ``prompt`` / ``clip``: the umT5 states / CLIP features when computed already; ``on_frames``: called with each
    (k, H, W, 3) uint8 block as it goes to the writer, in order (a long clip's chunks as they stream: no copy kept).
    ``req.resumable``: a long clip's chunks are kept as they finish, and a kept state of this request is gone on from."""
    from ..audio.wav2vec import FPS
    from ..io.video_writer import Mp4Writer
    from ..pipeline.wan import long
    from ..pipeline.wan.encoders import clip_features
    from ..models.wan.vae import set_tiling
    from ..pipeline.wan.sampler import V3Settings, generate
    from .resume_plan import v3_checkpoint_for

    req, frames, ref_u8 = plan.req, plan.frames, plan.ref_u8
    if prompt is None:
        prompt = models.prompt(req.prompt, Path(req.models) / "prompt_cache")
    if clip is None:
        clip = clip_features(models.files["clip"], ref_u8, device=models.device, dtype=models.dtype, model=models.clip)
    if req.compile:  # after load_v3, so after any weight merge (LoRA) it does; once per loaded set (0 when done)
        from ..speed import compile_transformer

        compile_transformer(models.transformer)
    model, vae, enc = models.transformer, models.vae, models.wav2vec
    set_tiling(vae, req.vae_tiling)  # per request: a batch worker's loaded set serves rows with and without
    samples = plan.speech.prepared(frames)  # prepare_samples(resample_16k(mono, rate), frames) of the whole track
    settings = V3Settings(steps=req.steps, audio_cfg=req.audio_cfg, seed=as_whole(req.seed), teacache=req.teacache,
                          teacache_skip_start=min(5, req.steps), color_transfer=req.color_transfer)
    chunk, overlap = long.CHUNK, long.OVERLAP
    keep = v3_checkpoint_for(plan, models, settings, chunk, overlap) if frames > chunk else None
    if req.resumable and keep is None:
        log.info("--resumable: %d frames are one shot, nothing to keep between chunks", frames)
    writer = Mp4Writer(plan.output, FPS, audio=plan.wav, sample_rate=plan.sample_rate)

    def write(block):
        if on_frames is not None:
            on_frames(block)
        writer.write(block)
        if progress and frames > chunk:
            progress(writer.frames_written, frames)

    try:
        if frames <= chunk:
            res = generate(model, vae, ref_u8, prompt, clip, enc.windows(samples, frames), settings)
            write(res.frames)
        else:
            got = keep.load() if keep is not None else None
            for block in keep.stored() if got is not None else ():  # the kept chunks, one at a time
                write(block)
            resume = {} if got is None else {"start_chunk": got.done, "carry": (got.tail, got.anchor)}
            if keep is not None:
                resume["on_chunk"] = keep.save
            for block in long.iter_long(model, vae, enc, ref_u8, prompt, clip, samples, frames, settings, chunk=chunk,
                                        overlap=overlap, mode=req.long_mode, **resume):
                write(block)
        path = writer.commit()
    except BaseException:
        writer.abort()
        if keep is not None and keep.done:
            log.warning("render stopped with %d of %d chunks kept in %s; run the same command again to go on from there",
                        keep.done, len(keep.sizes), keep.path)
        raise
    if keep is not None:
        keep.discard()
    w, h = plan.size
    out = {"output": str(path), "frames": frames, "size": [w, h], "video_seconds": round(frames / FPS, 2),
           "weights": models.report.summary()}
    if keep is not None and keep.resumed_from:
        out["resumed_after_chunk"] = keep.resumed_from
    return out


def run_v3(req: V3Request, progress=None) -> dict:
    """One request: check, fetch what is missing, encode the prompt and the reference (each encoder loaded and
    dropped before the rest loads, as the official), load the networks, render."""
    from ..pipeline.wan.encoders import clip_features, encode_prompt

    t0 = time.time()
    plan = plan_v3(req)
    files = model_files(Path(req.models), download=req.download)  # the inputs are checked before any download
    dev = torch.device(req.device)
    prompt = encode_prompt(files["umt5"], req.prompt, cache_dir=Path(req.models) / "prompt_cache", device=dev, dtype=req.dtype)
    clip = clip_features(files["clip"], plan.ref_u8, device=dev, dtype=req.dtype)
    out = render_v3(plan, ready_models(load_v3(files, dev, req.dtype, clip=False, vae_dtype=req.vae_dtype), plan), progress, prompt=prompt, clip=clip)
    return {**out, "seconds": round(time.time() - t0, 1)}
