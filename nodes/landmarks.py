"""EchoMimic Landmark Extractor and Part-Aware Aligner (V1 landmark driving)."""
from __future__ import annotations

import logging

import numpy as np

from ..echomimic_lib.errors import EchoMimicError, as_whole
from ..echomimic_lib.landmarks import draw_landmark_sequence, normalize_parts, sync_driving_landmarks
from ..echomimic_lib.landmarks.conditions import SYNC_SIZE, center_square
from ..echomimic_lib.landmarks.stabilize import stabilize_landmarks
from ..echomimic_lib.temporal import check_level
from ..echomimic_lib.temporal import STABILIZE_DEFAULT, STABILIZE_LEVELS
from . import comfy_bridge as C
from . import detectors
from .base import Node, check_fps, frame_rate, link, switch
from .payloads import LANDMARKS, RETIME_POLICIES, LandmarkTrack, first_image, image_batch, to_image

log = logging.getLogger(__name__)

FRAMINGS = {"center square (V1)": True, "full frame": False}
ALIGN_MODES = {"reference-compatible": "reference", "paper": "paper", "none (driver's own landmarks)": None}
PREVIEW = 256


def _preview(pixels, coord_size, parts, frames=None) -> np.ndarray:
    """Drawings at PREVIEW px, over the analysed frames when given (preview only, not the model input)."""
    out = draw_landmark_sequence(pixels, (PREVIEW, PREVIEW), parts, coord_size=coord_size)
    if frames is not None:
        import cv2

        back = np.stack([cv2.resize(f, (PREVIEW, PREVIEW), interpolation=cv2.INTER_AREA) for f in frames]) // 2
        out = np.where(out.any(axis=-1, keepdims=True), out, back)
    return out


def extract(images, fps: float, framing: str, bad_frames: str, max_frames: int, download: bool, stabilize: str = "off"):
    check_level(stabilize, "stabilize")  # before MediaPipe reads any frame
    fps = check_fps(fps)
    count = as_whole(max_frames)  # a linked value is not range-checked by ComfyUI: 2.5 was a TypeError, -3 read as "all"
    if count is None or count < 0:
        raise EchoMimicError(f"max_frames {max_frames!r}: give a whole number of frames, 0 = all of them.")
    max_frames = count
    frames = image_batch(images, "images")
    if max_frames > 0:
        frames = frames[:max_frames]
    if FRAMINGS.get(framing, True):
        frames = np.stack([center_square(f, SYNC_SIZE) for f in frames])
    with detectors.face_landmarker(download) as ex:
        seq = ex.extract(list(frames), policy=bad_frames, fps=float(fps))
    seq = stabilize_landmarks(seq, stabilize)
    log.info("landmarks: %s", seq.report())
    coord = (frames.shape[2], frames.shape[1])
    track = LandmarkTrack(seq.pixels(coord), coord, float(fps), sequence=seq, report=seq.report())
    return track, to_image(_preview(track.pixels, coord, "all", frames))


def align(track: LandmarkTrack, reference, mode: str, parts: str, retime: str, download: bool):
    if mode not in ALIGN_MODES:
        raise EchoMimicError(f"unknown alignment mode '{mode}'; choose one of {', '.join(ALIGN_MODES)}.")
    if retime not in RETIME_POLICIES:
        raise EchoMimicError(f"unknown retiming policy '{retime}'; choose one of {', '.join(RETIME_POLICIES)}.")
    try:
        selected = normalize_parts(parts)
    except ValueError as exc:
        raise EchoMimicError(f"parts: {exc}") from None
    if not selected:  # no parts: the condition images stay black and the audio alone drives the face
        log.info("Part-Aware Aligner: no parts selected; the landmark model is driven by the audio alone")
    if ALIGN_MODES[mode] is None:
        pixels, coord = track.pixels, track.coord_size
    else:
        if track.sequence is None:
            raise EchoMimicError("these landmarks were already aligned; connect the Landmark Extractor's output to the aligner.")
        import cv2

        ref = cv2.resize(first_image(reference, "reference"), (SYNC_SIZE, SYNC_SIZE), interpolation=cv2.INTER_LINEAR)
        with detectors.face_landmarker(download) as ex:
            try:
                ref_seq = ex.extract(ref, policy="fail")
            except EchoMimicError as exc:
                raise EchoMimicError(f"reference image: {exc}") from exc
        pixels, coord = sync_driving_landmarks(track.sequence, ref_seq, mode=ALIGN_MODES[mode]), (SYNC_SIZE, SYNC_SIZE)
    C.check_interrupt()
    out = LandmarkTrack(pixels, coord, track.fps, parts=selected, retime=retime, report=track.report)
    return out, to_image(_preview(pixels, coord, selected))


