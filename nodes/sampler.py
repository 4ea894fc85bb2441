"""EchoMimic Sampler: reference + audio features (+ mask / landmarks / poses) -> video frames, fps and the
audio cut to the video. Progress per denoising step x context window; Cancel stops mid-sampling."""
from __future__ import annotations

import logging
from dataclasses import replace

import torch

from ..echomimic_lib.errors import EchoMimicError, as_whole
from ..echomimic_lib.config import SD15
from ..echomimic_lib.modes import MAX_DEEP_CACHE, get_mode
from ..echomimic_lib.pipeline import MaskCondition, Sampler, settings_for
from ..echomimic_lib.pipeline.deep_cache import branch_count
from . import comfy_bridge as C
from . import resume
from .base import Node, link, switch
from ..echomimic_lib.speed import check_deep_cache, check_speed_options
from .loader import NODE_NAMES, finish, placement
from .payloads import AUDIO_FEATURES, LANDMARKS, MODEL, POSES, check_finite, first_image, mask_plane, trim_audio

log = logging.getLogger(__name__)

MODES = {"v1_audio": "v1-audio", "v1_pose": "v1-landmarks", "v2": "v2-halfbody"}
WANTS = {"v1_audio": "a face mask (EchoMimic Reference Preparation's mask) or nothing",
         "v1_pose": "face landmarks (EchoMimic Landmark Extractor or Part-Aware Aligner) on 'landmarks'",
         "v2": "hand poses (EchoMimic Hand-Pose Sequence Loader) on 'poses'"}
NAMES = {"v1_audio": "V1 audio-driven", "v1_pose": "V1 landmark", "v2": "V2 half-body"}
SAMPLER_NAMES = replace(NODE_NAMES, deep_cache="'deep_cache'", deep_cache_branch="'deep_cache_branch'")  # (its own inputs)
MAX_BRANCH = branch_count(SD15) - 1  # the widget's range (SD1.5: 11); the loaded denoiser's own count is checked at run time


def build_condition(weights: str, mask, landmarks, poses, num_frames: int, width: int, height: int, fps: float, audio=None):
    """The sampler condition for the model's weight set; a mismatched input gets a message naming the fix."""
    given = {"mask": mask, "landmarks": landmarks, "poses": poses}
    allowed = {"v1_audio": "mask", "v1_pose": "landmarks", "v2": "poses"}[weights]
    for name, value in given.items():
        if value is not None and name != allowed:
            kind = {"mask": "a face mask", "landmarks": "V1 face landmarks", "poses": "V2 hand poses"}[name]
            raise EchoMimicError(f"a {NAMES[weights]} model was given {kind} on '{name}'; it takes {WANTS[weights]}. "
                                 f"Disconnect '{name}', or load the matching version in EchoMimic Model Loader.")
    if weights == "v1_audio":
        plane = mask_plane(mask) if mask is not None else torch.ones((height, width))
        condition = MaskCondition(plane)
        condition.tensor(height, width)  # a mask of another size than the video: said now, not after the models load
        return condition
    if weights == "v1_pose":
        if landmarks is None:
            raise EchoMimicError(f"a V1 landmark model needs {WANTS['v1_pose']}.")
        return landmarks.condition(num_frames, width, height, fps, get_mode("v1-landmarks").landmark_parts)
    if poses is None:
        raise EchoMimicError(f"a V2 half-body model needs {WANTS['v2']}.")
    return poses.condition(num_frames, width, height, fps, audio)


def check_driving(weights: str, track) -> None:
    """Landmark-Only Driving's features (the model's unconditional audio) drive the V1 landmark model only, as the
    command line (only --mode landmarks runs without --audio): a V1 audio or V2 model rendered a face that never spoke."""
    from ..echomimic_lib.audio.unconditional import UnconditionalAudio

    if isinstance(getattr(track, "features", None), UnconditionalAudio) and weights != "v1_pose":
        raise EchoMimicError(f"audio_features: EchoMimic Landmark-Only Driving (no audio) drives the V1 landmark model "
                             f"only, but this is a {NAMES[weights]} model, which needs speech (its face would not talk). "
                             "Connect EchoMimic Audio Encoder's audio_features, or load 'V1 landmark' in EchoMimic Model "
                             "Loader.")


def output_size(reference, width: int, height: int) -> tuple[int, int]:
    """Width / height 0 = the reference's (Reference Preparation's output size)."""
    if (not width or not height) and isinstance(reference, torch.Tensor) and reference.dim() == 4:
        return int(width or reference.shape[2]), int(height or reference.shape[1])
    return int(width), int(height)


