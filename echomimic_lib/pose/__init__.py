"""EchoMimicV2 hand-pose sequences: loading, retiming, drawing, alignment and DWPose extraction.

No ComfyUI and no heavy import here: onnxruntime is only imported when a DWPose model is loaded.

Typical use::

    seq = load_pose("pose/01")                          # released folder, our .npz, or one .npy frame
    seq = seq.retime(n_frames, "ping-pong", out_fps=24)  # cover the audio
    # optional, with DWPose weights: put the reference picture in the same framing and move the hands
    ref_pose = detect_image_pose(DWPoseDetector.from_models_dir(models_dir), ref_rgb)
    ref_rgb, ref_pose, _ = align_reference_image(ref_rgb, ref_pose, 768)
    seq, _ = fit_sequence_to_reference(seq, ref_pose)
    cond = draw_hands_batch(seq, range(a, b), (W, H))     # uint8 (F, H, W, 3) RGB for one context window

(``DWPoseDetector`` / ``detect_image_pose`` / ``extract_pose_sequence`` live in :mod:`.dwpose`.)
"""
from .align import (
    HalfBodyCrop,
    align_reference_and_poses,
    align_reference_image,
    crop_image,
    crop_sequence,
    fit_image,
    fit_sequence_to_reference,
    halfbody_crop,
    resize_and_pad_params,
    similarity_from_points,
)
from .drawing import draw_hand_frame, draw_hands, draw_hands_batch, draw_preview
from .io import (
    PoseLoadReport,
    convert_released_folder,
    load_pose,
    load_pose_npz,
    load_released_folder,
    save_pose_npz,
    save_released_folder,
)
from .sequence import PoseSequence

__all__ = [
    "HalfBodyCrop",
    "PoseLoadReport",
    "PoseSequence",
    "align_reference_and_poses",
    "align_reference_image",
    "convert_released_folder",
    "crop_image",
    "crop_sequence",
    "draw_hand_frame",
    "draw_hands",
    "draw_hands_batch",
    "draw_preview",
    "fit_image",
    "fit_sequence_to_reference",
    "halfbody_crop",
    "load_pose",
    "load_pose_npz",
    "load_released_folder",
    "resize_and_pad_params",
    "save_pose_npz",
    "save_released_folder",
    "similarity_from_points",
]
