"""Optional curation at ``prepare`` (the V1 paper's data pipeline): three filters, each off until its threshold is set
in the ``curate:`` section (``prepare --curate FILE.yaml``):

- ``lip_sync``: SyncNet (the user's ``syncnet_v2.model``, :mod:`echomimic_lib.evaluate.syncnet`) on the written
  clip -- the audio-visual offset (frames at 25 fps) and the confidence (LSE-C) of the offset; a clip whose
  ``|offset|`` exceeds ``max_sync_offset`` or whose confidence is below ``min_sync_confidence`` is removed;
- ``profile_view``: the head's yaw per frame from the face-mesh landmarks the run computes (the eye-corner and
  mouth-corner lines in 3D: 0 deg frontal, 90 deg profile); a clip with more than ``max_profile_frames`` of
  its frames beyond ``max_yaw`` degrees is removed;
- ``camera_motion``: OpenCV Farneback optical flow between consecutive frames (128 px wide, grey), its magnitude
  outside the face (headshots: each frame's face box dilated by ``face_margin`` x its size) or the person
  (half-body: the clip's half-body crop); the clip's score is the median over frame pairs of the median background
  magnitude, in frame widths per second; above ``max_camera_motion`` the clip is removed. A clip with no
  background left (``pose`` clips: the whole frame is the person) is not scored.

Every measurement is in the clip's ``report.jsonl`` row (``curation``) for kept clips too, so thresholds can be
chosen from a first run; the counts per filter are printed and written to ``curation.json``. The thresholds are
assumptions (the paper gives none): offsets within +-3 frames and confidence >= 3 are the values talking-head
pipelines usually keep; 45 deg for 20 % of the frames; 0.05 frame widths per second of background motion.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .clean import Verdict
from .curate_config import CurateConfig, check_curate  # noqa: F401  (re-exported: the section's home is curate_config)

FILTERS = ("lip_sync", "profile_view", "camera_motion")  # the drop reasons of curation, in report order
FLOW_WIDTH = 128
# face-mesh indices: outer eye corners and mouth corners (left / right of the image)
EYE_CORNERS = (33, 263)
MOUTH_CORNERS = (61, 291)


def load_curate(path: str | Path) -> CurateConfig:
    """A YAML file's ``curate:`` section (or the whole file as that section), with every key checked."""
    from ..config import ConfigError
    from ..config_checks import read_yaml_mapping
    from ..config_file import from_dict

    data = read_yaml_mapping(path)
    section = data.get("curate", data) if isinstance(data.get("curate", data), dict) else None
    if section is None:
        raise ConfigError(f"{path}: 'curate' must be a mapping of thresholds (e.g. curate: {{max_yaw: 45}})")
    cfg = from_dict(CurateConfig, section, "curate")
    try:
        check_curate(cfg)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg


# ------------------------------------------------------------------------------------------------ head yaw
def head_yaw_degrees(lmks: np.ndarray) -> np.ndarray:
    """(F, 478, 3) face-mesh landmarks (x, z in the same units, e.g. normalised to the image width) -> (F,) absolute
    yaw in degrees: the angle of the eye-corner and mouth-corner lines out of the image plane."""
    lm = np.asarray(lmks, dtype=np.float64)
    v = (lm[:, EYE_CORNERS[1]] - lm[:, EYE_CORNERS[0]]) + (lm[:, MOUTH_CORNERS[1]] - lm[:, MOUTH_CORNERS[0]])
    return np.degrees(np.abs(np.arctan2(v[:, 2], v[:, 0])))


def profile_verdict(c: CurateConfig, yaw: np.ndarray) -> tuple[Verdict, dict]:
    yaw = np.asarray(yaw, dtype=np.float64)
    yaw = yaw[np.isfinite(yaw)]
    if not len(yaw):
        return Verdict(True), {}
    share = float((yaw > c.max_yaw).mean()) if c.max_yaw is not None else 0.0
    measures = {"yaw_median_deg": round(float(np.median(yaw)), 2), "yaw_max_deg": round(float(yaw.max()), 2)}
    if c.max_yaw is None:
        return Verdict(True), measures
    measures["profile_frames"] = round(share, 4)
    if share > c.max_profile_frames:
        return Verdict(False, "profile_view", f"{share:.0%} of the frames turned beyond {c.max_yaw:g} deg "
                       f"(tolerated {c.max_profile_frames:.0%}; median yaw {measures['yaw_median_deg']} deg)"), measures
    return Verdict(True), measures


