"""``echomimic landmarks``: a driving video's face landmarks, extracted once and saved for many renders.

The landmarks are extracted exactly as ``echomimic animate --landmarks VIDEO`` extracts them
(:func:`echomimic_lib.landmarks.conditions.extract_driving_landmarks`: each frame centre-cropped to a square at
512 px, the same MediaPipe model resolution, frames without a single face filled by the same policy, interpolate)
and saved with :func:`echomimic_lib.landmarks.io.save_sequence` (``.npz`` without pickles, or ``.json``).
``animate --landmarks FILE.npz`` then draws the same conditions as the video would, without MediaPipe reading
every driving frame again. ``preview``: the landmark drawing animate conditions on (the driver's own landmarks, or
with ``reference`` retargeted onto that portrait's face crop, as animate does), one frame per driving frame.

Every check (input, outputs, options, the MediaPipe model) runs before MediaPipe loads; an existing output is
kept unless ``force``; the outputs are written whole or not at all.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import EchoMimicError, MissingWeightsError
from ..landmarks.extractor import POLICIES

log = logging.getLogger(__name__)

PREVIEW_SUFFIXES = (".mp4", ".m4v", ".mov")
PREVIEW_CHUNK = 32  # frames drawn and encoded at a time (memory flat in video length)


@dataclass
class LandmarksRequest:
    video: str
    output: str  # .npz or .json
    preview: str | None = None  # .mp4 of the landmark drawing
    force: bool = False  # replace existing outputs
    models: str | None = None
    mediapipe_model: str | None = None
    download: bool = True
    missing_face: str = "interpolate"  # frames without a single face: interpolate (animate's), hold or fail
    parts: str | None = None  # preview: landmark parts (default: the landmarks mode's)
    width: int = 512  # preview size (animate's V1 default)
    height: int | None = None
    reference: str | None = None  # preview retargeted onto this portrait, as animate conditions on it
    face_crop: bool = True  # with reference: its V1 face crop (animate's default), else the whole image
    stabilize: str = "off"  # steady the saved landmarks (and the preview): off, light, medium, strong


@dataclass
class _Checked:
    request: LandmarksRequest
    video: Path
    output: Path
    preview: Path | None
    parts: frozenset
    size: tuple[int, int]
    reference: object  # RGB image or None
    model: Path


def _check_video(path) -> Path:
    from .video_inputs import check_video_input

    # the first frame only (a long video is read once, by the extraction)
    check_video_input(path, "VIDEO", "give the driving video (mp4, mov, webm, ...) whose face landmarks to extract.")
    return Path(path)


def _find_model(req: LandmarksRequest) -> Path:
    from ..landmarks.mp_models import import_mediapipe, resolve_model
    from .models_folder import models_root

    root = models_root(req)  # --models, else $ECHOMIMIC_MODELS or ~/.cache/echomimic (no smoke runs here)
    try:
        path = resolve_model("face_landmarker", req.mediapipe_model, [root], download=req.download)
        import_mediapipe()
    except MissingWeightsError as exc:
        hint = " (Without --offline it is downloaded once.)" if not req.download and not req.mediapipe_model else ""
        raise MissingWeightsError(f"{exc}{hint} Or pass --mediapipe-model FILE.", exc.missing) from exc
    return Path(path)


def check(req: LandmarksRequest) -> _Checked:
    """Every check that needs no MediaPipe, then the model's path (found or downloaded, not loaded)."""
    from ..landmarks import LANDMARK_MODE_PARTS, normalize_parts
    from ..landmarks.extractor import normalize_policy
    from ..landmarks.io import SEQUENCE_SUFFIXES
    from ..temporal import check_level as check_stabilize_level
    from .output_file import check_destination

    try:
        normalize_policy(req.missing_face)
    except EchoMimicError:
        raise EchoMimicError(f"--missing-face {req.missing_face}: choose {', '.join(POLICIES)} (interpolate: as "
                             "`echomimic animate --landmarks VIDEO`).") from None
    check_stabilize_level(req.stabilize, "--stabilize")
    video = _check_video(req.video)
    inputs = {"VIDEO": req.video, "--reference": req.reference}
    output = check_destination(req.output, "-o", SEQUENCE_SUFFIXES, ".npz", inputs, req.force)
    preview = None
    if req.preview is not None:  # `--preview ""` (a script's unset variable): said, not silently no preview
        preview = check_destination(req.preview, "--preview", PREVIEW_SUFFIXES, ".mp4", inputs, req.force,
                                    others={"-o": output})
    try:  # an empty --parts means no parts, as in animate
        parts = normalize_parts(req.parts) if req.parts is not None else frozenset(LANDMARK_MODE_PARTS)
    except ValueError as exc:
        raise EchoMimicError(f"--parts: {exc}") from None
    from .animate_checks import check_side

    width = check_side(req.width, "--width")
    height = check_side(req.width if req.height is None else req.height, "--height")
    reference = None
    if req.reference:
        if not req.preview:
            raise EchoMimicError("--reference only shapes the --preview video (the saved landmarks are the driver's own); "
                                 "add --preview PREVIEW.mp4 or drop --reference.")
        from .reference_input import read_reference

        reference = read_reference(req.reference)
    return _Checked(req, video, output, preview, parts, (width, height), reference, _find_model(req))


