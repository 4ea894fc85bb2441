"""One batch job inside a worker, with the models kept loaded between jobs of the same weight set.

The steps are those of :func:`echomimic_lib.jobs.animate.run` and :func:`echomimic_lib.jobs.dub.run_dub`
(the same library calls in the same order, so a batch row renders the same video as the single command);
only the loading differs: :class:`ModelCache` loads a weight set once (with its LoRAs merged and its fp8
storage applied once) and hands the same networks to every following job that uses it.
"""
from __future__ import annotations

import gc
import hashlib
import logging
import resource
import time
from dataclasses import replace

import numpy as np
import torch

log = logging.getLogger(__name__)
SCORE_KEYS = ("av_offset_ms", "av_sync_corr", "av_sync_p", "av_sync_meaningful", "flicker", "face_rate", "shape_drift", "shape_drift_max", "jitter")


class ModelCache:
    """One loaded weight set at a time (a worker's memory holds one): ``get(key, load)`` -> (models, placement)."""

    def __init__(self):
        self.key, self.value, self.loads = None, None, 0

    def get(self, key, load):
        if key != self.key:
            self.clear()
            self.value, self.key = load(), key
            self.loads += 1
        return self.value

    def clear(self) -> None:
        self.key = self.value = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _load_animate(plan, req):
    from ..animate import _staged
    from ..lora_args import lora_stack
    from ...devices import resolve_vae_dtype
    from ...model_set import ensure_weights, load_models

    mode, variant, device, root = plan.mode, plan.variant, plan.device, plan.models_root
    adapters = []
    stack = lora_stack(req.lora, req.lora_strength)
    if stack:  # every adapter read and checked before the weights load
        from ...lora import load_stack

        adapters = load_stack(stack, mode.weights, variant)
    if req.fp8:
        from ...memory import check_fp8

        check_fp8(device)
    ensure_weights(root, mode.weights, variant, download=req.download)
    log.info("loading the %s weights from %s (kept for the following jobs)", mode.weights, root)
    host = req.low_vram or _staged(req, device)
    models = load_models(root, mode.weights, variant, device="cpu" if host else device, dtype=plan.dtype,
                         vae_dtype=resolve_vae_dtype(req.dtype, device, plan.dtype))
    if adapters:  # merged in order; strength 0 skipped
        from ...lora import apply_stack

        apply_stack(models, adapters, keep_base=False)
    if req.fp8:
        from ...memory import to_fp8

        to_fp8(models.reference)
        to_fp8(models.denoiser)
    if req.compile:  # once per loaded set: every following row of the same shape reuses the compiled blocks
        from ...speed import compile_denoiser

        compile_denoiser(models)
    place = None
    if host:
        from ...memory import Placement

        place = Placement(models, device, stream_denoiser=req.low_vram, settings=plan.settings)
    return models, place


def render_animate(job, cache: ModelCache, progress=None) -> dict:
    from ..animate import _condition, paste_back_sink
    from ..animate_checks import preflight
    from ...audio import encode_audio
    from ...io.video_writer import Mp4Writer, _as_uint8
    from ...pipeline import Sampler

    plan = preflight(job.request)
    req, settings = plan.request, plan.settings
    prepared = _condition(plan)  # a reference without a face stops here, before any weight loads
    models, place = cache.get(job.weight_key, lambda: _load_animate(plan, req))
    if place is not None:
        place.settings = settings
    if plan.audio is None:
        from ...audio.unconditional import UnconditionalAudio

        feats = UnconditionalAudio(settings.num_frames, settings.fps)
    else:
        if place is not None:
            place.enter("audio")
        feats = encode_audio(plan.audio, models.audio_encoder, sample_rate=plan.sample_rate, device=plan.device,
                             frames=settings.num_frames, fps=settings.fps, mel_peak=plan.mel_peak)
    checkpoint = None
    if getattr(req, "resumable", False):  # a row retried after an error goes on from its last finished step
        from ...io.model_files import resolve_files
        from ..resume_plan import checkpoint_for

        checkpoint = checkpoint_for(plan, resolve_files(plan.models_root, plan.mode.weights, plan.variant))
    digest = hashlib.sha256()
    with Mp4Writer(plan.output, settings.fps, plan.audio, plan.sample_rate) as writer:
        def hashed(start, frames):
            digest.update(_as_uint8(frames).tobytes())
            writer.sink(start, frames)

        sink = paste_back_sink(prepared.crop, plan.reference, hashed) if req.paste_back else hashed
        result = Sampler(models, place)(prepared.reference, feats, prepared.condition, settings, progress=progress,
                                        frame_sink=sink, resume=checkpoint)
        out = writer.commit()
    if checkpoint is not None:
        checkpoint.discard()
    return {"output": str(out), "frames": result.num_frames, "fps": settings.fps, "device": str(plan.device),
            "frames_sha256": digest.hexdigest()}


