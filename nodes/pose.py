"""EchoMimic Hand-Pose Sequence Loader (V2): a released pose folder, or DWPose extraction from driving-video
frames; optionally moved onto the reference's shoulders. Retiming to the audio happens in the sampler."""
from __future__ import annotations

import logging

import numpy as np

from ..echomimic_lib.errors import EchoMimicError
from ..echomimic_lib.pose import draw_preview, fit_sequence_to_reference, load_pose
from ..echomimic_lib.pose.dwpose import detect_image_pose, extract_pose_sequence
from ..echomimic_lib.temporal import check_level
from ..echomimic_lib.temporal import STABILIZE_DEFAULT, STABILIZE_LEVELS
from . import comfy_bridge as C
from . import detectors, names, paths
from .base import Node, check_fps, frame_rate, link, switch
from .payloads import POSE_RETIME_POLICIES, POSES, PoseTrack, first_image, image_batch, to_image

log = logging.getLogger(__name__)

NO_FOLDER = "none (extract from driving_frames)"
ALIGN = ["none", "fit to reference shoulders"]
PREVIEW, PREVIEW_FRAMES = 256, 8  # a few evenly spaced frames: Preview Image saves one PNG per frame, every run


def _preview(seq) -> np.ndarray:
    idx = np.unique(np.linspace(0, len(seq) - 1, min(len(seq), PREVIEW_FRAMES)).round().astype(int))
    return np.stack([draw_preview(seq, int(i), (PREVIEW, PREVIEW)) for i in idx])


def load(pose_folder: str, fps: float, retime: str, align: str, on_missing: str, download: bool,
         driving_frames=None, reference=None, stabilize: str = STABILIZE_DEFAULT) -> tuple[PoseTrack, object]:
    check_level(stabilize, "stabilize")
    fps = check_fps(fps)  # a linked value is not range-checked by ComfyUI: 0 or NaN timed the poses, "fast" broke float()
    if retime not in POSE_RETIME_POLICIES:
        raise EchoMimicError(f"unknown retiming policy '{retime}'; choose one of {', '.join(POSE_RETIME_POLICIES)}.")
    if align not in ALIGN:
        raise EchoMimicError(f"unknown align option '{align}'; choose one of {', '.join(ALIGN)}.")
    if align == ALIGN[1] and reference is None:  # said before DWPose reads every driving frame
        raise EchoMimicError("'fit to reference shoulders' needs the reference image: connect it to 'reference' "
                             "(or set align to 'none').")
    detector = None
    if driving_frames is not None:
        if pose_folder != NO_FOLDER:
            log.info("driving_frames are connected: poses are extracted from them, pose folder '%s' is ignored", pose_folder)
        frames = image_batch(driving_frames, "driving_frames")  # an empty or wrong IMAGE: said before DWPose is loaded
        if align == ALIGN[1]:
            image_batch(reference[:1] if hasattr(reference, "shape") else reference, "reference")
        detector = detectors.dwpose(download)
        seq = extract_pose_sequence(list(frames), detector, on_missing=on_missing, fps=float(fps))
    elif pose_folder == NO_FOLDER:
        raise EchoMimicError("no poses: choose a pose folder, or connect the frames of a driving video to 'driving_frames'.")
    else:
        seq = load_pose(paths.resolve_pose_folder(pose_folder), fps=float(fps))
    C.check_interrupt()
    if align == ALIGN[1]:
        detector = detector or detectors.dwpose(download)
        seq, _ = fit_sequence_to_reference(seq, detect_image_pose(detector, first_image(reference, "reference")))
    report = getattr(seq.report, "summary", lambda: "")()
    return PoseTrack(seq, retime, [report] if report else [], stabilize), to_image(_preview(seq))


class EchoMimicPoseSequenceLoader(Node):
    OUTPUTS = (
        (POSES, "poses", "Hand-pose sequence for the V2 sampler (retimed to the audio there)."),
        ("IMAGE", "preview", "Preview: hands, body and face points (only the hands are the model input)."),
    )
    DESCRIPTION = "Loads a V2 hand-pose sequence from models/echomimic/poses/ or extracts one from a driving video (DWPose)."

    @classmethod
    def inputs(cls):
        return {
            "pose_folder": ([NO_FOLDER] + paths.pose_folders(), {"default": NO_FOLDER, "tooltip": "A folder of 0.npy, 1.npy, ... "
                            "frames (EchoMimicV2 format) in models/echomimic/poses/ or input/echomimic_poses/. Ignored when "
                            "driving_frames are connected."}),
            "fps": frame_rate("Frame rate of the poses: 24 for the released folders; for driving_frames link Get Video "
                              "Components' fps."),
            "retime": (POSE_RETIME_POLICIES, {"default": "continue", "tooltip": "How the sequence is fitted to a longer "
                       "audio: continue (default: play it once, then carry on with gestures matched to the speech, never "
                       "backwards; ping-pong when the folder holds no gesture, said in the log), ping-pong, loop, "
                       "hold-last, stretch, or fail. A sequence long enough plays the same under every policy but stretch."}),
            "align": (ALIGN, {"default": "none", "tooltip": "fit to reference shoulders: move and scale the poses so their "
                      "neck and shoulders land on the reference's (needs 'reference' and the DWPose models)."}),
            "on_missing": (["interpolate", "hold", "fail"], {"default": "interpolate", "tooltip": "Driving frames where "
                           "nobody is found: blend between neighbours, repeat the previous pose, or stop."}),
            "auto_download": switch("Download the DWPose models (yzd-v/DWPose) into models/echomimic/dwpose if missing."),
        }

    @classmethod
    def optional_inputs(cls):
        return {
            "driving_frames": link("IMAGE", "Frames of a driving video: poses are extracted with DWPose and "
                               "half-body cropped like the reference."),
            "reference": link("IMAGE", "The prepared reference image, for 'fit to reference shoulders'."),
            # a widget added later: optional, so saved workflows without it load and run as before
            "stabilize": (list(STABILIZE_LEVELS), {"default": STABILIZE_DEFAULT, "tooltip": "Steadier hands: short "
                          "detector dropouts filled (a finger no longer blinks out) and the shake of still hands smoothed, "
                          "on the frames the sampler draws. light barely touches fast motion, strong is the steadiest; "
                          "off (default) = the poses as detected."}),
        }

    @classmethod
    def IS_CHANGED(cls, pose_folder=None, **_):
        """The names, sizes and times of the folder's frames: frames added or replaced later run the node again (ComfyUI
        cached its poses while its inputs had not changed); no file is read."""
        return "no folder" if pose_folder == NO_FOLDER else paths.pose_stamp(pose_folder)

    @classmethod
    def VALIDATE_INPUTS(cls, pose_folder=None):
        return names.check(cls, {"pose_folder": "models/echomimic/poses or input/echomimic_poses"}, pose_folder=pose_folder)

    def execute(self, pose_folder, fps, retime, align, on_missing, auto_download, driving_frames=None, reference=None,
                stabilize=STABILIZE_DEFAULT):
        return load(pose_folder, fps, retime, align, on_missing, auto_download, driving_frames, reference, stabilize)
