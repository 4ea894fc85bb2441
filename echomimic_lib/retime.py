"""Retiming a condition sequence (landmarks, hand poses) to the number of video frames the audio needs.

Pure functions on frame indices: ``retime_indices`` says which source frame feeds each output frame.

Policies:
- ``loop``: 0 1 2 .. n-1 0 1 2 ..
- ``ping-pong`` (the default of ``retime_indices`` and of landmark sequences): 0 1 .. n-1 n-2 .. 1 0 1 ..; the turning frames are not repeated, so there is no
  frozen frame and no jump at the seam.
- ``hold-last``: play once, then repeat the last frame.
- ``stretch``: resample in time so the whole source spans the output (nearest frame).
- ``fail``: raise if the source is too short.

When the source and output frame rates differ, the source is first resampled in time
(nearest frame at ``t = i / out_fps``) and the policy then extends that timeline.

V2 hand poses have one more policy, ``continue`` (their default, :func:`default_policy`): the sequence once, then
gestures matched to the speech (:mod:`echomimic_lib.pose.gestures.continuation`; it needs the speech, so it is not
an index mapping and ``retime_indices`` does not take it). V1 landmark sequences keep ``ping-pong`` by default.
"""
from __future__ import annotations

import numpy as np

from .errors import EchoMimicError

POLICIES = ("ping-pong", "loop", "hold-last", "stretch", "fail")
CONTINUE = "continue"
POSE_POLICIES = POLICIES + (CONTINUE,)  # V2 hand poses
LANDMARK_DEFAULT, POSE_DEFAULT = "ping-pong", CONTINUE


def default_policy(policy: str | None, hand_pose: bool) -> str:
    """``policy`` when one is chosen, else the default for the sequence: ``continue`` for V2 hand poses, ``ping-pong``
    for V1 landmarks. A policy the sequence cannot take is refused with the ones it can."""
    if policy is None:
        return POSE_DEFAULT if hand_pose else LANDMARK_DEFAULT
    allowed = POSE_POLICIES if hand_pose else POLICIES
    if policy not in allowed:
        what = "V2 hand poses" if hand_pose else "landmark sequences"
        raise EchoMimicError(f"unknown retiming policy '{policy}' for {what}; choose one of {', '.join(allowed)}.")
    return policy


def retime_indices(n_src: int, n_out: int, policy: str = "ping-pong", src_fps: float | None = None, out_fps: float | None = None) -> np.ndarray:
    """Indices into the source sequence, one per output frame (int64 array of length ``n_out``)."""
    if policy not in POLICIES:
        raise EchoMimicError(f"unknown retiming policy '{policy}'; choose one of {', '.join(POLICIES)}.")
    if n_src <= 0:
        raise EchoMimicError("the condition sequence is empty: it needs at least one frame.")
    if n_out <= 0:
        return np.zeros(0, dtype=np.int64)
    if policy == "stretch":
        return np.minimum(np.floor((np.arange(n_out) + 0.5) * n_src / n_out).astype(np.int64), n_src - 1)
    # timeline of the source at the output frame rate
    if src_fps and out_fps and abs(src_fps - out_fps) > 1e-6:
        n_time = max(1, int(np.floor(n_src * out_fps / src_fps + 1e-9)))
        timeline = np.minimum(np.floor(np.arange(n_time) * src_fps / out_fps + 1e-9).astype(np.int64), n_src - 1)
    else:
        timeline = np.arange(n_src, dtype=np.int64)
    n = len(timeline)
    i = np.arange(n_out)
    if policy == "fail":
        if n_out > n:
            raise EchoMimicError(
                f"the condition sequence covers {n} frames but {n_out} are needed; choose another retiming "
                f"policy (loop, ping-pong, hold-last, stretch) or shorten the audio."
            )
        return timeline[:n_out]
    if policy == "loop":
        return timeline[i % n]
    if policy == "hold-last":
        return timeline[np.minimum(i, n - 1)]
    # ping-pong
    if n == 1:
        return timeline[np.zeros(n_out, dtype=np.int64)]
    period = 2 * (n - 1)
    k = i % period
    return timeline[np.where(k < n, k, period - k)]
