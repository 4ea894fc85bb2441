"""Crop geometry: where the model's square came from in the original picture, so results can be pasted back.

Every cropping step (V1 face crop, V2 half-body crop, plain resize, the dubbing track) describes its crop
with a :class:`CropGeometry`: the rectangle ``box`` cut from the original (``source_size`` = W x H pixels)
and the rectangle ``placement`` of the output picture (``output_size``) it was resized into. The mapping is
axis-aligned (scale + offset, no rotation), so ``box`` <-> ``placement`` is all there is to know.

- V1 face crop: ``box`` = the square of :func:`echomimic_lib.landmarks.preprocess.v1_face_mask_and_crop`,
  ``placement`` = the whole output; ``face_box`` = the face region the V1 mask covers (the face box dilated
  by 10 %), ``face_hull`` = the face landmarks' convex hull when landmarks found the face.
- V2 half-body crop: ``box`` = the crop rectangle, ``placement`` = its draw area in the output (the rest of
  the output is black padding).
- resize only: ``box`` = the whole original, ``placement`` = the whole output.

All coordinates are integer pixels, x0/y0 inclusive and x1/y1 exclusive. :meth:`to_dict` /
:meth:`from_dict` give a plain, JSON-serialisable dict.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import EchoMimicError

Rect = tuple[int, int, int, int]
KINDS = ("v1_face", "v2_halfbody", "resize", "video_face")


def _rect(value, what: str) -> Rect:
    try:
        x0, y0, x1, y1 = (int(round(float(v))) for v in value)
    except (TypeError, ValueError):
        raise EchoMimicError(f"crop geometry: {what} must be four numbers (x0, y0, x1, y1), got {value!r}.") from None
    if x1 <= x0 or y1 <= y0:
        raise EchoMimicError(f"crop geometry: {what} {value!r} is empty; it needs x1 > x0 and y1 > y0.")
    return x0, y0, x1, y1


def _size(value, what: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value)
    except (TypeError, ValueError):
        raise EchoMimicError(f"crop geometry: {what} must be (width, height), got {value!r}.") from None
    if w <= 0 or h <= 0:
        raise EchoMimicError(f"crop geometry: {what} {value!r} must be positive.")
    return w, h


@dataclass(frozen=True)
class CropGeometry:
    source_size: tuple[int, int]          # original picture (W, H)
    box: Rect                             # rectangle cut from the original, source pixels
    output_size: tuple[int, int]          # generated picture (W, H)
    placement: Rect | None = None         # where ``box`` lands in the output (None: the whole output)
    kind: str = "resize"
    face_box: Rect | None = None          # V1 face region (the face-mask rectangle), source pixels
    face_hull: tuple[tuple[float, float], ...] | None = field(default=None, compare=False)  # landmark hull, source px

    def __post_init__(self):
        sw, sh = _size(self.source_size, "source_size")
        ow, oh = _size(self.output_size, "output_size")
        object.__setattr__(self, "source_size", (sw, sh))
        object.__setattr__(self, "output_size", (ow, oh))
        box = _rect(self.box, "box")
        if box[0] < 0 or box[1] < 0 or box[2] > sw or box[3] > sh:
            raise EchoMimicError(f"crop geometry: box {box} lies outside the {sw}x{sh} original.")
        object.__setattr__(self, "box", box)
        place = _rect(self.placement if self.placement is not None else (0, 0, ow, oh), "placement")
        if place[0] < 0 or place[1] < 0 or place[2] > ow or place[3] > oh:
            raise EchoMimicError(f"crop geometry: placement {place} lies outside the {ow}x{oh} output.")
        object.__setattr__(self, "placement", place)
        if self.kind not in KINDS:
            raise EchoMimicError(f"crop geometry: unknown kind '{self.kind}'; one of {', '.join(KINDS)}.")
        if self.face_box is not None:
            object.__setattr__(self, "face_box", _rect(self.face_box, "face_box"))
        if self.face_hull is not None:
            object.__setattr__(self, "face_hull", tuple((float(x), float(y)) for x, y in self.face_hull))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def whole(cls, source_size, output_size, kind: str = "resize") -> "CropGeometry":
        """The whole original stretched to the output (Reference Preparation's "resize only")."""
        w, h = _size(source_size, "source_size")
        return cls((w, h), (0, 0, w, h), output_size, kind=kind)

    @classmethod
    def from_halfbody(cls, crop, output_size, canvas: int | None = None) -> "CropGeometry":
        """From an :class:`echomimic_lib.pose.HalfBodyCrop` whose S x S canvas was then stretched to ``output_size``
        (:func:`echomimic_lib.pose.fit_image`, fit "stretch")."""
        ow, oh = _size(output_size, "output_size")
        s = float(canvas or crop.size)
        _imh, _imw, rb, re, cb, ce = (float(v) for v in crop.draw_pose_params)
        place = (cb * ow / s, rb * oh / s, ce * ow / s, re * oh / s)
        return cls(tuple(crop.image_size), (crop.x0, crop.y0, crop.x1, crop.y1), (ow, oh), place, kind="v2_halfbody")

    # ------------------------------------------------------------------ mapping
    @property
    def scale(self) -> tuple[float, float]:
        """Output pixels per source pixel, (sx, sy)."""
        bx0, by0, bx1, by1 = self.box
        px0, py0, px1, py1 = self.placement
        return (px1 - px0) / (bx1 - bx0), (py1 - py0) / (by1 - by0)

    def to_output(self, points) -> np.ndarray:
        """Source pixel coordinates (..., 2) -> output pixel coordinates."""
        p = np.asarray(points, dtype=np.float64)
        sx, sy = self.scale
        return np.stack([(p[..., 0] - self.box[0]) * sx + self.placement[0],
                         (p[..., 1] - self.box[1]) * sy + self.placement[1]], axis=-1)

    def to_source(self, points) -> np.ndarray:
        """Output pixel coordinates (..., 2) -> source pixel coordinates."""
        p = np.asarray(points, dtype=np.float64)
        sx, sy = self.scale
        return np.stack([(p[..., 0] - self.placement[0]) / sx + self.box[0],
                         (p[..., 1] - self.placement[1]) / sy + self.box[1]], axis=-1)

    def with_face(self, face_box=None, face_hull=None) -> "CropGeometry":
        return CropGeometry(self.source_size, self.box, self.output_size, self.placement, self.kind,
                            face_box if face_box is not None else self.face_box,
                            face_hull if face_hull is not None else self.face_hull)

    # ------------------------------------------------------------------ plain dict
    def to_dict(self) -> dict:
        out = {"kind": self.kind, "source_size": list(self.source_size), "box": list(self.box),
               "output_size": list(self.output_size), "placement": list(self.placement)}
        if self.face_box is not None:
            out["face_box"] = list(self.face_box)
        if self.face_hull is not None:
            out["face_hull"] = [list(p) for p in self.face_hull]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "CropGeometry":
        if not isinstance(data, dict):
            raise EchoMimicError(f"crop geometry: expected a dict, got {type(data).__name__}.")
        missing = [k for k in ("source_size", "box", "output_size") if k not in data]
        if missing:
            raise EchoMimicError(f"crop geometry: missing {', '.join(missing)}; write it with CropGeometry.to_dict().")
        unknown = set(data) - {"kind", "source_size", "box", "output_size", "placement", "face_box", "face_hull"}
        if unknown:
            raise EchoMimicError(f"crop geometry: unknown keys {sorted(unknown)}.")
        return cls(tuple(data["source_size"]), tuple(data["box"]), tuple(data["output_size"]), data.get("placement"),
                   data.get("kind", "resize"), data.get("face_box"), data.get("face_hull"))
