"""EchoMimic Gestures from Audio (V2): hand poses generated from the speech by motion matching over a library of
pose folders (models/echomimic/poses/, input/echomimic_poses/), for a picture and speech with no pose video."""
from __future__ import annotations

import logging
import math

from ..echomimic_lib.audio import check_audible, read_raw_audio
from ..echomimic_lib.errors import EchoMimicError
from ..echomimic_lib.modes import check_frame_rate
from ..echomimic_lib.pose.dwpose import detect_image_pose
from ..echomimic_lib.pipeline.settings import whole_seed
from ..echomimic_lib.pose.gestures import analyze_speech, find_sources, load_library, synthesize
from ..echomimic_lib.pose.gestures.planner import GestureOptions
from . import comfy_bridge as C
from . import detectors, names, paths
from .base import checks_links
from .payloads import AUDIO_FEATURES, POSES, PoseTrack, first_image, image_batch, to_image
from .pose import ALIGN, _preview

log = logging.getLogger(__name__)

ALL = "all pose folders"


def library_paths(library: str) -> list:
    """The pose folders a library choice stands for (every folder in the pose roots, or one by name)."""
    if library != ALL:
        return [paths.resolve_pose_folder(library)]
    found = []
    for root in paths.pose_roots():
        try:
            found += find_sources(root)
        except EchoMimicError:
            continue  # a missing or empty root
    if not found:
        where = ", ".join(str(r) for r in paths.pose_roots())
        raise EchoMimicError(f"no pose folders to take gestures from (looked in {where}). Copy EchoMimicV2's "
                             "assets/halfbody_demo/pose/01 (and others) there, or extract poses from any video with the "
                             "Hand-Pose Sequence Loader and save them there.")
    return found


def check_speech(clip) -> None:
    """The AUDIO readable ([B, C, T] with B = 1, [C, T] or [T]; finite; a positive sample rate) and audible: silence
    gave a meaningless pose sequence (hands at rest throughout, picked by a percentile of silence)."""
    raw = read_raw_audio(clip)
    check_audible(raw, "Connect a clip with audible speech, or check that Load Audio picked the right file.")


def generate(library: str, seed: int, expressiveness: float, fps: float, min_pause: float, align: str, auto_download: bool,
             audio_features=None, audio=None, reference=None) -> tuple[PoseTrack, object]:
    if audio_features is not None:
        clip, fps, n = audio_features.audio, float(audio_features.fps), audio_features.frame_count
    elif audio is not None:
        clip, n = audio, None
    else:
        raise EchoMimicError("no speech: connect the Audio Encoder's audio_features (or an AUDIO) to 'audio_features' / 'audio'.")
    fps = check_frame_rate(fps)  # the sampler's 1..120 (a linked value is not range-checked by ComfyUI): refused
    # before the library is indexed
    pause = float(min_pause) if isinstance(min_pause, (int, float)) and not isinstance(min_pause, bool) else math.nan
    if not (math.isfinite(pause) and pause > 0):
        raise EchoMimicError(f"min_pause {min_pause!r}: give a positive number of seconds (0.5 is typical): silences at "
                             "least this long are pauses, where the hands rest.")
    folders = library_paths(library)  # the name checked (links, escapes) before any speech work; indexed below
    check_speech(clip)
    if align not in ALIGN:
        raise EchoMimicError(f"unknown align option '{align}'; choose one of {', '.join(ALIGN)}.")
    if align == ALIGN[1] and reference is None:
        raise EchoMimicError("'fit to reference shoulders' needs the reference image: connect it to 'reference' (or set align to 'none').")
    # linked values (ComfyUI range-checks widgets only), said before the library is indexed: a seed of -1 or 2.5 was
    # taken (-1 a fixed seed, not a random one), and expressiveness was checked only after the speech analysis
    seed = whole_seed(seed)
    GestureOptions(expressiveness=float(expressiveness)).check()
    if align == ALIGN[1]:
        image_batch(reference[:1] if hasattr(reference, "shape") else reference, "reference")  # an empty or wrong IMAGE
    lib = load_library(folders)
    C.check_interrupt()
    speech = analyze_speech(clip, fps, min_pause=pause)
    ref_pose = None
    if align == ALIGN[1]:
        ref_pose = detect_image_pose(detectors.dwpose(auto_download), first_image(reference, "reference"))
    seq = synthesize(lib, speech, n, int(seed), reference=ref_pose, expressiveness=float(expressiveness))
    notes = [f"gestures from the speech: {seq.report.summary()} from {', '.join(lib.names)}"]
    log.info("%s", notes[0])
    return PoseTrack(seq, "hold-last", notes), to_image(_preview(seq))