class EchoMimicLandmarkExtractor(Node):
    OUTPUTS = (
        (LANDMARKS, "landmarks", "478-point face landmarks per frame (with head pose, for the aligner)."),
        ("IMAGE", "preview", "Preview: landmarks over the analysed frames (not the model input)."),
    )
    DESCRIPTION = "MediaPipe face landmarks of one image or of driving-video frames (models/echomimic/mediapipe/)."

    @classmethod
    def inputs(cls):
        return {
            "images": link("IMAGE", "One image or the frames of a driving video (e.g. from Get Video Components)."),
            "fps": frame_rate("Frame rate of these frames (link Get Video Components' fps), so motion keeps its speed."),
            "framing": (list(FRAMINGS), {"default": "center square (V1)", "tooltip": "center square: crop each frame to its "
                        "central square like V1 does with driving videos. full frame: use the frames as they are."}),
            "bad_frames": (["interpolate", "hold", "fail"], {"default": "interpolate", "tooltip": "Frames with no face or "
                           "several faces: blend between good neighbours, repeat the last good one, or stop with a list."}),
            "max_frames": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "Use only the first N frames (0 = all)."}),
            "auto_download": switch("Download MediaPipe's face_landmarker.task from Google into models/echomimic if it is "
                                    "missing."),
        }

    @classmethod
    def optional_inputs(cls):  # added after the first release: optional, so saved workflows and prompts still load
        return {
            "stabilize": (list(STABILIZE_LEVELS), {"default": STABILIZE_DEFAULT, "tooltip": "Steady the landmarks: "
                          "MediaPipe shakes a still face by a pixel or two, which the portrait then shows as jitter. "
                          "light / medium / strong steady the head hardest and keep lips and eyelids responsive, so "
                          "speech and blinks survive. off: as detected."}),
        }

    def execute(self, images, fps, framing, bad_frames, max_frames, auto_download, stabilize=STABILIZE_DEFAULT):
        return extract(images, fps, framing, bad_frames, max_frames, auto_download, stabilize)


class EchoMimicPartAwareAligner(Node):
    OUTPUTS = (
        (LANDMARKS, "landmarks", "Driving landmarks moved onto the reference face, with the selected parts."),
        ("IMAGE", "preview", "Preview: the condition drawings (what the model sees, at preview size)."),
    )
    DESCRIPTION = "Part-aware motion sync: retargets driving landmarks onto the reference face, part by part."

    @classmethod
    def inputs(cls):
        return {
            "landmarks": link(LANDMARKS, "Driving landmarks from EchoMimic Landmark Extractor."),
            "reference": link("IMAGE", "The reference portrait (the face the landmarks are moved onto)."),
            "mode": (list(ALIGN_MODES), {"default": "reference-compatible", "tooltip": "reference-compatible: V1's released "
                     "motion sync. paper: a global fit first, as in the paper. none: draw the driver's own landmarks."}),
            "parts": ("STRING", {"default": "eyes, brows, pupils, nose, mouth", "tooltip": "Comma-separated parts to drive: "
                      "face_oval, eyes, brows, iris, pupils, nose, mouth (or a preset: landmarks, pose, all). Leave out "
                      "'mouth' so the audio moves the lips; empty = no parts (the audio alone drives the face)."}),
            "retime": (RETIME_POLICIES, {"default": "ping-pong", "tooltip": "How the driving sequence is fitted to the audio "
                       "length: ping-pong, loop, hold-last, stretch, or fail when it is too short."}),
            "auto_download": switch("Download MediaPipe's face landmarker if missing."),
        }

    def execute(self, landmarks, reference, mode, parts, retime, auto_download):
        return align(landmarks, reference, mode, parts, retime, auto_download)