def sample(handle, reference, track, seed: int, steps: int, cfg: float, width: int, height: int, length: int,
           context_frames: int, context_overlap: int, mask=None, landmarks=None, poses=None, cuda_graphs: bool = False,
           deep_cache: int = 0, deep_cache_branch: int = 0, frame_sink=None, resumable: bool = False, deferred=None):
    """The Sampler's run; with ``frame_sink(start, frames)`` the decoded frames go there window by window and the
    returned frames are None (EchoMimic Sampler (to file), :mod:`.to_file`). ``resumable``: the denoising state is
    kept (:mod:`.resume`) and removed at the end, or put in the list ``deferred`` for the caller to remove once its
    output is whole."""
    check_speed_options(C.torch_device(), cuda_graphs=bool(cuda_graphs), low_vram=handle.low_vram, names=NODE_NAMES)
    deep_cache, deep_cache_branch = check_deep_cache(deep_cache, deep_cache_branch, getattr(handle.models, "config", None),
                                                     names=SAMPLER_NAMES)
    if resumable:
        resume.check(deep_cache)
    check_driving(handle.weights, track)
    from .reference import size_problem

    given = (width, height)
    width, height = output_size(reference, width, height)
    # a linked value, or 0 = a reference of any size, is not checked when queued (multiples of 8 of a linked value:
    # settings.validate below)
    problem = (0 in given or not (64 <= width <= 2048 and 64 <= height <= 2048)) and size_problem(width, height)
    if problem:
        hint = (f" (width/height 0 take the reference's size, here {width}x{height}: give the reference one with EchoMimic "
                "Reference Preparation, or set width and height here)") if 0 in given else ""
        raise EchoMimicError(problem + hint)
    whole = as_whole(length)  # a linked 20.0 from a math node is 20
    if whole is None or whole < 0:
        raise EchoMimicError(f"length {length}: give a whole number of frames, 0 = follow the audio.")
    length = whole
    n = track.frame_count if not length else min(length, track.frame_count)  # the video follows the audio
    if length > n:  # as the command line: said, not silent
        log.warning("length %d is beyond the audio: it gives %d frames at %g fps; the video has %d frames (never longer "
                    "than the audio).", length, n, track.fps, n)
    settings = settings_for(MODES[handle.weights], handle.variant, width=width, height=height, seed=seed,
                            steps=steps or None, cfg=cfg or None, fps=track.fps, num_frames=n,
                            context_frames=context_frames, context_overlap=context_overlap, cuda_graphs=bool(cuda_graphs),
                            deep_cache=deep_cache, deep_cache_branch=deep_cache_branch)
    settings.validate()
    batch = None
    if frame_sink is None:  # the frames are returned as one IMAGE batch in host memory, filled chunk by chunk
        from ..echomimic_lib.pipeline.decode import HostFrames, host_bytes

        batch = HostFrames(n, height, width, fix="EchoMimic Sampler (to file)", working=host_bytes(
            getattr(handle.models, "vae", None), n, height, width, settings.decode_batch, C.torch_device()))
    try:
        result, kept = _run(handle, reference, track, settings, n, mask, landmarks, poses, resumable,
                            frame_sink or batch.put)
    except BaseException:
        if batch is not None:
            batch.release()  # Cancel, an error: the IMAGE's memory goes now, not with the traceback
        raise
    resume.finished(kept, deferred)
    frames = batch.result() if batch is not None else None
    return frames, float(result.fps), trim_audio(track.audio, result.num_frames, result.fps)


def _run(handle, reference, track, settings, n, mask, landmarks, poses, resumable, frame_sink):
    """The checked run: (the library's result, the kept denoising state or None); the frames go to ``frame_sink``, and
    Cancel is looked for after each decoded chunk as after each step."""
    width, height = settings.width, settings.height
    condition = build_condition(handle.weights, mask, landmarks, poses, n, width, height, track.fps, track.audio)
    image = first_image(reference, "reference")
    check_finite(reference[:1], "reference", "connect a picture (EchoMimic Reference Preparation's image).")
    C.check_interrupt()
    kept = resume.checkpoint(handle, settings, {
        "reference": image, "audio": track, "mask": None if mask is None else mask_plane(mask), "landmarks": landmarks,
        "poses": poses}) if resumable else None
    pbar = C.progress_bar(1)
    state = {"done": 0, "total": 1}

    def progress(done, total):
        state.update(done=done, total=total)
        pbar.update_absolute(done, total)  # in ComfyUI this also raises InterruptProcessingException on Cancel
        C.check_interrupt()

    place = placement(handle, replace(settings, num_frames=n))
    try:
        preview = C.latent_previewer(place.device)

        def trace(name, value):
            if preview is not None and name.startswith("step"):
                pbar.update_absolute(state["done"], state["total"], preview(value[1]))

        def sink(start, frames):
            frame_sink(start, frames)
            C.check_interrupt()  # Cancel while the frames are decoded: stops after this chunk

        result = Sampler(handle.models, place)(image, track.features, condition, settings, progress=progress,
                                               trace=trace if preview else None, frame_sink=sink, resume=kept,
                                               cancel=C.check_interrupt)
    finally:
        finish(place)
    return result, kept