# ------------------------------------------------------------------------------------------------ camera motion
class BackgroundFlow:
    """Frame-to-frame Farneback flow magnitudes of a clip (``add`` each RGB frame), scored outside the subject."""

    def __init__(self, width: int = FLOW_WIDTH):
        self.width, self.prev, self.mags = width, None, []

    def add(self, rgb: np.ndarray) -> None:
        import cv2

        h = max(8, int(round(rgb.shape[0] * self.width / rgb.shape[1])))
        grey = cv2.cvtColor(cv2.resize(rgb, (self.width, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        if self.prev is not None:
            flow = cv2.calcOpticalFlowFarneback(self.prev, grey, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            self.mags.append(np.hypot(flow[..., 0], flow[..., 1]).astype(np.float16))
        self.prev = grey

    def score(self, boxes, fps: float, margin: float = 0.5) -> float:
        """Median over frame pairs of the median flow magnitude outside the subject, in frame widths per second.
        ``boxes``: (F, 4) or (4,) normalised x0, y0, x1, y1 subject boxes (NaN rows: unknown), dilated by ``margin``
        x their size; NaN when no pair has background pixels."""
        if not self.mags:
            return float("nan")
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        per = []
        for i, mag in enumerate(self.mags):
            h, w = mag.shape
            keep = np.ones((h, w), bool)
            for box in (b[min(i, len(b) - 1)], b[min(i + 1, len(b) - 1)]):
                if not np.isfinite(box).all():
                    continue
                dx, dy = margin * (box[2] - box[0]), margin * (box[3] - box[1])
                x0, x1 = int(max(0, (box[0] - dx) * w)), int(min(w, math.ceil((box[2] + dx) * w)))
                y0, y1 = int(max(0, (box[1] - dy) * h)), int(min(h, math.ceil((box[3] + dy) * h)))
                keep[y0:y1, x0:x1] = False
            if keep.sum() >= 16:
                per.append(float(np.median(mag[keep].astype(np.float32))))
        return float(np.median(per)) / self.width * fps if per else float("nan")


def camera_verdict(c: CurateConfig, score: float) -> tuple[Verdict, dict]:
    if not math.isfinite(score):
        return Verdict(True), {}
    measures = {"camera_motion": round(score, 5)}
    if c.max_camera_motion is not None and score > c.max_camera_motion:
        return Verdict(False, "camera_motion", f"background moves {score:.3f} frame widths per second "
                       f"(limit {c.max_camera_motion:g}): a moving camera"), measures
    return Verdict(True), measures


# ------------------------------------------------------------------------------------------------ lip sync
def load_sync_model(c: CurateConfig):
    """The SyncNet of ``curate.syncnet`` (None when the filter is off); a broken file raises now, before any clip."""
    if not c.syncnet:
        return None
    from echomimic_lib.evaluate.syncnet import load_syncnet

    return load_syncnet(c.syncnet, c.device)


def clip_sync_scores(net, clip_dir: str | Path, device: str = "cpu"):
    """SyncNet scores of a written clip: its stored frames at 25 fps, cropped around its stored face boxes, against
    its 16 kHz audio (:func:`echomimic_lib.evaluate.syncnet.lse_scores`)."""
    from echomimic_lib.evaluate.syncnet import face_crops, frame_indices_25, lse_scores

    from .store import ClipReader

    clip = ClipReader(clip_dir)
    idx = frame_indices_25(clip.num_frames, clip.fps)
    frames = clip.frames(idx)
    h, w = frames.shape[1:3]
    boxes = np.asarray(clip.array("face_boxes"), dtype=np.float64)[idx] * np.array([w, h, w, h])
    return lse_scores(net, face_crops(frames, boxes), np.asarray(clip.array("audio16k")), device)


def sync_verdict(c: CurateConfig, scores) -> tuple[Verdict, dict]:
    measures = {"sync_offset": int(scores.av_offset), "sync_confidence": round(float(scores.lse_c), 3),
                "sync_distance": round(float(scores.lse_d), 3)}
    if abs(scores.av_offset) > c.max_sync_offset or scores.lse_c < c.min_sync_confidence:
        return Verdict(False, "lip_sync", f"SyncNet offset {scores.av_offset} frames, confidence {scores.lse_c:.2f} (kept: "
                       f"|offset| <= {c.max_sync_offset}, confidence >= {c.min_sync_confidence:g})"), measures
    return Verdict(True), measures


def after_write(c: CurateConfig, net, st, out_root: Path) -> None:
    """The lip-sync filter on a clip just written: on failure the clip folder is removed and ``st`` says why."""
    import shutil

    if net is None or st.status != "ok":
        return
    final = Path(out_root) / st.path
    try:
        v, m = sync_verdict(c, clip_sync_scores(net, final, c.device))
    except Exception as exc:  # too short for SyncNet, no face boxes: measured as unknown, not a drop
        st.curation["sync_error"] = str(exc)
        return
    st.curation.update(m)
    if not v.ok:
        shutil.rmtree(final, ignore_errors=True)
        st.status, st.reason, st.detail, st.path = "dropped", v.reason, v.detail, ""


def before_write(c: CurateConfig, st, lmks: np.ndarray | None, flow: BackgroundFlow | None, boxes, fps: float,
                 margin: float | None = None) -> bool:
    """The profile and camera filters on a clip's analysis (landmarks, background flow); False (with ``st``'s
    reason) when it is removed. Measurements go to ``st.curation``. ``margin``: the boxes' dilation (default
    ``curate.face_margin``)."""
    for verdict, measures in ((profile_verdict(c, head_yaw_degrees(lmks)) if lmks is not None and len(lmks) else (Verdict(True), {})),
                              (camera_verdict(c, flow.score(boxes, fps, c.face_margin if margin is None else margin)) if flow is not None else (Verdict(True), {}))):
        st.curation.update(measures)
        if not verdict.ok:
            st.reason, st.detail = verdict.reason, verdict.detail
            return False
    return True


def curation_counts(rows: list[dict]) -> dict:
    """Clips removed by each curation filter (from the status rows)."""
    return {f: sum(1 for r in rows if r.get("status") != "ok" and r.get("reason") == f) for f in FILTERS}
