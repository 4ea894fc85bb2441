"""ComfyUI nodes of the pack: thin V1-style classes over :mod:`echomimic_lib` (category "EchoMimic").

Only :mod:`.comfy_bridge` imports ComfyUI; the rest runs (and is tested) without it. Another copy of the pack already
imported (two installs in custom_nodes) is said in the log: ComfyUI keeps one copy's node for each name, and the two
copies' values do not mix (the nodes refuse them, naming both folders).
"""
import logging

from .audio import EchoMimicAudioEncoder
from .base import other_installs, pack_folder
from .composite import EchoMimicPasteBack
from .evaluate import EchoMimicEvaluate
from .face_track import EchoMimicFaceTrack
from .gestures import EchoMimicGesturesFromAudio
from .landmark_only import EchoMimicLandmarkOnlyAudio
from .landmarks import EchoMimicLandmarkExtractor, EchoMimicPartAwareAligner
from .loader import EchoMimicModelLoader
from .lora import EchoMimicLora
from .pose import EchoMimicPoseSequenceLoader
from .reference import EchoMimicReferencePrep
from .sampler import EchoMimicSampler
from .save_dub import EchoMimicSaveDub
from .to_file import EchoMimicSamplerToFile, EchoMimicV3SamplerToFile
from .v3 import EchoMimicV3AudioEncoder, EchoMimicV3Loader, EchoMimicV3Sampler
from .v3_lora import EchoMimicV3Lora

NODE_CLASS_MAPPINGS = {
    "EchoMimicModelLoader": EchoMimicModelLoader,
    "EchoMimicLora": EchoMimicLora,
    "EchoMimicAudioEncoder": EchoMimicAudioEncoder,
    "EchoMimicReferencePrep": EchoMimicReferencePrep,
    "EchoMimicLandmarkExtractor": EchoMimicLandmarkExtractor,
    "EchoMimicPartAwareAligner": EchoMimicPartAwareAligner,
    "EchoMimicPoseSequenceLoader": EchoMimicPoseSequenceLoader,
    "EchoMimicGesturesFromAudio": EchoMimicGesturesFromAudio,
    "EchoMimicSampler": EchoMimicSampler,
    "EchoMimicSamplerToFile": EchoMimicSamplerToFile,
    "EchoMimicEvaluate": EchoMimicEvaluate,
    "EchoMimicPasteBack": EchoMimicPasteBack,
    "EchoMimicFaceTrack": EchoMimicFaceTrack,
    "EchoMimicSaveDub": EchoMimicSaveDub,
    "EchoMimicLandmarkOnlyAudio": EchoMimicLandmarkOnlyAudio,
    "EchoMimicV3Loader": EchoMimicV3Loader,
    "EchoMimicV3Lora": EchoMimicV3Lora,
    "EchoMimicV3AudioEncoder": EchoMimicV3AudioEncoder,
    "EchoMimicV3Sampler": EchoMimicV3Sampler,
    "EchoMimicV3SamplerToFile": EchoMimicV3SamplerToFile,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EchoMimicModelLoader": "EchoMimic Model Loader (whole model set)",
    "EchoMimicLora": "EchoMimic LoRA",
    "EchoMimicAudioEncoder": "EchoMimic Audio Encoder",
    "EchoMimicReferencePrep": "EchoMimic Reference Preparation",
    "EchoMimicLandmarkExtractor": "EchoMimic Landmark Extractor",
    "EchoMimicPartAwareAligner": "EchoMimic Part-Aware Aligner",
    "EchoMimicPoseSequenceLoader": "EchoMimic Hand-Pose Sequence Loader",
    "EchoMimicGesturesFromAudio": "EchoMimic Gestures from Audio",
    "EchoMimicSampler": "EchoMimic Sampler",
    "EchoMimicSamplerToFile": "EchoMimic Sampler (to file)",
    "EchoMimicEvaluate": "EchoMimic Evaluate",
    "EchoMimicPasteBack": "EchoMimic Paste Back",
    "EchoMimicFaceTrack": "EchoMimic Face Track (video dubbing)",
    "EchoMimicSaveDub": "EchoMimic Save Dub (source colours)",
    "EchoMimicLandmarkOnlyAudio": "EchoMimic Landmark-Only Driving (no audio)",
    "EchoMimicV3Loader": "EchoMimic V3 Loader (flash-pro)",
    "EchoMimicV3Lora": "EchoMimic V3 LoRA (Wan2.1 1.3B)",
    "EchoMimicV3AudioEncoder": "EchoMimic V3 Audio Encoder (flash-pro)",
    "EchoMimicV3Sampler": "EchoMimic V3 Sampler (flash-pro)",
    "EchoMimicV3SamplerToFile": "EchoMimic V3 Sampler (to file)",
}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

for _other in other_installs():
    logging.getLogger(__name__).warning(
        "two copies of the EchoMimic pack are installed (%s and %s): ComfyUI keeps one copy's node for each name and "
        "their values do not mix; remove one of the two from custom_nodes and restart ComfyUI.", _other,
        pack_folder(EchoMimicAudioEncoder))
