"""Reference preparation, shared by the CLI and the ComfyUI node: the reference picture at the output size,
the V1 face mask, and the :class:`~echomimic_lib.frames.crop.CropGeometry` that says where the picture came from
(for pasting the results back into the original).

Targets:

- ``"v1_face"``: V1's square face crop + face mask (:func:`~echomimic_lib.landmarks.preprocess.v1_face_mask_and_crop`)
  from the face-mesh landmarks' extent (MediaPipe); the landmarks' convex hull is kept for paste-back;
- ``"v2_halfbody"``: V2's half-body crop from DWPose keypoints (:func:`~echomimic_lib.pose.halfbody_crop`),
  its S x S canvas stretched to the output size;
- ``"resize"``: the whole picture stretched to the output size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .crop import CropGeometry
from ..errors import EchoMimicError
from ..landmarks._image import as_rgb_uint8

TARGETS = ("v1_face", "v2_halfbody", "resize")
V1_MASK_DILATION = 0.1


@dataclass
class PreparedReference:
    image: np.ndarray          # (height, width, 3) uint8 RGB
    mask: np.ndarray           # (height, width) uint8 0..255: the V1 face mask (all 255 for the other targets)
    crop: CropGeometry         # where ``image`` came from in the original
    pose: Any = None           # V2: the reference's DWPose keypoints (PoseSequence) in the original picture


def v1_face_region(box, image_size: tuple[int, int], dilation: float = V1_MASK_DILATION) -> tuple[int, int, int, int]:
    """The V1 face-mask rectangle of a rounded face ``box`` (x0, y0, x1, y1), clipped to the (W, H) image."""
    x0, y0, x1, y1 = box
    w, h = image_size
    rp, cp = int((y1 - y0) * dilation), int((x1 - x0) * dilation)
    return max(0, x0 - cp), max(0, y0 - rp), min(w, x1 + cp), min(h, y1 + rp)


def _v1_face(img: np.ndarray, width: int, height: int, no_face: str, models_dir, model_path, download: bool,
             extractor=None) -> PreparedReference:
    from .._lazy import cv2
    from ..landmarks.preprocess import face_box_from_landmarks, prepare_v1_reference

    h, w = img.shape[:2]
    faces: list = []

    def landmark_boxes(rgb):
        if extractor is not None:
            faces.extend(extractor.detect(rgb))
        else:
            from ..landmarks.extractor import FaceLandmarkExtractor

            with FaceLandmarkExtractor(model_path, models_dir, download, multiple_faces="largest") as ex:
                faces.extend(ex.detect(rgb))
        return [face_box_from_landmarks(f["lmks"], (w, h)) for f in faces], [1.0] * len(faces)

    crop = prepare_v1_reference(img, width, height, box_provider=landmark_boxes, no_face=no_face)
    if crop.square is None:  # no face, whole image
        return PreparedReference(crop.image, crop.mask, CropGeometry.whole((w, h), (width, height)))
    def area(f):
        b = face_box_from_landmarks(f["lmks"], (w, h))
        return float((b[2] - b[0]) * (b[3] - b[1]))

    face = max(faces, key=area)  # the face select_face_box chose (largest box, first of equals)
    hull = cv2.convexHull((face["lmks"][:, :2] * np.array([w, h])).astype(np.float32)).reshape(-1, 2)
    geometry = CropGeometry((w, h), crop.square, (width, height), kind="v1_face",
                            face_box=v1_face_region(crop.box, (w, h)), face_hull=hull.tolist())
    return PreparedReference(crop.image, crop.mask, geometry)


def _v2_halfbody(img: np.ndarray, width: int, height: int, pose_detector: Callable | None) -> PreparedReference:
    from ..pose import crop_image, fit_image, halfbody_crop
    from ..pose.dwpose import detect_image_pose

    if pose_detector is None:
        raise EchoMimicError("the V2 half-body crop needs the DWPose detector (yolox_l.onnx, dw-ll_ucoco_384.onnx in "
                             "the models folder's dwpose/); or prepare the reference with a plain resize.")
    pose = detect_image_pose(pose_detector, img)
    hb = halfbody_crop(pose, (img.shape[1], img.shape[0]), size=max(width, height))
    image = fit_image(crop_image(img, hb), (width, height))
    return PreparedReference(image, np.full((height, width), 255, np.uint8), CropGeometry.from_halfbody(hb, (width, height)), pose)


def prepare_reference(image, target: str, width: int, height: int, *, no_face: str = "error", models_dir=None,
                      model_path=None, download: bool = False, extractor=None,
                      pose_detector: Callable | None = None) -> PreparedReference:
    """The reference for ``target`` (see the module docstring) at ``width`` x ``height``.

    models_dir / model_path / download / extractor: where the MediaPipe face landmarker comes from (V1);
    pose_detector: a DWPose detector (V2). no_face: ``"error"`` or ``"whole_image"`` (V1).
    """
    if target not in TARGETS:
        raise EchoMimicError(f"unknown reference target '{target}'; choose one of {', '.join(TARGETS)}.")
    if width <= 0 or height <= 0:
        raise EchoMimicError(f"width and height must be positive, got {width}x{height}.")
    img = as_rgb_uint8(image, "reference image")
    if target == "v1_face":
        return _v1_face(img, width, height, no_face, models_dir, model_path, download, extractor)
    if target == "v2_halfbody":
        return _v2_halfbody(img, width, height, pose_detector)
    from ..pose import fit_image

    h, w = img.shape[:2]
    return PreparedReference(fit_image(img, (width, height)), np.full((height, width), 255, np.uint8),
                             CropGeometry.whole((w, h), (width, height)))
