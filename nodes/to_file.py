"""Sampler nodes that write the video straight to an mp4 in ComfyUI's output folder: host memory stays flat in the
clip's length (a 5-minute V2 clip at 768 px as one IMAGE batch is about 50 GB), so "length = the audio" is not
bounded by RAM.

- **EchoMimic Sampler (to file)**: the Sampler's inputs (its ``inputs`` / ``optional_inputs`` / ``VALIDATE_INPUTS``)
  plus ``filename_prefix``; the Sampler's own run (:func:`.sampler.sample`) with a frame sink: each decoded batch of
  frames (at most the sampler's decode batch) goes to the encoder and is dropped.
- **EchoMimic V3 Sampler (to file)**: the V3 Sampler's inputs plus ``filename_prefix``; its own run
  (:meth:`.v3.EchoMimicV3Sampler.sample`) with a block sink: one block for at most 81 frames, else one per chunk.

Both write H.264 + AAC with the audio cut to the video, as ``echomimic animate`` does (:class:`Mp4Writer`): under a
temporary name in the destination folder, renamed when the last frame is in; Cancel or an error removes it. The number
is chosen when the run starts; a run that finishes to find it taken (another run of the same prefix into the same output
folder, e.g. a second ComfyUI) takes the next free one instead of replacing that video.
``filename_prefix`` follows core's Save nodes (``echomimic/video`` -> ``output/echomimic/video_00001_.mp4``, resolved
by ComfyUI's ``get_save_image_path`` through the bridge); a prefix outside the output folder is refused when queued
and again before any sampling. Outputs: ``path`` (the mp4's full path), ``fps``, and ``preview``: at most
:data:`PREVIEW_FRAMES` frames spread evenly over the clip (the first always; kept as they stream past). The UI result
names the file as core's Save Video does, so the frontend shows the video on the node.
"""
from __future__ import annotations

import numpy as np
import torch

from ..echomimic_lib.audio.waveform import check_sample_rate
from ..echomimic_lib.io.video_writer import Mp4Writer, _as_uint8
from . import comfy_bridge as C
from .base import checks_links
from .payloads import comfy_waveform, to_image
from .sampler import EchoMimicSampler, output_size, sample
from .v3 import EchoMimicV3Sampler

PREVIEW_FRAMES = 8
OUTPUTS = (
    ("STRING", "path", "The mp4's full path (in ComfyUI's output folder)."),
    ("FLOAT", "fps", "Its frame rate."),
    ("IMAGE", "preview", f"At most {PREVIEW_FRAMES} frames spread evenly over the video (the first always): a look at "
                         "the result without holding the whole video in memory."),
)


def prefix_input(default: str) -> tuple:
    return ("STRING", {"default": default, "tooltip": "Where the mp4 goes, as in Save Video: a name in ComfyUI's "
                       "output folder (sub-folders are fine), numbered _00001_, _00002_ ... (%width% / %height% / %year% "
                       "etc. are filled in)."})


def _as_u8(frame) -> np.ndarray:
    """One (H, W, 3) frame as the encoder gets it (Mp4Writer's rounding), as its own copy (not a view of the block)."""
    return np.array(_as_uint8(frame)[0])


class FramePreview:
    """At most ``count`` evenly spaced frames of a stream whose length is not known in advance: every ``stride``-th
    frame is kept; once ``2 * count`` are kept every other one goes and the stride doubles (so at most
    ``2 * count - 1`` frames are held at any time); :meth:`image` picks ``count`` of them evenly."""

    def __init__(self, count: int = PREVIEW_FRAMES):
        self.count, self.stride, self.kept = count, 1, []

    def take(self, start: int, frames) -> None:
        for j in range(len(frames)):
            if (start + j) % self.stride:
                continue
            self.kept.append(_as_u8(frames[j]))
            if len(self.kept) == 2 * self.count:
                self.kept, self.stride = self.kept[::2], self.stride * 2

    def image(self) -> torch.Tensor:
        picks = np.unique(np.linspace(0, len(self.kept) - 1, min(self.count, len(self.kept))).round().astype(int))
        return to_image(np.stack([self.kept[i] for i in picks]))


