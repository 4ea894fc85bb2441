"""``prepare --kind headshot``: talking-head clips described by face landmarks (V1 data).

Per clip: frames at the run's fps, one square around the face for the whole clip, framed by the inference's V1
rule (:func:`.clean.clip_square` on the clip's face boxes), resized to ``size``; the face landmarks and face boxes
mapped into that square (frames without a face filled from their neighbours, counted in ``face_filled_frames``).
Cleaning rules are :func:`.clean.check_clip`'s; ``unreadable`` is recorded by :func:`.prepare.prepare_dataset`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .clean import PrepareConfig, check_clip, clip_square, fill_missing_rows, landmark_boxes
from .clip import ClipStatus, Tools, frames_to_analyse, largest_face, open_clip, write_clip
from .curate import BackgroundFlow, after_write, before_write
from .video import iter_frames, scene_score, small_hsv


def _resize_square(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


def prepare_headshot(video: Path, cid: str, out_root: Path, cfg: PrepareConfig, tools: Tools) -> ClipStatus:
    info, wave, audio_src, st = open_clip(video, cid, "headshot", cfg)
    if wave is None:
        return st
    counts, lmks, heights, cuts, prev = [], [], [], [], None
    flow = BackgroundFlow() if cfg.curate.max_camera_motion is not None else None
    for img in iter_frames(video, cfg.fps, cfg.analysis_side, frames_to_analyse(cfg, wave)):
        if flow is not None:
            flow.add(img)
        faces = tools.landmarker.detect(img)
        counts.append(len(faces))
        f = largest_face(faces) if faces else None
        lmks.append(f["lmks"] if f is not None else None)
        heights.append((f["lmks"][:, 1].max() - f["lmks"][:, 1].min()) * info["height"] if f is not None else np.nan)
        hsv = small_hsv(img)
        if prev is not None:
            cuts.append(scene_score(prev, hsv))
        prev = hsv
    n = min(len(counts), int(len(wave) / 16000 * cfg.fps))
    v = check_clip(cfg, n, n / cfg.fps, np.array(counts[:n]), np.array(heights[:n]), np.array(cuts[: max(0, n - 1)]), True)
    if not st.checked(v, n):
        return st
    lm, valid = fill_missing_rows(lmks[:n])
    boxes = landmark_boxes(lm, info["width"], info["height"])
    if cfg.curate.enabled and not before_write(cfg.curate, st, lm[valid] if cfg.curate.max_yaw is not None else None, flow,
                                               landmark_boxes(lm, 1, 1), cfg.fps):
        return st
    sx, sy, side = clip_square(boxes, info["width"], info["height"], cfg.crop_dilation)

    def describe(writer, n):
        lm_c = lm[:n].copy()
        lm_c[..., 0] = (lm[:n, :, 0] * info["width"] - sx) / side
        lm_c[..., 1] = (lm[:n, :, 1] * info["height"] - sy) / side
        lm_c[..., 2] = lm[:n, :, 2] * info["width"] / side
        boxes_c = (boxes[:n] - np.array([sx, sy, sx, sy])) / side
        meta = {"audio_source": audio_src, "source_size": [info["width"], info["height"]], "crop": [sx, sy, side],
                "face_filled_frames": int((~valid[:n]).sum())}
        return meta, {"landmarks": lm_c.astype(np.float32), "landmarks_valid": valid[:n], "face_boxes": boxes_c.astype(np.float32)}

    def crop(img):
        return _resize_square(img[sy : sy + side, sx : sx + side], cfg.size)

    st = write_clip(video, st, out_root, cfg, tools, n, crop, wave, describe, v)
    after_write(cfg.curate, tools.sync_net, st, out_root)
    return st