def _write_preview(c: _Checked, driver, extractor) -> object:
    """An uncommitted :class:`Mp4Writer` holding the drawing (committed by the caller after the landmarks are saved)."""
    from ..frames.reference import prepare_reference
    from ..io.video_writer import Mp4Writer
    from ..landmarks import draw_landmark_sequence
    from ..landmarks.conditions import SYNC_SIZE, driver_pixels

    w, h = c.size
    if c.reference is None:
        px = driver_pixels(driver, sync=None)
    else:  # animate's reference: the V1 face crop at W x H (or the whole image), then motion sync onto it
        target = "v1_face" if c.request.face_crop else "resize"
        prep = prepare_reference(c.reference, target, w, h, model_path=c.model, extractor=extractor)
        px = driver_pixels(driver, prep.image, "reference", extractor)
    writer = Mp4Writer(c.preview, driver.fps or 24.0, keep_appeared=None if c.request.force else "--preview")
    try:
        for start in range(0, len(px), PREVIEW_CHUNK):
            chunk = px[start:start + PREVIEW_CHUNK]
            writer.write(draw_landmark_sequence(chunk, (w, h), c.parts, normed=False, coord_size=(SYNC_SIZE, SYNC_SIZE)))
    except BaseException:
        writer.abort()
        raise
    return writer


def run_landmarks(req: LandmarksRequest, progress: Callable[[int, int], None] | None = None) -> dict:
    """Extract, save (and preview); returns a summary: output, preview, frames, fps, frames without a face."""
    from .output_file import claim_results

    c = check(req)
    # one run per output (a second is refused naming the first); a folder made for an output and left empty is removed
    with claim_results([(c.output, "-o", False), (c.preview, "--preview", False)]):
        driver, writer = _extract(c, req, progress)
        preview = _save(c, driver, writer)
    none = [i for i in driver.bad_frames if driver.face_counts[i] == 0]
    many = [i for i in driver.bad_frames if driver.face_counts[i] > 1]
    return {"output": str(c.output), "preview": preview, "frames": len(driver), "fps": driver.fps,
            "no_face": len(none), "several_faces": len(many), "policy": driver.policy}


def _extract(c: _Checked, req: LandmarksRequest, progress) -> tuple:
    """(the driver's landmarks, an uncommitted preview writer or None)."""
    from ..landmarks.conditions import extract_driving_landmarks
    from ..landmarks.extractor import FaceLandmarkExtractor
    from ..landmarks.mp_models import quiet_native_logs
    from ..landmarks.stabilize import stabilize_landmarks

    writer = None
    with quiet_native_logs(), FaceLandmarkExtractor(model_path=c.model) as ex:  # the video decoded frame by frame
        driver = extract_driving_landmarks(c.video, bad_frame_policy=c.request.missing_face, extractor=ex,
                                           progress=progress)
        driver = stabilize_landmarks(driver, req.stabilize)  # off: the sequence itself
        if c.preview is not None:
            writer = _write_preview(c, driver, ex)
    return driver, writer


def _save(c: _Checked, driver, writer) -> str | None:
    """The landmarks, then the preview; without --force a file that appeared at either since the start (another run,
    anything) is kept and neither is written. -> the preview's path or None."""
    from ..io.file_safety import refuse_appeared
    from ..landmarks.io import save_sequence

    force, saved = c.request.force, False
    try:
        if not force:  # kept, as the start's check would have kept them
            refuse_appeared(c.output, "landmark file")
            if writer is not None:
                refuse_appeared(c.preview, "video", "--preview")
        save_sequence(c.output, driver)
        saved = True
        return str(writer.commit()) if writer is not None else None
    except BaseException:
        if writer is not None:
            writer.abort()
        if saved and not force:  # (the preview appeared in the last instant): no landmarks without their preview
            c.output.unlink(missing_ok=True)
        raise
