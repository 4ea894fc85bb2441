"""EchoMimic Face Track (video dubbing): the face tracked through the source video frames, one crop for the clip,
the reference frame cut to it, and the video's own landmarks timed to the new audio (see echomimic_lib.jobs.dub_plan)."""
from __future__ import annotations

import logging

import numpy as np

from ..echomimic_lib.frames.composite import outline
from ..echomimic_lib.jobs.dub_plan import check_source_frames, plan_dub, reference_crop
from ..echomimic_lib.errors import EchoMimicError, as_whole
from ..echomimic_lib.landmarks import normalize_parts
from . import detectors
from .base import Node, check_fps, frame_rate, link, switch
from .composite import CROP
from .payloads import AUDIO_FEATURES, LANDMARKS, RETIME_POLICIES, LandmarkTrack, image_batch, to_image

log = logging.getLogger(__name__)


def _preview(frame: np.ndarray, plan) -> np.ndarray:
    """The reference frame with the clip's crop square (green) and the face hull (red)."""
    from ..echomimic_lib._lazy import cv2

    img = np.array(frame, copy=True)
    x0, y0, x1, y1 = plan.geometry.box
    cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (64, 255, 64), max(1, round(max(img.shape[:2]) / 300)))
    hull = np.zeros(img.shape[:2], np.float32)
    cv2.fillPoly(hull, [np.round(np.asarray(plan.geometry.face_hull)).astype(np.int32)], 1.0)
    return outline(img, hull)


def _frame_number(value) -> int | None:
    """A linked reference_frame (not range-checked by ComfyUI): -1 = auto (None), a frame number as an int (2.0 is 2).
    2.5 was frame 2 and -5 auto, without a word."""
    number = as_whole(value)
    if number is None or number < -1:
        raise EchoMimicError(f"reference_frame {value!r}: give a whole frame number of the video (0 = the first frame) "
                             "or -1 (the first frame with a clear frontal face).")
    return None if number == -1 else number


def track(images, fps: float, audio_features, width: int, height: int, reference_frame: int, parts: str, retime: str,
          download: bool):
    from .reference import size_problem

    problem = size_problem(width, height)  # a linked value is not range-checked by ComfyUI: 64..2048 here
    if problem:
        raise EchoMimicError(f"{problem} Use the sampler's size.")
    reference_frame = _frame_number(reference_frame)
    if retime not in RETIME_POLICIES:
        raise EchoMimicError(f"unknown retiming policy '{retime}'; choose one of {', '.join(RETIME_POLICIES)}.")
    try:
        selected = normalize_parts(parts)  # "" = no landmark parts
    except ValueError as exc:
        raise EchoMimicError(f"parts: {exc}") from None
    fps = check_fps(fps)
    frames = image_batch(images, "images")
    check_source_frames(len(frames), "the images input")
    if reference_frame is not None and reference_frame >= len(frames):  # was said after MediaPipe was loaded
        raise EchoMimicError(f"reference_frame {reference_frame}: the video has no such frame (its frames are "
                             f"0..{len(frames) - 1}); give one of them, or -1 (the first frame with a clear frontal face).")
    feats, model_fps = audio_features.features, float(audio_features.fps)
    n_model = audio_features.frame_count
    n_out = max(1, min(int(np.floor(feats.seconds * fps + 1e-6)), int(np.floor(n_model * fps / model_fps + 1e-6))))
    with detectors.face_landmarker(download) as ex:
        plan = plan_dub(frames, float(fps), n_model, model_fps, n_out, (width, height), retime,
                        reference_frame, extractor=ex, parts=selected)
    log.info("face track: crop %s, reference frame %d, %d output frames at %g fps", plan.geometry.box,
             plan.reference_frame, n_out, fps)
    landmarks = LandmarkTrack(plan.driving_pixels(), (width, height), model_fps, parts=selected, retime="hold-last",
                              report=plan.track.sequence.report() if plan.track.sequence is not None else "")
    reference = reference_crop(plan, frames)
    return to_image(reference), landmarks, plan, to_image(_preview(frames[plan.reference_frame], plan))


class EchoMimicFaceTrack(Node):
    OUTPUTS = (
        ("IMAGE", "reference", "The reference frame cut to the clip's crop at width x height (for the sampler)."),
        (LANDMARKS, "landmarks", "The video's own landmarks (selected parts), timed to the audio, for the sampler."),
        (CROP, "crop", "The crop and the per-frame plan, for EchoMimic Paste Back."),
        ("IMAGE", "preview", "The reference frame with the crop square (green) and the face hull (red)."),
    )
    DESCRIPTION = ("Video dubbing: tracks the face through the video (MediaPipe), smooths it, picks one crop for the clip "
                   "and a reference frame, and times the video's landmarks to the new audio.")

    @classmethod
    def inputs(cls):
        return {
            "images": link("IMAGE", "The source video's frames (Get Video Components)."),
            "fps": frame_rate("The source video's frame rate (link Get Video Components' fps); the result keeps it."),
            "audio_features": link(AUDIO_FEATURES, "The new speech (EchoMimic Audio Encoder): the dub lasts as long as it; "
                                                   "its fps is the model's frame rate."),
            "width": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip": "Crop width for the model "
                      "(the sampler's width)."}),
            "height": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip": "Crop height (the sampler's height)."}),
            "reference_frame": ("INT", {"default": -1, "min": -1, "max": 100000, "tooltip": "Frame of the video used as the "
                                "reference; -1 = the first frame with a clear frontal face."}),
            "parts": ("STRING", {"default": "eyes, brows, pupils, nose", "tooltip": "Landmark parts taken from the video "
                      "(the mouth follows the audio); add 'mouth' for the lips from the video too; empty = none."}),
            "retime": (RETIME_POLICIES, {"default": "ping-pong", "tooltip": "How the video is extended when the audio is "
                       "longer (a shorter audio cuts it)."}),
            "auto_download": switch("Download MediaPipe's face landmarker if missing."),
        }

    def execute(self, images, fps, audio_features, width, height, reference_frame, parts, retime, auto_download):
        return track(images, fps, audio_features, width, height, reference_frame, parts, retime, auto_download)
