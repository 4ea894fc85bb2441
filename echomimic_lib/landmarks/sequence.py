"""``LandmarkSequence``: per-frame face landmarks plus what the extractor knows about each frame.

Coordinates: ``lmks`` are MediaPipe-normalised (x, y in [0, 1] of the frame they came from, z in
the same scale as x). ``pixels()`` converts to pixel coordinates of any square/rectangular frame.
``lmks3d`` (canonical metric mesh) and ``trans_mat`` (facial transformation) are None for sequences
loaded from pixel-only sources (V1 ``.pkl`` frames).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import EchoMimicError


@dataclass
class LandmarkSequence:
    lmks: np.ndarray                                  # (F, 478, 3) float64 normalised
    lmks3d: np.ndarray | None = None                  # (F, 468, 3) float64 canonical metric mesh
    trans_mat: np.ndarray | None = None               # (F, 4, 4) float64
    blendshapes: np.ndarray | None = None             # (F, 52) float32 scores (index 0 = neutral)
    blendshape_names: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (512, 512)          # (W, H) of the analysed frames
    valid: np.ndarray | None = None                   # (F,) bool: a single face was found in this frame
    face_counts: np.ndarray | None = None             # (F,) int: faces found per frame
    policy: str = "fail"                              # how invalid frames were filled
    fps: float | None = None
    stabilized: str = "off"                           # the --stabilize level the points were steadied at (saved too)

    def __post_init__(self):
        self.lmks = np.asarray(self.lmks, dtype=np.float64)
        if self.lmks.ndim != 3 or self.lmks.shape[2] < 2:
            raise EchoMimicError(f"landmarks must be (F, N, 2|3), got shape {self.lmks.shape}.")
        n = self.lmks.shape[0]
        if self.valid is None:
            self.valid = np.ones(n, dtype=bool)
        if self.face_counts is None:
            self.face_counts = self.valid.astype(np.int64)
        for name in ("lmks3d", "trans_mat", "blendshapes", "valid", "face_counts"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != n:
                raise EchoMimicError(f"LandmarkSequence.{name} has {len(arr)} frames, landmarks have {n}.")
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    def __len__(self) -> int:
        return int(self.lmks.shape[0])

    @property
    def bad_frames(self) -> list[int]:
        """Frames where no face or more than one face was found (filled by ``policy``)."""
        return [int(i) for i in np.flatnonzero(~self.valid)]

    def report(self) -> str:
        bad = self.bad_frames
        if not bad:
            return f"{len(self)} frames, a face in every frame"
        none = [i for i in bad if self.face_counts[i] == 0]
        many = [i for i in bad if self.face_counts[i] > 1]
        found = [f"no face in {len(none)} {_fmt(none)}"] if none else []
        found += [f"more than one face in {len(many)} {_fmt(many)}"] if many else []
        return f"{len(self)} frames; {'; '.join(found)}; filled with policy '{self.policy}'"

    def pixels(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """(F, N, 2) pixel coordinates in a frame of ``size`` = (W, H) (default: ``image_size``)."""
        w, h = size or self.image_size
        return self.lmks[:, :, :2] * np.array([w, h], dtype=np.float64)

    def frame(self, i: int) -> dict:
        """One frame as the V1 extractor's dict: lmks, lmks3d, trans_mat, bs (neutral dropped)."""
        out = {"lmks": self.lmks[i].copy()}
        if self.lmks3d is not None:
            out["lmks3d"] = self.lmks3d[i].copy()
        if self.trans_mat is not None:
            out["trans_mat"] = self.trans_mat[i].copy()
        if self.blendshapes is not None:
            out["bs"] = self.blendshapes[i, 1:].copy()
        return out

    def take(self, indices) -> "LandmarkSequence":
        """A new sequence of the given frames (e.g. from :func:`echomimic_lib.retime.retime_indices`)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise EchoMimicError(f"frame index out of range 0..{len(self) - 1}.")

        def sel(a):
            return None if a is None else a[idx]

        return replace(self, lmks=self.lmks[idx], lmks3d=sel(self.lmks3d), trans_mat=sel(self.trans_mat),
                       blendshapes=sel(self.blendshapes), valid=self.valid[idx], face_counts=self.face_counts[idx])

    @classmethod
    def from_pixels(cls, px, image_size: tuple[int, int] = (512, 512), fps: float | None = None) -> "LandmarkSequence":
        """From (F, N, 2|3) pixel coordinates (e.g. V1 ``.pkl`` frames, 512-px); z is kept as given."""
        px = np.asarray(px, dtype=np.float64)
        if px.ndim != 3 or px.shape[2] < 2:
            raise EchoMimicError(f"pixel landmarks must be (F, N, 2|3), got shape {px.shape}.")
        lm = np.zeros((px.shape[0], px.shape[1], 3))
        lm[:, :, 0] = px[:, :, 0] / image_size[0]
        lm[:, :, 1] = px[:, :, 1] / image_size[1]
        if px.shape[2] > 2:
            lm[:, :, 2] = px[:, :, 2] / image_size[0]
        return cls(lmks=lm, image_size=image_size, fps=fps)


def _fmt(frames: list[int], limit: int = 12) -> str:
    if not frames:
        return ""
    head = ", ".join(str(i) for i in frames[:limit])
    return f"(frames {head}{', ...' if len(frames) > limit else ''})"