def render_dub(job, cache: ModelCache, progress=None) -> dict:
    from ..dub import dub_checkpoint, dub_frames, prepare_dub
    from ...io.video_writer import Mp4Writer
    from ...devices import resolve_vae_dtype
    from ...model_set import ensure_weights, load_models

    plan = prepare_dub(job.request)  # checked and tracked before any weight loads
    ok = plan.checked

    def load():
        ensure_weights(ok.root, "v1_pose", ok.variant, download=job.request.download)
        return load_models(ok.root, "v1_pose", ok.variant, device=ok.device, dtype=ok.dtype,
                           vae_dtype=resolve_vae_dtype(job.request.dtype, ok.device, ok.dtype)), None

    models, _ = cache.get(job.weight_key, load)
    checkpoint = dub_checkpoint(plan)  # a resumable row retried after an error goes on from its kept state
    digest = hashlib.sha256()
    with Mp4Writer(job.request.output, plan.fps, plan.audio, plan.sample_rate, color=plan.source_color) as writer:
        def hashed(frame):
            digest.update(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
            writer.write(frame[None])

        schedule, _ = dub_frames(plan, hashed, progress, models=models, crops_beside=job.request.output,
                                 resume=checkpoint)
        path = writer.commit()
    if checkpoint is not None:
        checkpoint.discard()
    return {"output": str(path), "frames": len(schedule.source), "fps": plan.fps, "device": str(ok.device),
            "frames_sha256": digest.hexdigest()}


class Scorer:
    """The weight-free scores of ``echomimic evaluate`` for a written video (the MediaPipe face landmarker is
    opened once per worker; without it only the scores that need no landmarks)."""

    def __init__(self):
        self._landmarker, self._tried = None, False

    def _get(self, req):
        if not self._tried:
            self._tried = True
            from ...errors import EchoMimicError
            from ...landmarks.extractor import FaceLandmarkExtractor

            try:
                root = [req.models] if req.models else None  # a V3 row has no mediapipe_model column: found in models
                self._landmarker = FaceLandmarkExtractor(model_path=getattr(req, "mediapipe_model", None), models_dir=root,
                                                         download=False)
            except (EchoMimicError, OSError) as exc:
                log.info("scores without landmarks: %s", exc)
        return self._landmarker

    def __call__(self, output, req) -> dict:
        from ...evaluate import evaluate, load_clip

        clip = load_clip(output)
        rep = evaluate(clip, None, self._get(req)).to_dict()
        return {k: rep[k] for k in SCORE_KEYS if rep.get(k) is not None}

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()


def run_job(job, device: str, cache: ModelCache, scorer: Scorer | None, progress=None) -> dict:
    """Render one job on ``device``; the record's measured fields (raises on failure)."""
    job = replace(job, request=replace(job.request, device=device))
    is_cuda = device.startswith("cuda")
    if is_cuda:
        torch.cuda.reset_peak_memory_stats(torch.device(device))
    t0 = time.perf_counter()
    loads = cache.loads
    from .v3 import is_v3

    if is_v3(job):
        from .v3 import render_v3_job as render
    else:
        render = render_animate if job.kind == "animate" else render_dub
    out = render(job, cache, progress)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["loaded_models"] = cache.loads > loads
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)
    if is_cuda:
        out["peak_vram_gb"] = round(torch.cuda.max_memory_allocated(torch.device(device)) / 1024**3, 3)
    if scorer is not None:
        try:
            out["scores"] = scorer(out["output"], job.request)
        except Exception as exc:  # a score that cannot be computed never fails a rendered row
            out["scores"] = {"note": f"not scored: {exc}"}
    return out
