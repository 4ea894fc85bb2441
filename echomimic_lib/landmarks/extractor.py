"""Face landmarks with MediaPipe's Tasks FaceLandmarker, on one image or on a video.

Per frame: 478 normalised landmarks, the 468-vertex canonical metric mesh (``lmks3d``), the 4x4
facial transformation matrix and 52 blendshape scores. The Tasks API returns everything but the
mesh; the mesh is recomputed from the landmarks with MediaPipe's geometry pipeline and the
metadata inside the ``.task`` bundle (see :mod:`.geometry` for why and how).

Each frame is analysed independently (IMAGE mode, as in V1). A frame with no face or more than one
face is a *bad frame*; bad frames are reported (``LandmarkSequence.bad_frames`` / ``report()``)
and handled by a policy:

- ``"fail"``: raise, listing the bad frames;
- ``"hold"``: repeat the last good frame (frames before the first good one take the first good one);
- ``"interpolate"``: blend linearly between the surrounding good frames (poses are blended and
  re-orthonormalised), holding at the ends.

A video with no usable face at all always fails. (V1 aborts at the first bad frame.)
"""
from __future__ import annotations

import logging
import os
import weakref
from typing import Sequence

import numpy as np

from ..errors import EchoMimicError
from ._image import as_rgb_uint8
from .geometry import face_geometry, load_metadata
from .mp_models import import_mediapipe, quiet_native_logs, resolve_model
from .sequence import LandmarkSequence

log = logging.getLogger(__name__)

POLICIES = ("fail", "hold", "interpolate")
_POLICY_ALIASES = {"hold-last": "hold", "hold_last": "hold", "interp": "interpolate", "error": "fail"}


def normalize_policy(policy: str) -> str:
    p = _POLICY_ALIASES.get(str(policy).strip().lower(), str(policy).strip().lower())
    if p not in POLICIES:
        raise EchoMimicError(f"unknown bad-frame policy '{policy}'; choose one of {', '.join(POLICIES)}.")
    return p


class FaceLandmarkExtractor:
    """MediaPipe FaceLandmarker wrapper. Use as a context manager or call :meth:`close`.

    model_path / models_dir / download: see :func:`.mp_models.resolve_model`.
    multiple_faces: ``"bad"`` (default) marks frames with more than one face as bad; ``"largest"``
    keeps the largest face.
    """

    def __init__(self, model_path=None, models_dir=None, download: bool = False, multiple_faces: str = "bad",
                 min_detection_confidence: float = 0.5, min_presence_confidence: float = 0.5):
        if multiple_faces not in ("bad", "largest"):
            raise EchoMimicError("multiple_faces must be 'bad' or 'largest'.")
        self.model_path = resolve_model("face_landmarker", model_path, models_dir, download)
        self.multiple_faces = multiple_faces
        self._meta = load_metadata(str(self.model_path))
        mp, base_options, fl, _ = import_mediapipe()
        self._mp = mp
        options = fl.FaceLandmarkerOptions(
            base_options=base_options(model_asset_path=str(self.model_path)),
            num_faces=2,  # enough to tell "one face" from "several faces"
            min_face_detection_confidence=min_detection_confidence,
            min_face_presence_confidence=min_presence_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        with quiet_native_logs():  # MediaPipe's C++ lines come at creation and the first detection
            self._landmarker = fl.FaceLandmarker.create_from_options(options)
        self._first = True
        # close the native graph as soon as this wrapper is garbage-collected (call close() or use
        # ``with`` to release it deterministically)
        self._finalizer = weakref.finalize(self, self._landmarker.close)
        self._finalizer.atexit = False  # MediaPipe's executor is already gone at interpreter exit

    def close(self) -> None:
        if getattr(self, "_landmarker", None) is not None:
            self._finalizer()
            self._landmarker = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- single frame ----
    def detect(self, image) -> list[dict]:
        """All faces of one RGB image: dicts with lmks (478,3), lmks3d (468,3), trans_mat (4,4),
        blendshapes (52,), blendshape_names."""
        if self._landmarker is None:
            raise EchoMimicError("this FaceLandmarkExtractor was closed; create a new one.")
        rgb = as_rgb_uint8(image)
        h, w = rgb.shape[:2]
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb)
        if self._first:
            self._first = False
            with quiet_native_logs():
                result = self._landmarker.detect(image)
        else:
            result = self._landmarker.detect(image)
        faces = []
        for k, face in enumerate(result.face_landmarks):
            lmks = np.array([[p.x, p.y, p.z] for p in face], dtype=np.float64)
            mesh, _pose = face_geometry(lmks, (w, h), self._meta)
            cats = result.face_blendshapes[k] if k < len(result.face_blendshapes) else []
            mats = result.facial_transformation_matrixes
            faces.append({
                "lmks": lmks,
                "lmks3d": mesh,
                "trans_mat": np.asarray(mats[k], dtype=np.float64) if k < len(mats) else _pose,
                "blendshapes": np.array([c.score for c in cats], dtype=np.float32),
                "blendshape_names": [c.category_name or "" for c in cats],
            })
        return faces

    # ---- image / video ----
    def extract(self, frames, policy: str = "fail", fps: float | None = None, progress=None,
                total: int | None = None) -> LandmarkSequence:
        """Landmarks of a single image (H, W, C) or of a video: (F, H, W, C) array, list of frames,
        a :class:`echomimic_lib.io.video_io.VideoClip`, a video file path (decoded one frame at a time by
        :class:`echomimic_lib.io.video_io.VideoFrames`, as is a ``VideoFrames`` given; a variable frame rate file's
        frames placed on its clock, :func:`echomimic_lib.io.retime.on_clock`), or any iterable / iterator of
        frames, taken one at a time: each frame is analysed before the next one is asked for, so a video never has to
        be in memory whole. ``progress(done, total)`` is called after each frame; ``total`` is the input's length,
        else ``total`` (a hint for iterators), else the video's estimated frame count, and the real count at the last
        frame (never reached before it)."""
        from ..io.video_io import VideoFrames, counted

        policy = normalize_policy(policy)
        if isinstance(frames, (str, os.PathLike)):  # a variable frame rate: one frame a tick, the one shown nearest it
            from ..io.retime import on_clock

            frames = on_clock(VideoFrames(frames), "the video", "its landmarks keep the video's own timing")
        if isinstance(frames, VideoFrames):
            fps = fps if fps is not None else frames.fps
            total = frames.estimated_frames if total is None else total
        elif hasattr(frames, "frames") and hasattr(frames, "fps"):
            fps = fps if fps is not None else frames.fps
            frames = frames.frames
        if isinstance(frames, np.ndarray) and frames.ndim in (2, 3) and (frames.ndim == 2 or frames.shape[-1] in (1, 3, 4)):
            frames = [frames]
        if hasattr(frames, "__len__") and not isinstance(frames, VideoFrames):
            total = len(frames)
        it = iter(frames)
        try:
            return self._extract_stream(counted(it, total or 0, progress), policy, fps)
        finally:
            if it is not frames and hasattr(it, "close"):
                it.close()  # a video decoded here is closed even when the extraction stops early

    def _extract_stream(self, frames, policy: str, fps) -> LandmarkSequence:
        size = None
        results, counts = [], []
        img = next(frames, _END)
        if img is _END:
            raise EchoMimicError("the video has no frames; check the file (it may be empty or unreadable).")
        i = 0
        while img is not _END:
            shape = np.asarray(img).shape[:2]
            if size is None:
                size = (int(shape[1]), int(shape[0]))
            elif (shape[1], shape[0]) != size:
                raise EchoMimicError(f"frame {i} is {shape[1]}x{shape[0]} but frame 0 is {size[0]}x{size[1]}; "
                                     "all frames of a video must have one size.")
            faces = self.detect(img)
            counts.append(len(faces))
            if len(faces) == 1 or (len(faces) > 1 and self.multiple_faces == "largest"):
                results.append(max(faces, key=_face_area))
            else:
                results.append(None)
            i, img = i + 1, None  # the frame let go before the next one is read
            img = next(frames, _END)  # asked for after this one is analysed: the last frame is known (counted)
        return assemble_sequence(results, counts, policy, size, fps)


