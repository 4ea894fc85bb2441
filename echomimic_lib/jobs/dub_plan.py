"""Planning a video dub: which source frame drives each generated frame, which frames make up the output,
and the one crop for the clip. Shared by ``echomimic dub`` and the ComfyUI dubbing graph (EchoMimic Face
Track -> Sampler -> Paste Back), so both give the same result.

Time bases: the source video runs at ``src_fps``, the model at ``model_fps`` (24 for V1). The output keeps
the source's frame rate and lasts as long as the new audio (``n_out`` frames):

- ``source[j]``: the source frame under output frame ``j`` - the retime policy applied at the source rate
  (:func:`echomimic_lib.retime.retime_indices`: ping-pong by default when the audio outlasts the video; a
  shorter audio simply cuts it);
- ``generated[j] = round(j * model_fps / src_fps)``: the generated frame pasted onto it;
- ``driving[k] = source[round(k * src_fps / model_fps)]``: the source frame whose landmarks drive generated
  frame ``k``, i.e. the frame shown at that moment. Driving and background therefore never drift apart:
  they differ by at most one source frame when the rates differ, and not at all when they agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._lazy import cv2
from ..frames.crop import CropGeometry
from ..errors import EchoMimicError
from ..frames.reference import v1_face_region
from ..retime import retime_indices


MIN_SOURCE_FRAMES = 8  # a third of a second at 24 fps: less is a picture (or a flash), not a video to dub


def check_source_frames(n: int, what: str) -> None:
    """Refuse a dub source of fewer than :data:`MIN_SOURCE_FRAMES` frames (a still picture is one frame): a picture
    is animated from, not dubbed (``echomimic animate --reference``; in ComfyUI, EchoMimic Reference Prep)."""
    if n >= MIN_SOURCE_FRAMES:
        return
    kind = "a still picture (1 frame)" if n == 1 else f"only {n} frame{'s' if n != 1 else ''} long"
    raise EchoMimicError(f"{what} is {kind}: a dub needs a video of at least {MIN_SOURCE_FRAMES} frames, whose face it "
                         "re-animates. To make a still picture speak, use `echomimic animate --reference PICTURE --audio "
                         "SPEECH` (in ComfyUI: EchoMimic Reference Preparation, not Face Track).")


MIN_SOURCE_FPS = 5.0  # fewer frames a second are a slideshow or a timelapse: lips at that rate do not speak


def check_source_rate(fps: float, what: str) -> None:
    """Refuse a dub source whose frames come fewer than :data:`MIN_SOURCE_FPS` a second (the output keeps its rate):
    a slideshow, a timelapse, or a podcast's still picture stored as a video."""
    if fps >= MIN_SOURCE_FPS:
        return
    raise EchoMimicError(f"{what} runs at {fps:.3g} frames a second (a slideshow or timelapse, not a recording of someone "
                         f"speaking); the dub keeps the source's frame rate and needs at least {MIN_SOURCE_FPS:g}. Give the "
                         "recording itself, or, to make a still picture speak, `echomimic animate --reference PICTURE "
                         "--audio SPEECH`.")


@dataclass
class DubSchedule:
    driving: np.ndarray    # (n_model,) source frame driving each generated frame
    source: np.ndarray     # (n_out,) source frame under each output frame
    generated: np.ndarray  # (n_out,) generated frame pasted onto each output frame
    src_fps: float
    model_fps: float

    def for_generated(self, n_generated: int) -> "DubSchedule":
        """The output frames whose generated frame exists (when fewer frames were generated than planned)."""
        if n_generated < 1:
            raise EchoMimicError("no frames were generated.")
        keep = self.generated < n_generated
        return DubSchedule(self.driving[:n_generated], self.source[keep], self.generated[keep], self.src_fps, self.model_fps)

    @property
    def frames_needed(self) -> int:
        """Source frames 0 .. frames_needed-1 are used."""
        return int(max(self.source.max(initial=0), self.driving.max(initial=0))) + 1


def make_schedule(n_src: int, src_fps: float, n_model: int, model_fps: float, n_out: int,
                  policy: str = "ping-pong") -> DubSchedule:
    """See the module docstring."""
    if n_src < 1 or n_model < 1 or n_out < 1:
        raise EchoMimicError(f"a dub needs source, generated and output frames (got {n_src}, {n_model}, {n_out}).")
    if not (src_fps > 0 and model_fps > 0):
        raise EchoMimicError(f"frame rates must be positive (source {src_fps}, model {model_fps}).")
    ratio = float(src_fps) / float(model_fps)
    source = retime_indices(int(n_src), int(n_out), policy)
    # generated frames after the output's end (never shown) hold its last source frame
    drive_at = np.minimum(np.floor(np.arange(n_model) * ratio + 0.5).astype(np.int64), n_out - 1)
    generated = np.minimum(np.floor(np.arange(n_out) / ratio + 0.5).astype(np.int64), n_model - 1)
    return DubSchedule(source[drive_at], source, generated, float(src_fps), float(model_fps))


