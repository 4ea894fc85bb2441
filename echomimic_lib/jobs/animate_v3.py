"""Headless EchoMimicV3 flash-pro: files in, mp4 out (``echomimic animate --version v3-flash``).

Models folder layout (``<models>/v3-flash/``; every name as the releases ship it):

    Wan2.1-Fun-V1.1-1.3B-InP/   config.json, diffusion_pytorch_model.safetensors, Wan2.1_VAE.pth
    echomimicv3-flash-pro/      diffusion_pytorch_model.safetensors (full or audio-only)
    chinese-wav2vec2-base/      Hugging Face wav2vec2 folder
    umt5-xxl/                   Hugging Face UMT5EncoderModel + tokenizer
    clip-vit-h-14/              Hugging Face CLIPVisionModel (ViT-H/14)
    vae/                        optional diffusers AutoencoderKLWan folder, used when Wan2.1_VAE.pth is absent

Where each comes from: :mod:`..models.wan.sources`; ``echomimic download --weights v3-flash`` fetches them.

The request (:class:`V3Request`) and every check before a weight loads (:func:`plan_v3`): :mod:`.v3_plan`.

LoRA (``lora``, ``lora_strength``): a community Wan2.1 1.3B LoRA (:mod:`..lora.wan_files`), or several (a list / tuple:
:mod:`.lora_args`), each read and checked against the set's parameter names and shapes in :func:`.v3_plan.plan_v3` (from the
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
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import as_whole
from .v3_plan import V3Plan, V3Request, plan_v3

log = logging.getLogger(__name__)


def model_files(root: Path, download: bool = False) -> dict:
    """The set's files in ``root``; missing ones are downloaded first when ``download`` (else the error lists each
    missing file, where it was looked for and where to get it)."""
    from ..model_set import ensure_v3

    return ensure_v3(root, download=download)


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

    from ..models.wan.loader import check_v3_headers

    check_v3_headers(files["base"], files["flash"])  # a wrong or damaged transformer file: said before anything loads
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
    from .output_file import OutputClaim

    t0 = time.time()
    plan = plan_v3(req)
    with OutputClaim(plan.output):  # a second render of the same -o is refused before any weight loads
        return _run_v3(req, plan, progress, t0)


def describe_v3(plan: V3Plan) -> str:
    """The status line a V3 render logs once its inputs are checked (V1/V2's: :func:`jobs.animate.describe`)."""
    from ..audio.wav2vec import FPS

    req, (w, h) = plan.req, plan.size
    lora = f", {len(plan.lora)} LoRA" if plan.lora else ""
    return (f"EchoMimicV3 flash-pro: {w}x{h}, {plan.frames} frames = {plan.frames / FPS:.2f} s at {FPS:g} fps, "
            f"{req.steps} steps, audio cfg {req.audio_cfg:g}, seed {req.seed}{lora}, {req.device} "
            f"{str(req.dtype).removeprefix('torch.')}")


def _run_v3(req: V3Request, plan: V3Plan, progress, t0: float) -> dict:
    from ..pipeline.wan.encoders import clip_features, encode_prompt

    log.info("%s", describe_v3(plan))
    from ..models.wan.loader import check_v3_headers

    files = model_files(Path(req.models), download=req.download)  # the inputs are checked before any download
    # a base file of another Wan size or kind, a V1/V2 file as the V3 file, an empty or cut one: refused from the files'
    # headers before umT5 (11 GB) and CLIP load for the prompt and the reference (was said only after both)
    check_v3_headers(files["base"], files["flash"])
    log.info("loading the V3 weights from %s", req.models)
    dev = torch.device(req.device)
    prompt = encode_prompt(files["umt5"], req.prompt, cache_dir=Path(req.models) / "prompt_cache", device=dev, dtype=req.dtype)
    clip = clip_features(files["clip"], plan.ref_u8, device=dev, dtype=req.dtype)
    out = render_v3(plan, ready_models(load_v3(files, dev, req.dtype, clip=False, vae_dtype=req.vae_dtype), plan), progress, prompt=prompt, clip=clip)
    return {**out, "seconds": round(time.time() - t0, 1)}
