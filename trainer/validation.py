"""Validation video: the library's sampler on the networks being trained (the loop passes the EMA weights when
``ema.enabled``), with a clip's first frame as the reference, its audio, and its landmarks / face mask / poses
as the condition -- rendered the way the current phase trains:

- V2: the phase's keypoint groups (APDH phase 1 draws body, head, lips and hands; phase 3d hands only), and
  the phase's audio-attention mask (muted in phases 1-2: the audio attention's output is zero; lips / head
  partial attention: the union of the per-frame masks over the rendered frames, one mask for every window);
- V1: eyes, brows, pupils and nose (audio + selected landmarks, what Random Landmark Selection trains; with
  RLS off, ``data.landmark_parts``), or the face mask.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def validation_condition(cfg, clip, frames: int, phase, size):
    """(the sampler's condition, the audio-attention mask (1, H, W) or None for global attention)."""
    from echomimic_lib.pipeline import MaskCondition, frames_condition

    from .data.dataset import face_mask_image, frame_keypoints, pose_pictures

    d = cfg.data
    w, h = size
    mask = None
    if d.condition == "face_mask":
        cond = MaskCondition(face_mask_image(clip, (w, h)))
    elif d.condition == "landmarks":
        from echomimic_lib.landmarks import draw_landmark_sequence

        parts = ["eyes", "brows", "pupils", "nose"] if d.rls.enabled else list(d.landmark_parts)
        lm = np.asarray(clip.array("landmarks"))[:frames]
        cond = frames_condition(draw_landmark_sequence(lm, (w, h), parts, normed=True))
    else:
        idx = list(range(frames))
        pics, masks = pose_pictures(clip, idx, [frame_keypoints(clip, i, (w, h)) for i in idx], phase, (w, h))
        cond = frames_condition(pics)
        if phase.audio != "global":
            mask = torch.from_numpy(masks.max(0, keepdims=True))
    if phase.audio == "muted" and mask is None:
        mask = torch.zeros(1, h, w)
    return cond, mask


@torch.no_grad()
def render_validation(cfg, net, vae, built, pools, step: int, out_dir: Path, monitor, device, phase=None,
                      audio_control=None) -> Path | None:
    """Render ``validation/step-N.mp4``. ``phase``: the phase whose conditions and audio mask are used (default:
    the phase of step ``step``); ``audio_control``: the run's :class:`trainer.net.AudioAttentionControl` (one is
    made for this call when None)."""
    from echomimic_lib.audio import AudioFeatures
    from echomimic_lib.model_set import EchoMimicModels
    from echomimic_lib.modes import WEIGHT_SETS
    from echomimic_lib.pipeline import SampleSettings, Sampler
    from echomimic_lib.io.video_io import write_video

    from .data.store import ClipReader
    from .net import AudioAttentionControl
    from .phases import phase_at

    v, d = cfg.validation, cfg.data
    phase = phase or phase_at(cfg.phases, max(0, step - 1)).phase
    entry = pools.validation_entry(v.clip, cfg.data.condition)  # a held-out clip (trainer/data/split.py)
    clip = ClipReader(entry.path)
    w, h = d.width, d.height
    frames = min(v.frames, clip.num_frames)
    rows = torch.from_numpy(np.asarray(clip.array("whisper"), dtype=np.float32))
    feats = AudioFeatures(rows, len(clip.array("audio16k")))
    import cv2

    ref = cv2.resize(clip.frame(0), (w, h), interpolation=cv2.INTER_AREA)
    cond, audio_mask = validation_condition(cfg, clip, frames, phase, (w, h))
    models = EchoMimicModels(built.config, WEIGHT_SETS[cfg.model.weights], "normal", net.reference, net.denoiser, net.cond_encoder, vae)
    settings = SampleSettings(width=w, height=h, steps=v.steps, cfg=v.cfg, seed=v.seed, fps=clip.fps, num_frames=frames,
                              context_frames=min(12, frames), context_overlap=min(3, max(0, min(12, frames) - 1)))
    ctrl = audio_control or AudioAttentionControl(net.denoiser)
    ctrl.set(audio_mask, (h // 8, w // 8))
    was = net.training
    net.eval()
    try:
        res = Sampler(models)(ref, feats, cond, settings)
    finally:
        net.train(was)
        ctrl.set(None)
        if audio_control is None:
            ctrl.remove()
    dest = Path(out_dir) / "validation" / f"step-{step:08d}.mp4"
    audio = np.asarray(clip.array("audio16k"))[None, : int(frames / clip.fps * 16000)]
    write_video(dest, res.frames.numpy(), clip.fps, audio, 16000)
    log_quality_metrics(cfg, monitor, step, res.frames.numpy(), audio[0], clip, (w, h))
    strip = (res.frames[: min(4, frames)].numpy() * 255).astype(np.uint8)
    monitor.image(step, "validation/frames", np.concatenate(list(strip), axis=1))
    monitor.event(step, "validation", path=str(dest), clip=entry.id, phase=phase.name, audio_mask=phase.audio,
                  held_out=bool(pools.val), split_note=pools.split_note)
    log.info("validation video %s", dest)
    return dest


def render_or_say(cfg, net, vae, built, pools, step: int, out_dir: Path, monitor, device, **kw) -> Path | None:
    """:func:`render_validation` during a run: a render that fails (a full disk for the video, a damaged held-out clip,
    out of memory in the sampler) is said, with the step and the error, and recorded in the run's log
    (``validation_failed``); training goes on (it ended the run, losing every step since the last checkpoint).
    Ctrl-C and other interrupts still stop the run."""
    try:
        return render_validation(cfg, net, vae, built, pools, step, out_dir, monitor, device, **kw)
    except Exception as exc:  # noqa: BLE001 - a validation video is never worth the run
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # (what an out-of-memory sampler held)
        log.warning("step %d: the validation video failed (%s: %s); training goes on and the checkpoints are as saved. "
                    "The next validation is at step %d (validation.every).", step, type(exc).__name__, exc,
                    step + cfg.validation.every)
        monitor.event(step, "validation_failed", error=f"{type(exc).__name__}: {exc}")
        return None


def log_quality_metrics(cfg, monitor, step: int, frames: np.ndarray, audio16k: np.ndarray, clip, size) -> None:
    """Weight-free quality metrics of a validation video (``echomimic_lib.evaluate``: lip sync, jitter, flicker, face
    rate, shape drift) as TensorBoard scalars and a JSON-log event. Landmarks need MediaPipe's face_landmarker.task
    beside ``model.echomimic_path`` or in $ECHOMIMIC_MODELS; without it only flicker is logged (outside the clip's
    face mask for the V1 audio condition, else over the whole frame). Lip sync (offset, strength and its confidence)
    is logged only for a video of at least ``MIN_SYNC_SECONDS`` (``validation.frames`` / fps): on shorter ones an
    unrelated mouth scores as high as real speech (bench/bench_sync_null.py)."""
    from echomimic_lib.jobs.models_folder import default_models_dir
    from echomimic_lib.evaluate import score_frames

    from .data.dataset import face_mask_image

    dirs = [Path(p) for p in (cfg.model.echomimic_path, default_models_dir()) if p]
    try:
        mask = face_mask_image(clip, size) > 0.5 if cfg.data.condition == "face_mask" else None
        rep = score_frames(frames, audio16k, clip.fps, face_mask=mask, models_dir=dirs, source="validation",
                           landmark_hint=landmark_hint(cfg))
    except Exception as exc:  # a metric never stops a training run
        log.warning("validation metrics skipped: %s", exc)
        return
    if rep.notes:
        log.info("validation metrics: %s", " ".join(rep.notes))
    if rep.av_sync_meaningful is False:
        from echomimic_lib.evaluate.sync import MIN_SYNC_SECONDS

        log.info("validation metrics: lip sync not logged: the video lasts %.1f s, it needs %g s (validation.frames >= %d "
                 "at %g fps)", rep.seconds, MIN_SYNC_SECONDS, int(np.ceil(MIN_SYNC_SECONDS * clip.fps)), clip.fps)
    monitor.metrics(step, "validation_metrics", rep.scalars())


def landmark_hint(cfg) -> str:
    """How a trainer user gives the validation metrics MediaPipe's model (``fit`` has no ``--mediapipe-model``): the
    folders :func:`log_quality_metrics` looks in, by the config key or the environment variable that sets them."""
    from echomimic_lib.jobs.models_folder import default_models_dir
    from echomimic_lib.landmarks.mp_models import MODELS

    models = default_models_dir() / "mediapipe"
    own = f"{Path(cfg.model.echomimic_path) / 'mediapipe'} (model.echomimic_path's)" if cfg.model.echomimic_path \
        else "model.echomimic_path's mediapipe/ (not set)"
    return (f"the trainer looks in {own} and {models} (the models folder: $ECHOMIMIC_MODELS, else ~/.cache/echomimic), "
            f"never downloading it: put it into one of them from {MODELS['face_landmarker']['url']}")
