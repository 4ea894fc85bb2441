"""Validation video: the library's sampler on the networks being trained (a clip's first frame as the
reference, its audio, and its landmarks / face mask / hand poses as the condition)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


@torch.no_grad()
def render_validation(cfg, net, vae, built, pools, step: int, out_dir: Path, monitor, device) -> Path | None:
    from echomimic_lib.audio import AudioFeatures
    from echomimic_lib.model_set import EchoMimicModels
    from echomimic_lib.modes import WEIGHT_SETS
    from echomimic_lib.pipeline import MaskCondition, SampleSettings, Sampler, frames_condition
    from echomimic_lib.video_io import write_video

    from .data.dataset import face_mask_image
    from .data.store import ClipReader

    v, d = cfg.validation, cfg.data
    entries = pools.entries
    entry = next((e for e in entries if e.id == v.clip), None) if v.clip else None
    entry = entry or next((e for e in entries if cfg.data.condition != "pose" or e.kind == "halfbody"), entries[0])
    clip = ClipReader(entry.path)
    w, h = d.width, d.height
    frames = min(v.frames, clip.num_frames)
    rows = torch.from_numpy(np.asarray(clip.array("whisper"), dtype=np.float32))
    feats = AudioFeatures(rows, len(clip.array("audio16k")))
    import cv2

    ref = cv2.resize(clip.frame(0), (w, h), interpolation=cv2.INTER_AREA)
    if d.condition == "face_mask":
        cond = MaskCondition(face_mask_image(clip, (w, h)))
    elif d.condition == "landmarks":
        from echomimic_lib.landmarks import draw_landmark_sequence

        lm = np.asarray(clip.array("landmarks"))[:frames]
        cond = frames_condition(draw_landmark_sequence(lm, (w, h), ["eyes", "brows", "pupils", "nose"], normed=True))
    else:
        from echomimic_lib.pose import draw_hands_batch

        cond = frames_condition(draw_hands_batch(clip.pose(), range(frames), (w, h)))
    models = EchoMimicModels(built.config, WEIGHT_SETS[cfg.model.weights], "normal", net.reference, net.denoiser, net.cond_encoder, vae)
    settings = SampleSettings(width=w, height=h, steps=v.steps, cfg=v.cfg, seed=v.seed, fps=clip.fps, num_frames=frames,
                              context_frames=min(12, frames), context_overlap=min(3, max(0, min(12, frames) - 1)))
    was = net.training
    net.eval()
    try:
        res = Sampler(models)(ref, feats, cond, settings)
    finally:
        net.train(was)
    dest = Path(out_dir) / "validation" / f"step-{step:08d}.mp4"
    audio = np.asarray(clip.array("audio16k"))[None, : int(frames / clip.fps * 16000)]
    write_video(dest, res.frames.numpy(), clip.fps, audio, 16000)
    log_quality_metrics(cfg, monitor, step, res.frames.numpy(), audio[0], clip, (w, h))
    strip = (res.frames[: min(4, frames)].numpy() * 255).astype(np.uint8)
    monitor.image(step, "validation/frames", np.concatenate(list(strip), axis=1))
    monitor.event(step, "validation", path=str(dest), clip=entry.id)
    log.info("validation video %s", dest)
    return dest

def log_quality_metrics(cfg, monitor, step: int, frames: np.ndarray, audio16k: np.ndarray, clip, size) -> None:
    """Weight-free quality metrics of a validation video (``echomimic_lib.evaluate``: lip sync, jitter, flicker, face
    rate, shape drift) as TensorBoard scalars and a JSON-log event. Landmarks need MediaPipe's face_landmarker.task
    beside ``model.echomimic_path`` or in $ECHOMIMIC_MODELS; without it only flicker is logged (outside the clip's
    face mask for the V1 audio condition, else over the whole frame)."""
    from echomimic_lib.animate import default_models_dir
    from echomimic_lib.evaluate import score_frames

    from .data.dataset import face_mask_image

    dirs = [Path(p) for p in (cfg.model.echomimic_path, default_models_dir()) if p]
    try:
        mask = face_mask_image(clip, size) > 0.5 if cfg.data.condition == "face_mask" else None
        rep = score_frames(frames, audio16k, clip.fps, face_mask=mask, models_dir=dirs, source="validation")
    except Exception as exc:  # a metric never stops a training run
        log.warning("validation metrics skipped: %s", exc)
        return
    if rep.notes:
        log.info("validation metrics: %s", " ".join(rep.notes))
    monitor.metrics(step, "validation_metrics", rep.scalars())