class EchoMimicSampler(Node):
    OUTPUTS = (
        ("IMAGE", "images", "The video frames."),
        ("FLOAT", "fps", "Their frame rate (link to Create Video's fps)."),
        ("AUDIO", "audio", "The audio cut to the video's length (link to Create Video's audio)."),
    )
    DESCRIPTION = "Animates the reference with the audio (and landmarks or hand poses) over sliding context windows."

    @classmethod
    def inputs(cls):
        return {
            "model": link(MODEL, "From EchoMimic Model Loader; its version decides which condition is needed."),
            "reference": link("IMAGE", "The reference picture (ideally from EchoMimic Reference Preparation)."),
            "audio_features": link(AUDIO_FEATURES, "From EchoMimic Audio Encoder (same model)."),
            "seed": ("INT", {"default": 420, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Noise seed, 0 to 2^64-1; the same seed and inputs give the same video "
                             "(control 'randomize': a new seed each run)."}),
            "steps": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip": "Denoising steps; 0 = the variant's default "
                              "(30 normal, 6 acc)."}),
            "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": "Classifier-free guidance; "
                              "0 = the variant's default (2.5 normal, 1.0 acc; 1.0 or less turns guidance off)."}),
            "width": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 8, "tooltip": "Video width, a multiple of 8; "
                              "0 = the reference's width (set the size once, in Reference Preparation). V1 was trained "
                              "at 512, V2 at 768."}),
            "height": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 8, "tooltip": "Video height, a multiple of 8; "
                               "0 = the reference's height."}),
            "length": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "Number of frames; 0 = follow the audio "
                               "(never longer than the audio)."}),
            "context_frames": ("INT", {"default": 12, "min": 1, "max": 32, "tooltip": "Frames per context window."}),
            "context_overlap": ("INT", {"default": 3, "min": 0, "max": 31, "tooltip": "Frames shared by neighbouring windows "
                                        "(smaller than context_frames)."}),
        }

    @classmethod
    def optional_inputs(cls):
        return {
            "mask": link("MASK", "V1 audio: the face mask at width x height (Reference Preparation). Without it "
                              "the whole frame is used."),
            "landmarks": link(LANDMARKS, "V1 landmark models: driving landmarks (Landmark Extractor or Aligner)."),
            "poses": link(POSES, "V2 models: the hand-pose sequence (Hand-Pose Sequence Loader)."),
            "cuda_graphs": switch("Speed (GPU): record the denoiser call once per run as a CUDA graph and replay it for "
                                  "every step and window (no kernel launch overhead). Needs a CUDA GPU; not with the "
                                  "loader's low_vram. Goes with the loader's compile."),
            "deep_cache": ("INT", {"default": 0, "min": 0, "max": MAX_DEEP_CACHE, "tooltip": "Speed (DeepCache; changes the output): "
                                   "run the whole denoiser every N steps and reuse its deep features in the steps between "
                                   "(only the shallow layers run there). 2-3 is typical; 0 = off."}),
            "deep_cache_branch": ("INT", {"default": 0, "min": 0, "max": MAX_BRANCH, "tooltip": "With deep_cache: the "
                                          "DeepCache branch, 0 (the shallowest, fastest) to 11; a larger branch recomputes "
                                          "more in the cached steps and stays closer to the output without DeepCache. Keep "
                                          "it 0 while deep_cache is 0 or 1."}),
            "resumable": switch("Long renders: keep the denoising state (the clip's latents after the last finished step) "
                                "in output/echomimic/.resume/ every 2 minutes and when the render stops (Cancel, out of "
                                "memory, an error). Queue the same prompt again (seed control 'fixed') and it goes on "
                                "from the next step, to the same video; low_vram may be switched on for it. Removed when "
                                "the video is done; states left for 7 days are removed. Not with deep_cache."),
        }

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None, context_frames=None, context_overlap=None, deep_cache=None,
                        deep_cache_branch=None, resumable=None):
        """Checked when the prompt is queued, before any model is read (ComfyUI then skips its own range check of these;
        a value that comes through a link is not known yet, arrives as None and is checked when the node runs)."""
        from .reference import size_problem

        problem = size_problem(0 if width is None else width, 0 if height is None else height, allow_zero=True)
        if problem:
            return problem
        if context_frames is not None and not (isinstance(context_frames, int) and 1 <= context_frames <= 32):
            return f"context_frames {context_frames}: use 1..32 frames per window (default 12)."
        if context_frames is not None and context_overlap is not None and not (
                isinstance(context_overlap, int) and 0 <= context_overlap < context_frames):
            return f"context_overlap {context_overlap}: use 0..{context_frames - 1} (smaller than context_frames {context_frames})."
        if deep_cache is not None and deep_cache_branch is not None:  # (ComfyUI skips its range check of these too)
            try:
                check_deep_cache(deep_cache, deep_cache_branch, names=SAMPLER_NAMES)
            except EchoMimicError as exc:
                return str(exc)
        if resumable and deep_cache is not None:
            try:
                resume.check(deep_cache)
            except EchoMimicError as exc:
                return str(exc)
        return True

    def execute(self, model, reference, audio_features, seed, steps, cfg, width, height, length, context_frames,
                context_overlap, mask=None, landmarks=None, poses=None, cuda_graphs=False, deep_cache=0, deep_cache_branch=0,
                resumable=False):
        return sample(model, reference, audio_features, seed, steps, cfg, width, height, length, context_frames,
                      context_overlap, mask, landmarks, poses, cuda_graphs, deep_cache, deep_cache_branch,
                      resumable=bool(resumable))
