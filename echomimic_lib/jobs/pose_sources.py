"""Where a V2 hand-pose sequence comes from besides a pose folder / .npz: a driving video (DWPose on every frame, the
Hand-Pose Sequence Loader node's extraction) or the speech (gestures, the Gestures from Audio node). Shared by
``echomimic animate --pose VIDEO | auto`` (:mod:`.animate`) and ``echomimic poses`` (:mod:`.poses`)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import EchoMimicError, MissingWeightsError

log = logging.getLogger(__name__)

AUTO_POSE = "auto"  # --pose auto: hand poses generated from the speech
POSE_FILE_SUFFIXES = (".npz", ".npy")  # --pose: anything else that is a file is read as a driving video
MISSING_DEFAULT = "interpolate"  # the loader node's default


def is_pose_video(path) -> bool:
    """``--pose PATH``: a file that is not a ``.npz`` / ``.npy`` pose file is a driving video."""
    p = Path(str(path))
    return str(path) != AUTO_POSE and p.is_file() and p.suffix.lower() not in POSE_FILE_SUFFIXES


POSE_VIDEO_FIX = "give a video of a person, a pose folder (0.npy, 1.npy, ...) or a .npz from `echomimic poses`."


def check_pose_video(path, flag: str = "--pose", fix: str = POSE_VIDEO_FIX, speech: str = "--pose auto") -> None:
    """A driving video for DWPose (PyAV only: no model; before DWPose is looked up or downloaded): it opens and has two
    frames or more -- a still picture's hands would stand still, and is most often the portrait given to the wrong
    option. Anything else is refused as ``"{flag} {path} ...; {fix}"``; ``speech``: the option for gestures from speech."""
    from .video_inputs import check_video_input

    lead = f"{flag} {path} is read as a driving video (it is no pose folder or .npz)" if flag == "--pose" else None
    try:
        frames = check_video_input(path, flag, fix, upto=2)
    except EchoMimicError as exc:
        raise EchoMimicError(f"{lead}, but: {exc}" if lead else str(exc)) from None
    if frames < 2:
        raise EchoMimicError(f"{flag} {path}: a still picture (1 frame), not a video: its hands would stand still; {fix} "
                             f"For gestures from speech use {speech}.")


def check_pose_frame(path, flag: str = "--pose") -> None:
    """``--pose .../01/0.npy``: one frame of a released pose folder (a tab completion too far) rendered the whole video
    with one still pose; the folder is named instead."""
    p = Path(path)
    if not (p.is_file() and p.suffix.lower() == ".npy" and p.stem.isdigit()):
        return
    frames = sum(1 for q in p.parent.glob("*.npy") if q.stem.isdigit())
    if frames > 1:
        raise EchoMimicError(f"{flag} {path}: one frame of the pose folder {p.parent} ({frames} frames), which would hold "
                             f"the hands still for the whole video; give the folder: {flag} {p.parent}.")


def check_dwpose_models(roots: list[Path], download: bool, flag: str = "--offline", fetch: bool = False,
                        lead: str = "", alternative: str = "") -> None:
    """Without downloads the two ONNX files must be there: said before any model loads. ``fetch``: with downloads
    allowed, missing files are downloaded now (into the first root), a failed download said before the run starts
    (as the MediaPipe model is). ``lead`` / ``alternative``: what needs DWPose, and how to do without it."""
    from ..io.fetch_plan import is_planning

    if download and not fetch and not is_planning():  # (a dry run: what the run would download is said)
        return
    from ..pose.dwpose import resolve_dwpose_models

    first = None
    for root in roots:
        try:
            resolve_dwpose_models(root, download=False)
            return
        except MissingWeightsError as exc:
            first = first or exc
    if download:
        try:
            resolve_dwpose_models(roots[0], download=True)
            return
        except MissingWeightsError as exc:
            raise MissingWeightsError(f"{lead}{exc}{alternative}", exc.missing) from None
    raise MissingWeightsError(f"{lead}{first} (Without {flag} they are downloaded once{alternative}.)", first.missing)


def dwpose_detector(roots: list[Path], download: bool):
    """The DWPose detector from the first root that has the models (downloaded into the first one unless ``download`` is off)."""
    from ..pose.dwpose import DWPoseDetector, resolve_dwpose_models

    first = None
    for i, root in enumerate(roots):
        try:
            return DWPoseDetector(*resolve_dwpose_models(root, download=download and i == 0))
        except MissingWeightsError as exc:
            first = first or exc
    raise first


def video_poses(path, detector, on_missing: str = MISSING_DEFAULT, fps: float | None = None, max_frames: int | None = None,
                progress=None):
    """DWPose poses of every frame of the video at ``path`` (half-body cropped, 768 canvas: the loader node's
    extraction), at the video's frame rate unless ``fps``; ``progress(done, total)`` per frame (``total`` the
    container's frame count, the real one at the last frame). The video is decoded one frame at a time as DWPose
    takes it (:class:`echomimic_lib.io.video_io.VideoFrames`): memory holds one frame, not the whole video. A variable
    frame rate video's frames are placed by their timestamps, one per tick of its rate (:mod:`echomimic_lib.io.retime`;
    ``max_frames`` counts those ticks)."""
    from ..io.retime import on_clock
    from ..io.video_io import VideoFrames, counted
    from ..pose.dwpose import extract_pose_sequence

    source = on_clock(VideoFrames(path, max_frames=max_frames), "the driving video", "its hand poses keep the video's "
                      "own timing (and that of speech timed to it)")
    log.info("extracting hand poses from %s: about %d frames at %g fps", path, source.estimated_frames, source.fps)
    decoded = iter(source)
    try:  # the next frame is decoded after DWPose has taken this one: the last is known
        seq = extract_pose_sequence(counted(decoded, source.estimated_frames, progress), detector, on_missing=on_missing,
                                    fps=float(fps or source.fps))
    finally:
        decoded.close()  # the file is closed even when DWPose stops early (an error, Ctrl-C)
    seq.source = str(path)
    return seq


def speech_gestures(audio, fps: float, num_frames: int, seed: int, library_dirs, expressiveness: float = 1.0, reference=None,
                    speech=None):
    """Gestures from the speech (``animate --pose auto``): the speech analysed at ``fps`` (``speech``: its
    :class:`~echomimic_lib.pose.gestures.SpeechFeatures` already measured), units from the library."""
    from ..pose.gestures import analyze_speech, load_library, synthesize

    speech = analyze_speech(audio, fps) if speech is None else speech
    lib = load_library(library_dirs)
    return synthesize(lib, speech, num_frames, int(seed), reference=reference, expressiveness=float(expressiveness))
