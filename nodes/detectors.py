"""Detector factories (MediaPipe face landmarks, DWPose whole-body poses) looking in the pack's model folders.

Model files are searched in every ``models/echomimic`` root (and its ``mediapipe/`` or ``dwpose/`` sub-folder);
with ``download`` they are fetched once into the first root. Tests replace these two functions.
"""
from __future__ import annotations

from ..echomimic_lib.errors import MissingWeightsError
from . import paths


def face_landmarker(download: bool = False):
    """A :class:`~echomimic_lib.landmarks.extractor.FaceLandmarkExtractor` (use it as a context manager)."""
    from ..echomimic_lib.landmarks.extractor import FaceLandmarkExtractor

    return FaceLandmarkExtractor(models_dir=paths.echomimic_roots(), download=download, multiple_faces="largest")


def dwpose(download: bool = False):
    """A callable DWPose detector: RGB uint8 image -> released-format dict or None."""
    from ..echomimic_lib.pose.dwpose import DWPoseDetector, resolve_dwpose_models

    roots = paths.echomimic_roots()
    first_error = None
    for root in roots:
        try:
            det, pose = resolve_dwpose_models(root, download=False)
            return DWPoseDetector(det, pose)
        except MissingWeightsError as exc:
            first_error = first_error or exc
    if download and roots:
        return DWPoseDetector(*resolve_dwpose_models(roots[0], download=True))
    raise first_error or MissingWeightsError("no echomimic model folder is registered in ComfyUI.")
