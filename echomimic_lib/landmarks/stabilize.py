"""Steadier driving landmarks (``--stabilize``): the detector's frame-to-frame shake taken out, speech and blinks kept.

MediaPipe looks at every driving frame alone, so a still face shakes by a pixel or two; drawn into the V1 condition
frames this becomes the generated portrait's jitter. :func:`stabilize_landmarks` runs the lag-free One-Euro filter
of :mod:`echomimic_lib.temporal.keypoints` over a :class:`.sequence.LandmarkSequence`, part by part: the rigid face
(outline, nose, the rest of the mesh) and the head pose are steadied hardest, the brows a little less, and the
eyes (with the irises) and lips are followed closely (a high ``beta``: the cutoff rises as soon as they move), so a
plosive or a blink keeps its timing and most of its depth.

Where: on the sequence, before anything is drawn. The V1 condition path draws either the driver's own ``lmks``
(no motion sync, ``.pkl`` folders) or the motion-synced projection, which is made from the mesh ``lmks3d``, the pose
``trans_mat`` and the iris points of ``lmks``. All three are filtered with the same settings per point, so every
drawing made from the sequence is steady, and ``echomimic landmarks --stabilize`` can save the same steadied
sequence that ``animate --landmarks VIDEO --stabilize`` draws. (Filtering the drawn pixels after motion sync would
also work, but would leave the saved sequence and the node's output unsteadied.)

Units: the filter's ``beta`` is per unit of the coordinates, so every array is first brought to pixels of the 512-px
analysis square: ``lmks`` times 512; the mesh by the ratio of the eye-corner distance in pixels to that in the mesh;
the pose as four 3-d "points": the three rotation columns times the face's radius in pixels (a rotation by a small
angle moves the face's edge by that many pixels) and the translation by the mesh's scale.

Frames where the detector found no single face (``valid`` False) are not fed to the filter and come back as the
bad-frame policy filled them; gaps of up to ``max_gap`` frames are bridged by :func:`fill_gaps` so that the filter
does not restart after a one-frame dropout. A run of at most ``max_gap`` such frames at the clip's start or end
(the detector warming up) is given the nearest seen frame's steadied values (held, not extrapolated), so the face
does not jump where it comes in. Blendshape scores are not drawn and are kept as they are. ``"off"`` returns the
input object itself (parity). The result records its level (``stabilized``, saved with it): a sequence already
steadied is not steadied again (one warning; see :func:`stabilize_landmarks`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..temporal import check_level, skip_second_pass
from ..temporal.keypoints import OneEuro, end_runs, fill_gaps, one_euro
from .geometry import similarity_fit
from .parts import MOTION_PARTS, RIGID
from .sequence import LandmarkSequence

PX = 512.0  # the analysis square (conditions.SYNC_SIZE): the filter's units are its pixels
EYE_CORNERS = (33, 263)  # outer eye corners: the scale between the mesh and the pixels


@dataclass(frozen=True)
class Preset:
    """One level's filter settings per group of points (``min_cutoff`` Hz, ``beta`` s/px at 512)."""

    rigid: OneEuro  # face outline, nose, the rest of the mesh, and the head pose
    brows: OneEuro
    eyes: OneEuro  # eyelids, irises, pupils
    mouth: OneEuro  # lips, outer and inner
    max_gap: int = 2  # dropouts of up to this many frames are bridged for the filter


PRESETS: dict[str, Preset] = {  # tuned with bench/stabilize_landmarks.py on the shared driving video (README)
    "light": Preset(rigid=OneEuro(2.0, 0.05), brows=OneEuro(3.0, 0.1), eyes=OneEuro(4.0, 0.5), mouth=OneEuro(4.0, 0.5)),
    "medium": Preset(rigid=OneEuro(0.8, 0.02), brows=OneEuro(1.5, 0.05), eyes=OneEuro(2.0, 0.3), mouth=OneEuro(2.0, 0.2)),
    "strong": Preset(rigid=OneEuro(0.3, 0.01), brows=OneEuro(0.8, 0.03), eyes=OneEuro(1.0, 0.3), mouth=OneEuro(1.0, 0.1)),
}


