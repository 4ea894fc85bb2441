"""``prepare --kind full``: whole frames, no detector (EchoMimicV3 data).

EchoMimicV3 animates any framing (portrait, half-body, full shot) and its trainer centre-crops every window to the
training aspect itself (:func:`trainer.v3.windows.fit_frame`), so a clip is stored as the whole frame, in the
source's aspect:

- scaled so that the shorter side is ``size`` (default 768: EchoMimicV3 renders within a 768 x 768 area, so any
  training size up to that area is cut from the stored frames without enlarging them), both sides even;
- never enlarged: a source whose shorter side is below ``size`` is stored at its own size (enlarging adds no detail,
  only disk; the trainer resizes each window to the training size anyway).

Cleaning: the rules that need no detector, in :func:`.clean.check_clip`'s order -- ``no_audio``, ``too_short``,
``scene_cut`` (the same scene-change score as the other kinds); ``unreadable`` is recorded by
:func:`.prepare.prepare_dataset`. ``clip.json`` also records ``frame_size`` (the stored width, height).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .clean import PrepareConfig, check_clip
from .clip import ClipStatus, Tools, frames_to_analyse, open_clip, write_clip
from .video import iter_frames, scene_score, small_hsv


def stored_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) of a stored frame: the shorter side ``size`` (never above the source's), both even."""
    s = min(1.0, size / min(width, height))
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def scale_frame(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    tw, th = stored_size(w, h, size)
    if (tw, th) == (w, h):
        return img
    interp = cv2.INTER_AREA if tw < w else cv2.INTER_CUBIC  # enlarging happens only to make an odd side even
    return cv2.resize(img, (tw, th), interpolation=interp)


def prepare_full(video: Path, cid: str, out_root: Path, cfg: PrepareConfig, tools: Tools) -> ClipStatus:
    """One clip: the whole frame, cleaned by speech, length and scene cuts."""
    info, wave, audio_src, st = open_clip(video, cid, "full", cfg)
    if wave is None:
        return st
    cuts, prev, analysed = [], None, 0
    for img in iter_frames(video, cfg.fps, cfg.analysis_side, frames_to_analyse(cfg, wave)):
        hsv = small_hsv(img)
        if prev is not None:
            cuts.append(scene_score(prev, hsv))
        prev, analysed = hsv, analysed + 1
    n = min(analysed, int(len(wave) / 16000 * cfg.fps))
    v = check_clip(cfg, n, n / cfg.fps, None, None, np.array(cuts[: max(0, n - 1)]), True)
    if not st.checked(v, n):
        return st
    frame_size: list[int] = []

    def scale(img):
        out = scale_frame(img, cfg.size)
        if not frame_size:
            frame_size.extend((int(out.shape[1]), int(out.shape[0])))
        return out

    def describe(writer, n):
        return {"audio_source": audio_src, "source_size": [info["width"], info["height"]], "frame_size": frame_size}, {}

    return write_clip(video, st, out_root, cfg, tools, n, scale, wave, describe, v)