@checks_links
class EchoMimicGesturesFromAudio:
    CATEGORY = "EchoMimic"
    FUNCTION = "execute"
    RETURN_TYPES = (POSES, "IMAGE")
    RETURN_NAMES = ("poses", "preview")
    OUTPUT_TOOLTIPS = ("Hand poses for the V2 sampler, one per video frame of the audio.",
                       "Preview: hands, body and face points (only the hands are the model input).")
    DESCRIPTION = ("V2 without a pose video: gestures that follow the speech (strokes on stressed syllables, calmer when "
                   "quiet, rest through pauses), cut from the pose folders in models/echomimic/poses/.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "library": ([ALL] + paths.pose_folders(), {"default": ALL, "tooltip": "Pose folders to take gestures from "
                        "(models/echomimic/poses/ and input/echomimic_poses/): all of them, or one. They are indexed once "
                        "(a hidden .gestures.npz beside each), again when they change."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True, "tooltip": "Which gestures are picked; the "
                     "same seed gives the same poses."}),
            "expressiveness": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "0: calm "
                               "gestures; 1: follow the speech's energy; 2: the liveliest gestures of the library."}),
            "fps": ("FLOAT", {"default": 24.0, "min": 1.0, "max": 120.0, "step": 0.01, "tooltip": "Frame rate when an "
                    "AUDIO is connected; with audio_features the encoder's fps is used."}),
            "min_pause": ("FLOAT", {"default": 0.5, "min": 0.1, "max": 5.0, "step": 0.05, "tooltip": "Silences at least "
                          "this long (seconds) are pauses: the hands come to rest."}),
            "align": (ALIGN, {"default": "none", "tooltip": "fit to reference shoulders: move and scale the gestures so "
                      "the neck and shoulders land on the reference's (needs 'reference' and the DWPose models)."}),
            "auto_download": ("BOOLEAN", {"default": False, "tooltip": "Download the DWPose models (yzd-v/DWPose) into "
                              "models/echomimic/dwpose if missing (only for 'fit to reference shoulders')."}),
        }, "optional": {
            "audio_features": (AUDIO_FEATURES, {"tooltip": "The Audio Encoder's output: the speech and its frame rate."}),
            "audio": ("AUDIO", {"tooltip": "Or the speech itself (at 'fps')."}),
            "reference": ("IMAGE", {"tooltip": "The prepared reference image, for 'fit to reference shoulders'."}),
        }}

    @classmethod
    def IS_CHANGED(cls, library=None, **_):
        """The names, sizes and times of the library's files (every pose root, or the one folder): a folder added or
        frames replaced later run the node again (ComfyUI cached its poses while its inputs had not changed). The
        hidden .gestures.npz index the node writes is left out; no file is read."""
        return paths.folder_stamp(paths.pose_roots(), depth=2) if library == ALL else paths.pose_stamp(library)

    @classmethod
    def VALIDATE_INPUTS(cls, library=None):
        return names.check(cls, {"library": "models/echomimic/poses or input/echomimic_poses"}, library=library)

    def execute(self, library, seed, expressiveness, fps, min_pause, align, auto_download, audio_features=None, audio=None,
                reference=None):
        return generate(library, seed, expressiveness, fps, min_pause, align, auto_download, audio_features, audio, reference)