@dataclass(eq=False)
class DubPlan:
    """Everything between tracking and paste-back (in ComfyUI it travels on the ECHOMIMIC_CROP socket)."""

    geometry: CropGeometry                 # the one crop of the clip (kind ``video_face``)
    track: object                          # echomimic_lib.frames.tracking.FaceTrack of frames 0..frames_needed-1
    schedule: DubSchedule
    reference_frame: int
    parts: frozenset | None = None

    @property
    def source_size(self) -> tuple[int, int]:
        return self.geometry.source_size

    def driving_pixels(self) -> np.ndarray:
        """(n_model, 478, 2) landmarks of the driving frames in output (crop) pixel coordinates."""
        return self.geometry.to_output(self.track.pixels[self.schedule.driving])

    def passthrough(self, schedule: DubSchedule | None = None) -> np.ndarray:
        """Output frames whose source frame has no face (copied unchanged)."""
        s = schedule or self.schedule
        return np.flatnonzero(~self.track.valid[s.source])


def plan_dub(frames, src_fps: float, n_model: int, model_fps: float, n_out: int, output_size: tuple[int, int],
             policy: str = "ping-pong", reference_frame: int | None = None, extractor=None, parts=None,
             landmark_sigma: float | None = None, box_sigma: float | None = None, **extractor_kwargs) -> DubPlan:
    """Schedule, track the frames it uses, choose the crop and the reference frame ((F, H, W, 3) frames in memory;
    :func:`plan_dub_stream` reads them from a file instead)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise EchoMimicError(f"the source video must be (F, H, W, 3) frames, got shape {frames.shape}.")
    return plan_dub_stream(lambda upto: frames[:upto], len(frames), src_fps, n_model, model_fps, n_out, output_size,
                           policy, reference_frame, extractor, parts, landmark_sigma, box_sigma, **extractor_kwargs)


def plan_dub_stream(read, n_src: int, src_fps: float, n_model: int, model_fps: float, n_out: int,
                    output_size: tuple[int, int], policy: str = "ping-pong", reference_frame: int | None = None,
                    extractor=None, parts=None, landmark_sigma: float | None = None, box_sigma: float | None = None,
                    **extractor_kwargs) -> DubPlan:
    """:func:`plan_dub` for a source of ``n_src`` frames that is read, not held: ``read(upto)`` gives its first ``upto``
    frames in order (e.g. ``lambda k: VideoFrames(path, k)``); they go to the face tracker as they come."""
    from ..frames import tracking

    n_src = int(n_src)
    if reference_frame is not None and not 0 <= int(reference_frame) < n_src:
        raise EchoMimicError(f"reference frame {reference_frame} does not exist: the video has frames 0..{n_src - 1}.")
    sched = make_schedule(n_src, src_fps, n_model, model_fps, n_out, policy)
    upto = max(sched.frames_needed, int(reference_frame) + 1 if reference_frame is not None else 0)
    kw = {k: v for k, v in (("landmark_sigma", landmark_sigma), ("box_sigma", box_sigma)) if v is not None}
    track = tracking.track_faces(read(upto), src_fps, extractor=extractor, **kw, **extractor_kwargs)
    if len(track) != upto:
        raise EchoMimicError(f"the source video gave {len(track)} frames where {upto} were counted; the file changed or "
                             "cannot be decoded the same way twice. Re-export it and try again.")
    geometry = track.clip_crop(output_size)
    if reference_frame is None:
        ref = track.reference_frame(geometry)
    else:
        ref = int(reference_frame)
        if not track.valid[ref]:
            raise EchoMimicError(f"reference frame {ref} has no detectable face; choose a frame that shows the face "
                                 "clearly (or leave the reference frame on automatic).")
    # the reference frame's face region and landmark hull (Paste Back's "face box" / "landmark hull" previews)
    face = v1_face_region(tuple(int(round(v)) for v in track.boxes[ref]), geometry.source_size)
    hull = cv2.convexHull(track.pixels[ref].astype(np.float32)).reshape(-1, 2).tolist()
    return DubPlan(geometry.with_face(face, hull), track, sched, ref, parts)


def reference_crop(plan: DubPlan, frames) -> np.ndarray:
    """The reference frame cut to the clip crop at the output size (uint8), like V1's face crop."""
    return crop_reference(plan, np.asarray(frames[plan.reference_frame]))


def crop_reference(plan: DubPlan, image) -> np.ndarray:
    """:func:`reference_crop` of the reference frame's picture itself (H, W, 3)."""
    x0, y0, x1, y1 = plan.geometry.box
    img = np.asarray(image)[y0:y1, x0:x1]
    return cv2.resize(img, plan.geometry.output_size, interpolation=cv2.INTER_LINEAR)