def point_groups(n_points: int = 478) -> dict[str, np.ndarray]:
    """Indices of each filter group among ``n_points`` landmarks (every point in exactly one group)."""
    group = np.zeros(n_points, dtype=np.int64)  # 0 = rigid
    eyes = list(MOTION_PARTS["left_eye"]) + list(MOTION_PARTS["right_eye"]) + list(range(468, 478))
    for g, idx in ((1, MOTION_PARTS["left_brow"] + MOTION_PARTS["right_brow"]), (2, eyes), (3, MOTION_PARTS["mouth"])):
        idx = np.asarray([i for i in idx if i < n_points], dtype=np.int64)
        group[idx] = g
    return {name: np.flatnonzero(group == g) for g, name in enumerate(("rigid", "brows", "eyes", "mouth"))}


def _smooth_points(x: np.ndarray, fps: float, preset: Preset, valid: np.ndarray, max_gap: int) -> np.ndarray:
    """(F, N, D) points in pixel units, each group with its settings; invalid frames returned as given."""
    filled, seen = fill_gaps(x, valid, max_gap)
    out = x.copy()
    for name, idx in point_groups(x.shape[1]).items():
        if idx.size:
            sm = one_euro(filled[:, idx], fps, getattr(preset, name), valid=seen[:, idx])
            out[:, idx] = np.where(valid[:, None, None], sm, x[:, idx])
    return out


