"""EchoMimic Reference Preparation: the reference IMAGE at the output size, plus the V1 face MASK and the crop
(where the picture came from, for EchoMimic Paste Back)."""
from __future__ import annotations

from ..echomimic_lib.errors import EchoMimicError, NoFaceError
from ..echomimic_lib.frames.reference import prepare_reference
from . import detectors, paths
from .base import Node, link, switch
from .composite import CROP
from .payloads import first_image, to_image, to_mask

TARGETS = ["V1 face crop + mask", "V2 half-body crop", "resize only"]
LIB_TARGETS = dict(zip(TARGETS, ("v1_face", "v2_halfbody", "resize")))
NO_FACE = {"error": "error", "whole image": "whole_image"}


def _check_size(width: int, height: int) -> None:
    if width % 8 or height % 8 or width < 64 or height < 64:
        raise EchoMimicError(f"width and height must be multiples of 8 and at least 64 (got {width}x{height}); try "
                             f"{max(64, width // 8 * 8)}x{max(64, height // 8 * 8)}.")


def prepare(image, target: str, width: int, height: int, no_face: str, download: bool):
    _check_size(width, height)
    img = first_image(image, "image")
    if target not in LIB_TARGETS:
        raise EchoMimicError(f"unknown target '{target}'; choose one of {', '.join(TARGETS)}.")
    if target == TARGETS[0] and no_face not in NO_FACE:
        raise EchoMimicError(f"unknown no_face option '{no_face}'; choose one of {', '.join(NO_FACE)}.")
    detector = detectors.dwpose(download) if target == TARGETS[1] else None
    try:
        prep = prepare_reference(img, LIB_TARGETS[target], width, height, no_face=NO_FACE.get(no_face, "error"),
                                 models_dir=paths.echomimic_roots(), download=download, pose_detector=detector)
    except NoFaceError as exc:  # the library names its own option; name the widget value as the list shows it
        raise NoFaceError("no face found in the reference image; use a portrait with one visible face, or set no_face "
                          "to 'whole image' to animate the whole picture (with an all-ones mask).") from exc
    return to_image(prep.image), to_mask(prep.mask), prep.crop


class EchoMimicReferencePrep(Node):
    OUTPUTS = (
        ("IMAGE", "image", "The reference at width x height."),
        ("MASK", "mask", "V1 face mask at width x height (all ones for the other targets)."),
        (CROP, "crop", "Where the reference came from in the picture, for EchoMimic Paste Back."),
    )
    DESCRIPTION = "Prepares the reference picture: V1 square face crop + face mask, V2 half-body crop, or a plain resize."

    @classmethod
    def inputs(cls):
        return {
            "image": link("IMAGE", "The reference picture (the first image of a batch is used)."),
            "target": (TARGETS, {"default": TARGETS[0], "tooltip": "V1 face crop + mask: for V1 audio driving (MediaPipe finds "
                       "the face). V2 half-body crop: head to elbows, like the V2 demos (DWPose). resize only: use the picture as is."}),
            "width": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip": "Output width (multiple of 8), "
                      "the video's width: the sampler's width 0 follows it."}),
            "height": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip": "Output height (multiple of 8), "
                       "the video's height: the sampler's height 0 follows it."}),
            "no_face": (list(NO_FACE), {"default": "error", "tooltip": "V1 face crop when no face is found: stop with an "
                        "error, or use the whole picture with an all-ones mask."}),
            "auto_download": switch("Download the face-landmark (MediaPipe) or DWPose models into models/echomimic if "
                                    "missing."),
        }

    def execute(self, image, target, width, height, no_face, auto_download):
        return prepare(image, target, width, height, no_face, auto_download)