class VideoFile:
    """The mp4 one run writes: its place (refused before any work when the prefix leaves the output folder), the
    writer, the preview, and the node's return value."""

    def __init__(self, prefix: str, width: int, height: int, fps: float, audio: dict | None, color=None):
        wave = audio.get("waveform") if isinstance(audio, dict) else None
        samples = None if wave is None or wave.numel() == 0 else comfy_waveform(wave)[0].float().cpu().numpy()  # (C, T)
        rate = int(check_sample_rate(audio.get("sample_rate"))) if samples is not None else None  # NaN: was int()'s error
        self.path, self.entry = C.save_path(prefix, "mp4", width, height)
        self._name = (prefix, width, height)
        self.fps = float(fps)
        # ``color``: a dub's source colour description (nodes.save_dub); None: the generated video's BT.709 tags
        # checks the destination (nothing is created yet); a number another run took meanwhile is never replaced
        self.writer = Mp4Writer(self.path, self.fps, samples, rate, color=color, next_name=self._next_name)
        self.preview = FramePreview()

    def _next_name(self):
        """The next free number for the prefix (the run that took this one has published its file by now)."""
        prefix, width, height = self._name
        self.path, self.entry = C.save_path(prefix, "mp4", width, height)
        return self.path

    def window(self, start: int, frames) -> None:
        """``frame_sink(start, frames)``: encode them and keep what the preview wants; nothing else stays."""
        C.check_interrupt()  # Cancel between two blocks (the progress bar raises it while sampling)
        self.writer.sink(start, frames)
        self.preview.take(start, frames)

    def block(self, frames) -> None:
        """The next block of frames, in order."""
        self.window(self.writer.frames_written, frames)

    def write(self, run) -> dict:
        """``run()`` streams the frames into :meth:`window` / :meth:`block`; the file is published only if it
        returns (Mp4Writer removes its temporary file on any exception, Cancel included)."""
        with self.writer:
            run()
            path = self.writer.commit()
        return {"ui": {"images": [self.entry], "animated": (True,)},
                "result": (str(path), self.fps, self.preview.image())}


class EchoMimicSamplerToFile(EchoMimicSampler):
    OUTPUT_NODE = True
    OUTPUTS = OUTPUTS
    DESCRIPTION = ("EchoMimic Sampler writing the video straight to an mp4 (H.264 + the audio) in ComfyUI's output "
                   "folder, window by window: memory does not grow with the video's length (long videos).")

    @classmethod
    def inputs(cls):
        return {**super().inputs(), "filename_prefix": prefix_input("echomimic/video")}

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None, context_frames=None, context_overlap=None, deep_cache=None,
                        deep_cache_branch=None, filename_prefix=None, resumable=None):
        problem = filename_prefix is not None and C.prefix_problem(filename_prefix)
        return problem or super().VALIDATE_INPUTS(width, height, context_frames, context_overlap, deep_cache,
                                                  deep_cache_branch, resumable)

    def execute(self, model, reference, audio_features, seed, steps, cfg, width, height, length, context_frames,
                context_overlap, filename_prefix, mask=None, landmarks=None, poses=None, cuda_graphs=False, deep_cache=0,
                deep_cache_branch=0, resumable=False):
        video = VideoFile(filename_prefix, *output_size(reference, width, height), audio_features.fps, audio_features.audio)
        kept = []  # resumable: the state goes once the mp4 is committed, not before
        out = video.write(lambda: sample(model, reference, audio_features, seed, steps, cfg, width, height, length,
                                         context_frames, context_overlap, mask, landmarks, poses, cuda_graphs, deep_cache,
                                         deep_cache_branch, frame_sink=video.window, resumable=bool(resumable),
                                         deferred=kept))
        for state in kept:
            state.discard()
        return out


@checks_links
class EchoMimicV3SamplerToFile(EchoMimicV3Sampler):
    OUTPUT_NODE = True
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = (tuple(column) for column in zip(*OUTPUTS))
    DESCRIPTION = ("EchoMimic V3 Sampler writing the video straight to an mp4 (H.264 + the audio) in ComfyUI's output "
                   "folder, chunk by chunk: memory does not grow with the video's length (long speech).")

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        spec["required"]["filename_prefix"] = prefix_input("echomimic/v3")
        return spec

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        return (filename_prefix is not None and C.prefix_problem(filename_prefix)) or True

    def execute(self, model, v3_audio, positive, clip_vision_output, vae, image, size, steps, audio_cfg, seed, teacache,
                color_transfer, filename_prefix, long_mode="reanchor"):
        from .v3 import checked_reference

        _, h, w = checked_reference(image, size, steps, audio_cfg, teacache, long_mode)
        video = VideoFile(filename_prefix, w, h, 25.0, v3_audio.audio)
        return video.write(lambda: self.sample(model, v3_audio, positive, clip_vision_output, vae, image, size, steps,
                                               audio_cfg, seed, teacache, color_transfer, long_mode, sink=video.block))