_END = object()  # the end of the frames


def _face_area(face: dict) -> float:
    xy = face["lmks"][:, :2]
    ext = xy.max(axis=0) - xy.min(axis=0)
    return float(ext[0] * ext[1])


def _blend_pose(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    m = (1 - t) * a + t * b
    u, s, vt = np.linalg.svd(m[:3, :3])
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    out = m.copy()
    out[:3, :3] = r * s.mean()
    out[3] = (0, 0, 0, 1)
    return out


def assemble_sequence(results: Sequence[dict | None], counts: Sequence[int], policy: str,
                      image_size: tuple[int, int], fps: float | None = None) -> LandmarkSequence:
    """Build a sequence from per-frame results (None = bad frame), filling bad frames by ``policy``."""
    policy = normalize_policy(policy)
    n = len(results)
    good = [i for i, r in enumerate(results) if r is not None]
    counts = np.asarray(counts, dtype=np.int64)
    if not good:
        none, many = int((counts == 0).sum()), int((counts > 1).sum())
        raise EchoMimicError(
            f"no single face was found in any of the {n} frame(s) (no face in {none}, several faces in {many}); "
            "use a video/image with exactly one clearly visible face.")
    bad = [i for i in range(n) if results[i] is None]
    if bad and policy == "fail":
        none = [i for i in bad if counts[i] == 0]
        many = [i for i in bad if counts[i] > 1]
        raise EchoMimicError(
            f"{len(bad)} of {n} frames have no usable face (no face: {none[:20]}{'...' if len(none) > 20 else ''}; "
            f"several faces: {many[:20]}{'...' if len(many) > 20 else ''}); choose the 'hold' or 'interpolate' "
            "policy to fill them, or trim the video.")
    if bad:
        log.warning("%d of %d frames without a single face, filled with policy '%s': %s", len(bad), n, policy, bad[:20])
    keys = ("lmks", "lmks3d", "trans_mat", "blendshapes")
    arrays = {k: np.stack([results[i][k] if results[i] is not None else results[good[0]][k] for i in range(n)]) for k in keys}
    good_arr = np.asarray(good)
    for i in bad:
        after = good_arr[good_arr > i]
        before = good_arr[good_arr < i]
        if policy == "hold" or len(after) == 0 or len(before) == 0:
            src = before[-1] if len(before) else after[0]
            for k in keys:
                arrays[k][i] = arrays[k][src]
            continue
        a, b = int(before[-1]), int(after[0])
        t = (i - a) / (b - a)
        for k in ("lmks", "lmks3d", "blendshapes"):
            arrays[k][i] = (1 - t) * arrays[k][a] + t * arrays[k][b]
        arrays["trans_mat"][i] = _blend_pose(arrays["trans_mat"][a], arrays["trans_mat"][b], t)
    valid = np.array([r is not None for r in results])
    names = results[good[0]].get("blendshape_names", [])
    return LandmarkSequence(image_size=image_size, valid=valid, face_counts=counts, policy=policy, fps=fps,
                            blendshape_names=list(names), **arrays)