def _split_head(px: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image landmarks (F, N, 3, pixels) split into the head's motion in the image, as three points (F, 3, 2) that
    a similarity moves with the face, and the face in the head's own frame (F, N, 3): each frame's similarity fit of
    the rigid points (:data:`.parts.RIGID`) onto the median face, undone."""
    target = np.median(px[valid, :, :2], axis=0)[RIGID]
    centre = target.mean(axis=0)
    radius = max(float(np.sqrt(((target - centre) ** 2).sum(axis=1).mean())), 1.0)
    basis = centre + np.array([[0.0, 0.0], [radius, 0.0], [0.0, radius]])
    head, local = np.empty((len(px), 3, 2)), np.empty_like(px)
    for i, frame in enumerate(px):
        s, rot, t = similarity_fit(target, frame[RIGID, :2])
        head[i] = s * basis @ rot.T + t
        local[i, :, :2] = (frame[:, :2] - t) @ rot / s
        local[i, :, 2:] = frame[:, 2:] / s
    return basis, head, local


def _join_head(basis: np.ndarray, head: np.ndarray, local: np.ndarray) -> np.ndarray:
    out = np.empty_like(local)
    for i in range(len(local)):
        s, rot, t = similarity_fit(basis, head[i])
        out[i, :, :2] = s * local[i, :, :2] @ rot.T + t
        out[i, :, 2:] = s * local[i, :, 2:]
    return out


def _smooth_image_points(px: np.ndarray, fps: float, preset: Preset, valid: np.ndarray) -> np.ndarray:
    """Image landmarks: the head's motion steadied with the rigid settings, the face in the head's frame part by
    part (smoothing each point on its own would let a responsive part keep the head's shake while the outline
    stops: the mouth would tremble against the face)."""
    basis, head, local = _split_head(px, valid)
    filled, seen = fill_gaps(head, valid, preset.max_gap)
    head = np.where(valid[:, None, None], one_euro(filled, fps, preset.rigid, valid=seen), head)
    out = _join_head(basis, head, _smooth_points(local, fps, preset, valid, preset.max_gap))
    return np.where(valid[:, None, None], out, px)


def _mesh_scale(seq: LandmarkSequence, valid: np.ndarray) -> float:
    """Pixels at 512 per unit of the canonical mesh (median over the seen frames of the eye-corner distances)."""
    a, b = EYE_CORNERS
    px = np.linalg.norm((seq.lmks[valid, a, :2] - seq.lmks[valid, b, :2]) * PX, axis=1)
    mesh = np.linalg.norm(seq.lmks3d[valid, a] - seq.lmks3d[valid, b], axis=1)
    ok = mesh > 0
    return float(np.median(px[ok] / mesh[ok])) if ok.any() else 1.0


def _smooth_pose(trans_mat: np.ndarray, fps: float, preset: Preset, valid: np.ndarray, radius: float,
                 scale: float) -> np.ndarray:
    """The 4x4 poses' rotation columns (times the face radius) and translation (times the mesh scale), filtered as
    four rigid points; the bottom row is kept."""
    t = np.asarray(trans_mat, dtype=np.float64)
    pts = np.concatenate([t[:, :3, :3].transpose(0, 2, 1) * radius, t[:, None, :3, 3] * scale], axis=1)  # (F, 4, 3)
    filled, seen = fill_gaps(pts, valid, preset.max_gap)
    sm = one_euro(filled, fps, preset.rigid, valid=seen)
    sm = np.where(valid[:, None, None], sm, pts)
    out = t.copy()
    u, sig, vt = np.linalg.svd((sm[:, :3] / radius).transpose(0, 2, 1))  # back to a scaled rotation (polar part)
    out[:, :3, :3] = (u * sig.mean(axis=1, keepdims=True)[:, None]) @ vt
    out[:, :3, 3] = sm[:, 3] / scale
    return out


REDO = ("extract them again with `echomimic landmarks VIDEO -o FILE --stabilize LEVEL` (or --stabilize off, to steady "
        "them here), or give the driving video itself")


def stabilize_landmarks(seq: LandmarkSequence, level: str, fps: float | None = None, name: str | None = None,
                        flag: str = "--stabilize") -> LandmarkSequence:
    """``seq`` with its landmarks, mesh and pose steadied at ``level`` (see the module). ``"off"``: ``seq`` itself.
    ``fps``: the frame rate when the sequence has none (default 24, the driving videos' usual rate). A sequence
    already steadied (``seq.stabilized``, e.g. a file saved by ``echomimic landmarks --stabilize``) is returned as
    it is, with one warning naming ``name`` (the file) and ``flag``."""
    check_level(level)
    if level == "off" or len(seq) < 3:
        return seq
    if skip_second_pass(seq.stabilized, level, name or "the landmark sequence", REDO, flag):
        return seq
    preset = PRESETS[level]
    rate = float(seq.fps or fps or 24.0)
    valid = np.asarray(seq.valid, dtype=bool)
    if not valid.any():
        return seq
    lmks = _smooth_image_points(seq.lmks * PX, rate, preset, valid) / PX
    lmks3d, trans_mat = seq.lmks3d, seq.trans_mat
    if seq.lmks3d is not None and seq.lmks.shape[1] > max(EYE_CORNERS):
        scale = _mesh_scale(seq, valid)
        lmks3d = _smooth_points(seq.lmks3d * scale, rate, preset, valid, preset.max_gap) / scale
        if trans_mat is not None:
            mean = seq.lmks3d[valid].mean(axis=0)
            radius = float(np.sqrt(((mean - mean.mean(axis=0)) ** 2).sum(axis=1).mean())) * scale
            trans_mat = _smooth_pose(seq.trans_mat, rate, preset, valid, max(radius, 1.0), scale)
    edge, seen, near = end_runs(valid, preset.max_gap), np.flatnonzero(valid), np.arange(len(seq))
    near[edge] = np.where(near[edge] < seen[0], seen[0], seen[-1])  # a short run at an end: its nearest seen frame

    def keep(new, old):  # unseen frames exactly as given (no round trip through the pixel scale), but the ends
        return None if old is None else np.where((valid | edge).reshape((-1,) + (1,) * (old.ndim - 1)), new[near], old)

    return replace(seq, lmks=keep(lmks, seq.lmks), lmks3d=keep(lmks3d, seq.lmks3d),
                   trans_mat=keep(trans_mat, seq.trans_mat), valid=valid.copy(),
                   face_counts=np.array(seq.face_counts, copy=True), stabilized=level)
