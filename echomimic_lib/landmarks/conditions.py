"""Per-frame V1 landmark condition images (uint8 (F, H, W, 3) RGB) for the sampler.

Two sources:

- a driving video (+ the reference image): landmarks are extracted from every driving frame
  (V1: centre-cropped to a square, resized to 512), optionally retargeted onto the reference face
  with part-aware motion sync (the reference is resized to 512x512 as in V1), then drawn; the two steps apart:
  :func:`extract_driving_landmarks` (what ``echomimic landmarks`` saves) and :func:`conditions_from_driver`
  (what ``animate --landmarks FILE.npz`` draws from the saved sequence: the same images);
- a folder of V1 ``.pkl`` frames (512-px coordinates), drawn directly.

Length policy: the driving sequence's length and fps are independent of the audio. The sequence is
mapped onto the requested ``num_frames`` with :func:`echomimic_lib.retime.retime_indices`: first
resampled in time when ``src_fps`` and ``out_fps`` differ, then extended by ``retime_policy``
(``ping-pong`` by default; ``loop``, ``hold-last``, ``stretch``, or ``fail`` when too short).
Motion sync runs on the whole driving sequence before retiming, so its smoothing sees real time; it also fits
the reference's parts to the driver's mean face over ALL its frames (as V1 does), so a render shorter than the
video still reads every driving frame: stopping at the frames shown would change them (tests/test_landmarks_length.py).

Parts: ``"pose"`` = V1 "audio + selected landmarks" (eyes, brows, pupils, nose; mouth left to the
audio); ``"landmarks"`` = pure landmark driving (adds the mouth); or any subset, see
:func:`.parts.normalize_parts`.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import EchoMimicError
from ..retime import retime_indices
from ._image import as_rgb_uint8
from .drawing import draw_landmark_sequence
from .io import load_pkl_folder
from .motion_sync import motion_sync as _motion_sync
from .sequence import LandmarkSequence
from .stabilize import stabilize_landmarks

SYNC_SIZE = 512


def center_square(image: np.ndarray, size: int = SYNC_SIZE) -> np.ndarray:
    """Centre-crop to a square (side = short side) and resize to ``size`` (V1 driver framing)."""
    import cv2

    h, w = image.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return cv2.resize(image[y0:y0 + s, x0:x0 + s], (size, size), interpolation=cv2.INTER_LINEAR)


def sync_driving_landmarks(driver: LandmarkSequence, reference: LandmarkSequence, mode: str = "reference",
                           **kwargs) -> np.ndarray:
    """Motion-synced (F, 478, 2) pixel landmarks in a 512x512 frame (see :mod:`.motion_sync`)."""
    if driver.lmks3d is None or driver.trans_mat is None or reference.lmks3d is None or reference.trans_mat is None:
        raise EchoMimicError("motion sync needs landmarks extracted by FaceLandmarkExtractor (with mesh and pose); "
                             "pixel-only landmarks (.pkl frames) cannot be retargeted.")
    return _motion_sync(driver.lmks, driver.lmks3d, driver.trans_mat, reference.lmks[0], reference.lmks3d[0],
                        reference.trans_mat[0], mode=mode, image_size=SYNC_SIZE, **kwargs)


def draw_conditions(px: np.ndarray, num_frames: int, size: tuple[int, int], parts="pose",
                    coord_size: tuple[int, int] = (SYNC_SIZE, SYNC_SIZE), retime_policy: str = "ping-pong",
                    src_fps: float | None = None, out_fps: float | None = None) -> np.ndarray:
    """Retime (F, N, 2|3) pixel landmarks to ``num_frames`` and draw them at ``size`` = (W, H)."""
    idx = retime_indices(len(px), int(num_frames), retime_policy, src_fps, out_fps)
    return draw_landmark_sequence(np.asarray(px)[idx], size, parts, normed=False, coord_size=coord_size)


def conditions_from_pkl_folder(folder, num_frames: int, size: tuple[int, int] = (512, 512), parts="pose",
                               retime_policy: str = "ping-pong", src_fps: float | None = None,
                               out_fps: float | None = None, coord_size: tuple[int, int] = (512, 512),
                               stabilize: str = "off") -> np.ndarray:
    """Condition images from a V1 ``.pkl`` landmark folder (``coord_size`` px coordinates), steadied by
    ``stabilize`` (:func:`.stabilize.stabilize_landmarks`; the frame rate: ``src_fps``, else 24)."""
    seq = stabilize_landmarks(load_pkl_folder(folder, image_size=coord_size), stabilize, fps=src_fps)
    return draw_conditions(seq.pixels(coord_size), num_frames, size, parts, coord_size, retime_policy, src_fps, out_fps)


class _Driving:
    """A driving video's frames, read one at a time while they are iterated (once), with ``fps`` and ``total`` (the
    length, else the container's estimated frame count, else 0). The first frame is read on creation, so an empty video
    is refused before MediaPipe loads; a video file with a variable frame rate has its frames placed by their
    timestamps, one per tick of its rate, and is named in a warning (:func:`echomimic_lib.io.retime.on_clock`).
    :meth:`close` closes a video file opened here."""

    def __init__(self, driving, src_fps: float | None):
        from ..io.video_io import VideoFrames

        total = None
        if isinstance(driving, (str, os.PathLike)):
            from ..io.retime import on_clock

            driving = on_clock(VideoFrames(driving), "the driving video", "its landmarks keep the video's own timing "
                               "(and that of speech timed to it)")
        if isinstance(driving, VideoFrames):
            src_fps, total = (src_fps if src_fps is not None else driving.fps), driving.estimated_frames
        elif hasattr(driving, "frames") and hasattr(driving, "fps"):  # VideoClip
            src_fps = src_fps if src_fps is not None else driving.fps
            driving = driving.frames
        if total is None:
            total = len(driving) if hasattr(driving, "__len__") else 0
        self.fps, self.total = src_fps, total
        self._it = iter(driving)
        self._own = self._it is not driving  # an iterator made here (a video file's decoder): closed here
        try:
            self._first = next(self._it)
        except StopIteration:
            self.close()
            raise EchoMimicError("the driving video has no frames.") from None

    def __iter__(self):
        first, self._first = self._first, None
        yield first
        yield from self._it

    def close(self) -> None:
        if self._own and hasattr(self._it, "close"):
            self._it.close()


def extract_driving_landmarks(driving, src_fps: float | None = None, bad_frame_policy: str = "interpolate",
                              extractor=None, progress=None, **extractor_kwargs) -> LandmarkSequence:
    """The driver's landmarks as the V1 landmark modes read them: every frame centre-cropped to a square, resized to
    512 px, analysed by MediaPipe, frames without a single face filled by ``bad_frame_policy``.

    driving: (F, H, W, 3) frames, a list or any iterable of frames, a VideoClip or a video path (its fps is the
    sequence's fps unless ``src_fps`` is given). The frames are taken one at a time (a video path is decoded frame by
    frame as MediaPipe goes): memory holds one driving frame, not the video. What ``echomimic landmarks`` saves and
    :func:`conditions_from_driver` draws."""
    from .extractor import FaceLandmarkExtractor

    frames = driving if isinstance(driving, _Driving) else _Driving(driving, src_fps)
    try:
        ex = extractor or FaceLandmarkExtractor(**extractor_kwargs)
        try:
            squares = (center_square(as_rgb_uint8(f, f"driving frame {i}")) for i, f in enumerate(frames))
            return ex.extract(squares, policy=bad_frame_policy, fps=frames.fps, progress=progress, total=frames.total)
        except EchoMimicError as exc:  # (a video given by path: its refusal names it -- "no single face" said no file)
            if type(exc) is EchoMimicError and isinstance(driving, (str, os.PathLike)) and os.fspath(driving) not in str(exc):
                raise EchoMimicError(f"{os.fspath(driving)}: {exc}") from None
            raise
        finally:
            if extractor is None:
                ex.close()
    finally:
        frames.close()


def driver_pixels(driver: LandmarkSequence, reference_image=None, sync: str | None = "reference", extractor=None,
                  **extractor_kwargs) -> np.ndarray:
    """(F, 478, 2) pixel landmarks in the 512x512 sync frame: the driver's own (``sync`` None) or retargeted onto the
    reference face (``"reference"`` / ``"paper"`` motion sync; MediaPipe reads the reference, resized to 512 as in V1)."""
    if sync is None:
        return driver.pixels((SYNC_SIZE, SYNC_SIZE))
    import cv2

    from .extractor import FaceLandmarkExtractor

    ref = cv2.resize(as_rgb_uint8(reference_image, "reference image"), (SYNC_SIZE, SYNC_SIZE), interpolation=cv2.INTER_LINEAR)
    ex = extractor or FaceLandmarkExtractor(**extractor_kwargs)
    try:
        reference = ex.extract(ref, policy="fail")
    except EchoMimicError as exc:
        raise EchoMimicError(f"reference image: {exc}") from exc
    finally:
        if extractor is None:
            ex.close()
    return sync_driving_landmarks(driver, reference, mode=sync)


def conditions_from_driver(driver: LandmarkSequence, reference_image, num_frames: int, size: tuple[int, int] = (512, 512),
                           parts="pose", sync: str | None = "reference", retime_policy: str = "ping-pong",
                           src_fps: float | None = None, out_fps: float | None = None, extractor=None,
                           **extractor_kwargs) -> np.ndarray:
    """Condition images (uint8 (num_frames, H, W, 3)) from a driver sequence of :func:`extract_driving_landmarks`
    (extracted now, or saved with :func:`.io.save_sequence` and loaded back): :func:`driver_pixels`, retimed from
    ``src_fps`` (default: the sequence's) to ``out_fps`` and ``num_frames``, and drawn at ``size`` = (W, H)."""
    src_fps = src_fps if src_fps is not None else driver.fps
    px = driver_pixels(driver, reference_image, sync, extractor, **extractor_kwargs)
    return draw_conditions(px, num_frames, size, parts, (SYNC_SIZE, SYNC_SIZE), retime_policy, src_fps, out_fps)


def conditions_from_driving_video(driving, reference_image, num_frames: int, size: tuple[int, int] = (512, 512),
                                  parts="pose", sync: str | None = "reference", retime_policy: str = "ping-pong",
                                  src_fps: float | None = None, out_fps: float | None = None,
                                  bad_frame_policy: str = "interpolate", extractor=None, progress=None,
                                  stabilize: str = "off", **extractor_kwargs):
    """Condition images from a driving video and the reference image: :func:`extract_driving_landmarks`, then
    :func:`conditions_from_driver` (one MediaPipe landmarker for both).

    sync: ``"reference"`` / ``"paper"`` motion-sync mode, or None to draw the driver's own landmarks.
    progress: ``progress(done, total)`` per driving frame whose landmarks are extracted.
    stabilize: the driver's landmarks steadied before they are drawn (:func:`.stabilize.stabilize_landmarks`).
    Returns (images uint8 (num_frames, H, W, 3), the driver LandmarkSequence drawn, with its bad-frame report).
    """
    from .extractor import FaceLandmarkExtractor

    driving = _Driving(driving, src_fps)  # its first frame read (an empty video refused) before MediaPipe loads
    try:
        ex = extractor or FaceLandmarkExtractor(**extractor_kwargs)
    except BaseException:
        driving.close()
        raise
    try:
        driver = extract_driving_landmarks(driving, bad_frame_policy=bad_frame_policy, extractor=ex, progress=progress)
        driver = stabilize_landmarks(driver, stabilize)
        images = conditions_from_driver(driver, reference_image, num_frames, size, parts, sync, retime_policy,
                                        src_fps=driver.fps, out_fps=out_fps, extractor=ex)
    finally:
        if extractor is None:
            ex.close()
    return images, driver
