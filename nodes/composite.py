"""EchoMimic Paste Back: generated frames back into the original picture (or onto their source video frames)
with a feathered mask, optional colour matching. The crop socket (ECHOMIMIC_CROP) carries either a
:class:`~echomimic_lib.frames.crop.CropGeometry` (Reference Preparation: one picture) or a
:class:`~echomimic_lib.jobs.dub_plan.DubPlan` (Face Track: a video, one source frame per output frame)."""
from __future__ import annotations

import logging

import numpy as np

from ..echomimic_lib.frames.composite import PasteBack, outline
from ..echomimic_lib.frames.crop import CropGeometry
from ..echomimic_lib.jobs.dub_plan import DubPlan
from ..echomimic_lib.errors import EchoMimicError
from ..echomimic_lib.retime import retime_indices
from . import comfy_bridge as C
from .base import Node, check_fps, frame_rate, link, socket
from .payloads import image_batch, to_image

log = logging.getLogger(__name__)

CROP = "ECHOMIMIC_CROP"
socket(CROP, (CropGeometry, DubPlan), "EchoMimic Reference Preparation or Face Track")
REGIONS = {"auto": None, "face box": "face", "landmark hull": "hull", "crop square": "crop"}
AUTO_REGION = {"v1_face": "face", "video_face": "hull", "v2_halfbody": "crop", "resize": "crop"}
COLOR = {"off": "off", "mean/std (Lab)": "lab", "histogram": "histogram"}


def _region(choice: str, geometry: CropGeometry, per_frame: bool = False) -> str:
    """The library's region for the node's choice; ``per_frame``: a Face Track's crop (each frame's hull from its
    landmarks)."""
    if choice not in REGIONS:
        raise EchoMimicError(f"unknown region '{choice}'; choose one of {', '.join(REGIONS)}.")
    region = REGIONS[choice] or AUTO_REGION[geometry.kind]
    if region == "hull" and geometry.face_hull is None and not per_frame:  # was the library's names ('hull', 'face'), no input named
        raise EchoMimicError(f"region '{choice}': this crop has no face landmarks (a V2 half-body crop, or 'resize only', "
                             "from Reference Preparation); pick 'auto', 'face box' or 'crop square'.")
    return region


def _paste_video(plan: DubPlan, gen: np.ndarray, originals: np.ndarray, fps: float, paster: PasteBack):
    """A dub: each generated frame onto its own source frame (the Face Track's schedule)."""
    from ..echomimic_lib.jobs.dub import composite_dub, source_regions

    if abs(plan.schedule.model_fps - fps) > 1e-3:
        raise EchoMimicError(f"the face track was planned for {plan.schedule.model_fps:g} fps but the frames come at "
                             f"{fps:g} fps; use one frame rate in the Audio Encoder, the Face Track and here.")
    schedule = plan.schedule.for_generated(len(gen))
    if len(originals) < schedule.frames_needed:
        raise EchoMimicError(f"the face track used {schedule.frames_needed} source frames but only {len(originals)} "
                             "are connected to 'original'; connect the same video frames as to EchoMimic Face Track.")
    frames, _ = composite_dub(plan, schedule, gen, originals, paster, C.check_interrupt)
    mid = len(frames) // 2
    src = int(schedule.source[mid])
    weights = paster.full_weights(**source_regions(plan, src)) if plan.track.valid[src] else None
    return frames, schedule.src_fps, mid, weights


