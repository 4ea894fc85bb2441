"""`PoseSequence`: a whole hand-pose sequence as stacked arrays (one person per frame).

The released EchoMimicV2 format stores one dict per frame (see :mod:`echomimic_lib.pose.io`); here the same
fields are stacked along a leading frame axis so a sequence can be indexed, retimed, transformed and saved
as a whole. Coordinates are normalised to the frame's draw area (the square half-body crop): x in units of
the draw width, y in units of the draw height; they may lie outside [0, 1].

Fields (F = number of frames):

=====================  =================  ===========================================================
``body``               (F, 18, 2) f64     OpenPose-18 body keypoints (``bodies.candidate``)
``body_score``         (F, 18) f64        detector confidences (``bodies.score``)
``body_subset``        (F, 18) f64        keypoint index, or -1 where the score was <= 0.3 (``bodies.subset``)
``hands``              (F, 2, 21, 2) f64  row 0 = the person's left hand, row 1 = right hand
``hands_score``        (F, 2, 21) f64
``faces``              (F, 68, 2) f64
``faces_score``        (F, 68) f64
``draw_pose_params``   (F, 6) int64       [imh, imw, row_begin, row_end, col_begin, col_end] in the canvas
``frame_ids``          (F,) int64         frame numbers in the source (file names of a released folder)
=====================  =================  ===========================================================

Metadata: ``fps`` (frame rate of the source; the released demo poses are 24 fps), ``canvas_size`` (W, H) of
the canvas the draw_pose_params refer to (768 x 768 for the released demos), ``source`` (a description),
``stabilized`` (the ``--stabilize`` level the hands were steadied at: :mod:`.stabilize`; "off" when not).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import EchoMimicError
from ..retime import retime_indices

ARRAY_FIELDS = (
    "body",
    "body_score",
    "body_subset",
    "hands",
    "hands_score",
    "faces",
    "faces_score",
    "draw_pose_params",
    "frame_ids",
)
_SHAPES = {
    "body": (18, 2),
    "body_score": (18,),
    "body_subset": (18,),
    "hands": (2, 21, 2),
    "hands_score": (2, 21),
    "faces": (68, 2),
    "faces_score": (68,),
    "draw_pose_params": (6,),
    "frame_ids": (),
}
DEFAULT_FPS = 24.0  # the reference converts driving videos to 24 fps before extracting poses
DEFAULT_CANVAS = 768  # MAX_SIZE of the reference's crop/pad step


@dataclass(eq=False)
class PoseSequence:
    body: np.ndarray
    body_score: np.ndarray
    body_subset: np.ndarray
    hands: np.ndarray
    hands_score: np.ndarray
    faces: np.ndarray
    faces_score: np.ndarray
    draw_pose_params: np.ndarray
    frame_ids: np.ndarray
    fps: float = DEFAULT_FPS
    canvas_size: tuple[int, int] = (DEFAULT_CANVAS, DEFAULT_CANVAS)
    source: str = ""
    stabilized: str = "off"  # the --stabilize level the hands were steadied at (saved with them)
    report: Any = field(default=None, repr=False)  # load / extraction report (not saved, not compared)

    def __post_init__(self):
        for name in ARRAY_FIELDS:
            dtype = np.int64 if name in ("draw_pose_params", "frame_ids") else np.float64
            setattr(self, name, np.ascontiguousarray(np.asarray(getattr(self, name), dtype=dtype)))
        self.canvas_size = (int(self.canvas_size[0]), int(self.canvas_size[1]))
        self.fps = float(self.fps)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        n = len(self.frame_ids)
        if n == 0:
            raise EchoMimicError("a pose sequence needs at least one frame; this one is empty.")
        for name in ARRAY_FIELDS:
            arr = getattr(self, name)
            want = (n, *_SHAPES[name])
            if arr.shape != want:
                raise EchoMimicError(f"pose sequence field '{name}' has shape {arr.shape}, expected {want}.")
        if not (self.fps > 0 and np.isfinite(self.fps)):
            raise EchoMimicError(f"pose sequence fps must be a positive number, got {self.fps}.")
        if min(self.canvas_size) <= 0:
            raise EchoMimicError(f"pose sequence canvas_size must be positive, got {self.canvas_size}.")
        check_draw_pose_params(self.draw_pose_params, self.canvas_size, what=self.source or "pose sequence")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, index):
        """``seq[i]`` -> the released-format dict of frame i; ``seq[a:b]`` / ``seq[[i, j]]`` -> a PoseSequence."""
        if isinstance(index, (int, np.integer)):
            return self.frame_dict(int(index))
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        return self.take(np.asarray(index, dtype=np.int64))

    def take(self, indices) -> "PoseSequence":
        """A new sequence made of the given frames (repeats allowed)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise EchoMimicError(f"frame index out of range for a pose sequence of {len(self)} frames.")
        return replace(self, report=None, **{name: getattr(self, name)[idx] for name in ARRAY_FIELDS})

    def frame_dict(self, i: int) -> dict:
        """Frame ``i`` in the released per-frame format (one person)."""
        if not -len(self) <= i < len(self):
            raise EchoMimicError(f"frame {i} out of range for a pose sequence of {len(self)} frames.")
        return {
            "bodies": {
                "candidate": self.body[i].copy(),
                "subset": self.body_subset[i][None].copy(),
                "score": self.body_score[i][None].copy(),
            },
            "hands": self.hands[i].copy(),
            "hands_score": self.hands_score[i].copy(),
            "faces": self.faces[i][None].copy(),
            "faces_score": self.faces_score[i][None].copy(),
            "num": int(self.frame_ids[i]),
            "draw_pose_params": [int(v) for v in self.draw_pose_params[i]],
        }

    @classmethod
    def from_frames(cls, frames: list[dict], **meta) -> "PoseSequence":
        """Stack single-person frames given as dicts with the keys of :data:`ARRAY_FIELDS`."""
        if not frames:
            raise EchoMimicError("a pose sequence needs at least one frame; none were given.")
        return cls(**{name: np.stack([np.asarray(f[name]) for f in frames]) for name in ARRAY_FIELDS}, **meta)

    # ------------------------------------------------------------------ time
    def duration(self) -> float:
        return len(self) / self.fps

    def retime(self, n_out: int, policy: str = "ping-pong", out_fps: float | None = None) -> "PoseSequence":
        """A sequence of exactly ``n_out`` frames at ``out_fps`` (default: the source fps) covering the audio.

        Policies (see :mod:`echomimic_lib.retime`): ``ping-pong`` (default; plays forward then backward
        without repeating the turning frame), ``loop``, ``hold-last``, ``stretch`` (resample the whole
        sequence over ``n_out`` frames), ``fail`` (error when the sequence is too short). When ``out_fps``
        differs from the sequence's fps, frames are first resampled in time so motion keeps its speed.
        """
        idx = retime_indices(len(self), int(n_out), policy, self.fps, out_fps)
        if len(idx) == 0:
            raise EchoMimicError(f"cannot retime a pose sequence to {n_out} frames; ask for at least one frame.")
        out = self.take(idx)
        out.fps = float(out_fps) if out_fps else self.fps
        return out

    # ------------------------------------------------------------------ comparison
    def identical(self, other: "PoseSequence") -> bool:
        """Bitwise equality of every array and of the metadata (fps, canvas size)."""
        if not isinstance(other, PoseSequence):
            return False
        same_meta = self.fps == other.fps and self.canvas_size == other.canvas_size
        return same_meta and all(
            getattr(self, n).dtype == getattr(other, n).dtype and np.array_equal(getattr(self, n), getattr(other, n), equal_nan=True)
            for n in ARRAY_FIELDS
        )

    def copy(self) -> "PoseSequence":
        return replace(self, report=None, **{name: getattr(self, name).copy() for name in ARRAY_FIELDS})


def check_draw_pose_params(params: np.ndarray, canvas_size: tuple[int, int], what: str = "pose") -> None:
    """Validate [imh, imw, rb, re, cb, ce] rows: positive draw size matching the paste box inside the canvas."""
    p = np.asarray(params, dtype=np.int64).reshape(-1, 6)
    imh, imw, rb, re, cb, ce = p.T
    cw, ch = canvas_size
    bad = (imh <= 0) | (imw <= 0) | (re - rb != imh) | (ce - cb != imw) | (rb < 0) | (cb < 0) | (re > ch) | (ce > cw)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise EchoMimicError(
            f"{what}: frame {i} has invalid draw_pose_params {p[i].tolist()} for a {cw}x{ch} canvas. They must be "
            "[imh, imw, row_begin, row_end, col_begin, col_end] with row_end-row_begin == imh, col_end-col_begin == imw, "
            "inside the canvas; pass the right canvas size when loading, or regenerate the poses."
        )
