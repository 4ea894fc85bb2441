"""Steadier V2 driving hand poses (``--stabilize``): short dropouts filled, keypoints and scores smoothed over time.

DWPose looks at each frame alone: a still hand shakes by a few pixels from frame to frame and a finger it is unsure
of blinks in and out. Drawn into the condition frames (:mod:`.drawing`), that becomes the video's hand jitter and
flicker. :func:`stabilize_poses` works on the whole sequence with the shared keypoint tools of
:mod:`echomimic_lib.temporal.keypoints` (the One-Euro filter run both ways, so no lag, and :func:`fill_gaps`):

- **Seen keypoints.** The hand drawing (the reference's ``draw_handpose``) has no score cut: it draws every point
  whose pixel coordinates are >= 1 and sets its brightness to ``score x 255`` (an edge: ``score_a x score_b x
  255``). What decides whether a point is really there is the detector's own keypoint threshold,
  ``dwpose_tensors.KEYPOINT_THRESHOLD`` (0.3: the body ``subset`` cut and the preview's). A hand keypoint counts as seen
  where its score is above 0.3 and it is not the (-1, -1) "not detected" marker.
- **Dropouts.** A run of at most ``max_gap`` unseen frames between two seen ones is filled by linear
  interpolation, positions and scores, so a finger does not blink out. A run of at most ``max_blip`` seen frames
  between unseen ones (a hand flashing in for a frame) keeps its positions but gets the scores of its unseen
  neighbours interpolated across it: it stays below the threshold, as the rest of the absence. The clip's ends
  are treated alike, holding the nearest frame instead of interpolating: a hand missing for at most ``max_gap``
  first (or last) frames and then seen is held at its first (last) seen pose, so it does not pop in; one seen for
  at most ``max_blip`` first (or last) frames and then absent is kept dark. A longer absence stays absent.
- **Smoothing.** Seen positions are filtered in pixels of a 768-px draw area (so ``beta`` means the same at every
  output size) and seen scores with a slower, speed-independent low-pass, so the drawn brightness does not
  flicker. Both are convex averages of seen samples, so a seen score stays above the threshold and nothing
  unseen is lifted above it (unseen samples are passed through unchanged).
- **Body.** Not drawn for the model, but its neck and shoulders place the sequence on the reference
  (:func:`.align.fit_sequence_to_reference`, a median over the frames) and the previews draw it: seen body points
  (score > 0.3, ``subset`` >= 0) are smoothed with the same settings; scores and ``subset`` stay as detected.
  Faces are neither drawn nor used after the crop and are kept as they are.

``"off"`` returns the very same sequence object (parity). Everything else is kept: frame ids, draw_pose_params,
fps, canvas size; ``source`` gains `` [stabilized: LEVEL]`` and ``stabilized`` is LEVEL (saved with the poses). A
sequence already steadied is not steadied again (one warning): a file from ``echomimic poses --stabilize`` keeps
its level through loading, retiming and alignment; one carried on with gestures (retime ``continue`` past its end)
is a new sequence and is steadied as a whole.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..temporal import check_level, skip_second_pass
from ..temporal.keypoints import OneEuro, fill_gaps, one_euro
from .dwpose_tensors import KEYPOINT_THRESHOLD
from .sequence import PoseSequence

SEEN_SCORE = KEYPOINT_THRESHOLD  # a hand / body keypoint scored above this is "seen" (DWPose's own cut)
REF_PX = 768.0  # positions are filtered in pixels of a draw area this size (the released demos' canvas)


@dataclass(frozen=True)
class PoseStabilizer:
    """One level's settings: ``points`` (positions, in REF_PX pixels), ``scores`` (the detector scores),
    ``max_gap`` (unseen frames filled), ``max_blip`` (seen frames between unseen ones kept dark)."""

    points: OneEuro
    scores: OneEuro
    max_gap: int
    max_blip: int


# Tuned on the released demo poses 01 and fight with bench/stabilize_poses.py (numbers in the README).
LEVELS: dict[str, PoseStabilizer] = {
    "light": PoseStabilizer(OneEuro(min_cutoff=2.0, beta=0.2, d_cutoff=8.0), OneEuro(min_cutoff=2.0, beta=0.0), max_gap=2, max_blip=1),
    "medium": PoseStabilizer(OneEuro(min_cutoff=1.0, beta=0.1, d_cutoff=4.0), OneEuro(min_cutoff=1.0, beta=0.0), max_gap=4, max_blip=2),
    "strong": PoseStabilizer(OneEuro(min_cutoff=0.5, beta=0.03, d_cutoff=8.0), OneEuro(min_cutoff=0.5, beta=0.0), max_gap=6, max_blip=3),
}


def _undetected(points: np.ndarray) -> np.ndarray:
    """The (-1, -1) "not detected" marker (or non-finite), per point."""
    return (points == -1.0).all(axis=-1) | ~np.isfinite(points).all(axis=-1)


def seen_hand_points(hands: np.ndarray, hands_score: np.ndarray) -> np.ndarray:
    """(F, 2, 21) bool: the hand keypoints the detector really saw (score above SEEN_SCORE, not the marker)."""
    return (np.asarray(hands_score) > SEEN_SCORE) & ~_undetected(np.asarray(hands))


def _keep_blips_dark(scores: np.ndarray, seen: np.ndarray, max_blip: int) -> np.ndarray:
    """Scores of seen runs of at most ``max_blip`` frames between unseen ones, interpolated from those unseen
    neighbours and kept at or below the threshold: the run becomes unseen like the absence around it."""
    filled, dark = fill_gaps(scores, ~seen, max_blip, ends=True)
    blip = seen & dark  # seen, and now filled in from the unseen frames around it
    return np.where(blip, np.minimum(filled, SEEN_SCORE), scores)


def _smooth_points(points: np.ndarray, seen: np.ndarray, fps: float, f: OneEuro) -> np.ndarray:
    """(F, N, 2) normalised points smoothed where seen, in REF_PX pixels; the others exactly as they were."""
    return np.where(seen[..., None], one_euro(points * REF_PX, fps, f, seen) / REF_PX, points)


def stabilize_hands(hands, hands_score, fps: float, s: PoseStabilizer) -> tuple[np.ndarray, np.ndarray]:
    """(hands (F, 2, 21, 2), hands_score (F, 2, 21)) filled and smoothed with the settings ``s``."""
    hands, scores = np.asarray(hands, dtype=np.float64), np.asarray(hands_score, dtype=np.float64)
    f = len(hands)
    pts, sc = hands.reshape(f, 42, 2), scores.reshape(f, 42)
    sc = _keep_blips_dark(sc, seen_hand_points(pts, sc), s.max_blip)
    seen = seen_hand_points(pts, sc)
    sc, _ = fill_gaps(sc, seen, s.max_gap, ends=True)
    pts, seen = fill_gaps(pts, seen, s.max_gap, ends=True)  # seen from here on: the filled samples too
    pts = _smooth_points(pts, seen, fps, s.points)
    sc = one_euro(sc, fps, s.scores, seen)
    return pts.reshape(hands.shape), sc.reshape(scores.shape)


REDO = ("write them again with `echomimic poses ... -o OUT --stabilize LEVEL` (or --stabilize off, to steady them "
        "here)")


def stabilize_poses(seq: PoseSequence, level: str, name: str | None = None, flag: str = "--stabilize") -> PoseSequence:
    """``seq`` with steadier hands (and body points) at ``level`` (``off``, ``light``, ``medium``, ``strong``);
    ``off`` returns ``seq`` itself. See the module notes for what is changed and what is kept. A sequence already
    steadied (``seq.stabilized``: saved by ``echomimic poses --stabilize``) is returned as it is, with one warning
    naming ``name`` (default: ``seq.source``) and ``flag``."""
    if check_level(level) == "off":
        return seq
    if skip_second_pass(seq.stabilized, level, name or seq.source or "the pose sequence", REDO, flag):
        return seq
    s = LEVELS[level]
    hands, hands_score = stabilize_hands(seq.hands, seq.hands_score, seq.fps, s)
    body_seen = (seq.body_score > SEEN_SCORE) & (seq.body_subset >= 0) & ~_undetected(seq.body)
    body = _smooth_points(seq.body, body_seen, seq.fps, s.points)
    tag = f"[stabilized: {level}]"
    return replace(seq, hands=hands, hands_score=hands_score, body=body, report=seq.report,
                   source=f"{seq.source} {tag}".strip(), stabilized=level)
