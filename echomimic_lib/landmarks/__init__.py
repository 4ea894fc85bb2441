"""EchoMimic V1 face landmarks: extraction (MediaPipe Tasks), drawing, V1 face mask/crop,
part-aware motion sync, and landmark files. MediaPipe and OpenCV are imported lazily.

Modules: ``parts`` (index sets, colours), ``drawing``, ``geometry`` (canonical mesh from landmarks),
``extractor``, ``sequence``, ``io``, ``preprocess``, ``motion_sync``, ``conditions``, ``mp_models``.
"""
from .conditions import (conditions_from_driver, conditions_from_driving_video, conditions_from_pkl_folder, draw_conditions,
                         extract_driving_landmarks, sync_driving_landmarks)
from .drawing import draw_landmark_sequence, draw_landmarks
from .io import load_pkl_folder, load_pkl_frame, load_sequence, save_sequence
from .motion_sync import motion_sync
from .parts import LANDMARK_MODE_PARTS, POSE_MODE_PARTS, normalize_parts
from .preprocess import V1FaceCrop, prepare_v1_reference, select_face_box, v1_face_mask_and_crop
from .sequence import LandmarkSequence

__all__ = [
    "LandmarkSequence", "draw_landmarks", "draw_landmark_sequence", "load_pkl_folder", "load_pkl_frame",
    "load_sequence", "save_sequence", "motion_sync", "normalize_parts", "POSE_MODE_PARTS", "LANDMARK_MODE_PARTS",
    "V1FaceCrop", "prepare_v1_reference", "select_face_box", "v1_face_mask_and_crop",
    "conditions_from_driving_video", "conditions_from_pkl_folder", "draw_conditions", "sync_driving_landmarks",
    "conditions_from_driver", "extract_driving_landmarks",
]