def paste(images, crop, original, fps: float, region: str, feather: int, dilation: float, color_match: str):
    if color_match not in COLOR:
        raise EchoMimicError(f"unknown color_match '{color_match}'; choose one of {', '.join(COLOR)}.")
    if not isinstance(crop, (CropGeometry, DubPlan)):
        raise EchoMimicError("crop: connect the crop output of EchoMimic Reference Preparation or EchoMimic Face Track.")
    fps = check_fps(fps)
    geometry = crop.geometry if isinstance(crop, DubPlan) else crop
    gen = image_batch(images, "images")
    ow, oh = geometry.output_size
    if gen.shape[1:3] != (oh, ow):  # was the library's words, no input named, from the first frame pasted
        raise EchoMimicError(f"images: the frames are {gen.shape[2]}x{gen.shape[1]} but the crop was made for {ow}x{oh}; "
                             "link the frames generated from this crop's reference (the sampler's width and height as the "
                             "Reference Preparation's / Face Track's size), or the crop that made their reference.")
    originals = image_batch(original, "original")
    sw, sh = geometry.source_size
    if originals.shape[1:3] != (sh, sw):
        raise EchoMimicError(f"'original' is {originals.shape[2]}x{originals.shape[1]} but the crop was made from a "
                             f"{sw}x{sh} picture; connect the picture (or video frames) the crop came from.")
    paster = PasteBack(geometry, _region(region, geometry, isinstance(crop, DubPlan)), float(feather), float(dilation),
                       COLOR[color_match])
    C.check_interrupt()
    if isinstance(crop, DubPlan):
        frames, out_fps, mid, weights = _paste_video(crop, gen, originals, float(fps), paster)
    else:
        pick = np.zeros(len(gen), np.int64) if len(originals) == 1 else retime_indices(len(originals), len(gen), "ping-pong")
        if 1 < len(originals) != len(gen):
            log.info("paste back: %d generated frames onto %d original frames (ping-pong)", len(gen), len(originals))
        frames = np.empty((len(gen), sh, sw, 3), np.uint8)
        for i in range(len(gen)):
            frames[i] = paster.frame(gen[i], originals[pick[i]])
            if i % 16 == 15:
                C.check_interrupt()
        out_fps, mid, weights = float(fps), len(gen) // 2, paster.full_weights()
    preview = frames[mid] if weights is None else outline(frames[mid], weights)
    return to_image(frames), out_fps, to_image(preview)


class EchoMimicPasteBack(Node):
    OUTPUTS = (
        ("IMAGE", "images", "Full-size frames: the generation pasted into the original (outside the mask: the original, "
                            "pixel for pixel)."),
        ("FLOAT", "fps", "Their frame rate (the source video's for a dub; else the input fps)."),
        ("IMAGE", "preview", "One composite frame with the mask's edge drawn in red."),
    )
    DESCRIPTION = ("Pastes the generated crop back into the original picture or onto its source video frames, with a "
                   "feathered mask and optional colour matching.")

    @classmethod
    def inputs(cls):
        return {
            "images": link("IMAGE", "The generated frames (EchoMimic Sampler)."),
            "crop": link(CROP, "Where the reference came from: EchoMimic Reference Preparation's crop (a picture) or "
                               "EchoMimic Face Track's crop (a video)."),
            "original": link("IMAGE", "The original picture, or the source video frames, the crop was cut from."),
            "fps": frame_rate("Frame rate of the generated frames (link the sampler's fps)."),
            "region": (list(REGIONS), {"default": "auto", "tooltip": "What is pasted: auto (V1 face box for a V1 crop, "
                       "the landmark hull for a video, the crop square for V2 / resize), the V1 face box, the face "
                       "landmarks' hull, or the whole crop square."}),
            "feather": ("INT", {"default": 16, "min": 0, "max": 512, "tooltip": "Soft edge inside the region, in pixels "
                        "of the original (0 = hard edge)."}),
            "dilation": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Grow the face box / "
                         "hull by this fraction of the face size (the crop square never grows)."}),
            "color_match": (list(COLOR), {"default": "off", "tooltip": "Match the generated region's colours to the "
                            "original: mean/std in Lab, or histogram matching (only the region changes)."}),
        }

    def execute(self, images, crop, original, fps, region, feather, dilation, color_match):
        return paste(images, crop, original, fps, region, feather, dilation, color_match)
