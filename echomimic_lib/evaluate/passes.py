"""The metrics computed from the frames themselves (flicker, SyncNet LSE-C / LSE-D, ArcFace CSIM, FID, FVD), fed in
one pass over the clip's frames (and one over the real videos): each takes a frame at a time and keeps running sums,
per-frame scalars or features, or the few frames a network batch needs, so a video file streamed frame by frame
(:class:`~echomimic_lib.io.video_io.VideoFrames`) is scored in memory that does not grow with its length. In-memory
frames go through the same pass; the numbers are those of the whole-array functions (same batches, same order).

A metric whose weights fail to load, or whose network refuses the input, is left out with a note ``<label>: <why>``;
the others go on. An error of the frame source itself (a damaged video) is raised."""
from __future__ import annotations

import numpy as np

from ..errors import EchoMimicError
from ..io.video_io import VideoFrames
from .face import face_boxes, face_masks, five_points
from .stability import Flicker


class Metric:
    """One metric of the pass: ``add(k, frame)`` for frame ``k``, ``finish()`` after the last; an EchoMimicError of
    either leaves it out with the note ``<label>: <error>`` in its own ``notes``."""

    label = ""

    def __init__(self, rep, notes: list):
        self.rep, self.notes, self.failed = rep, notes, False

    def guard(self, fn, *args) -> None:
        if self.failed:
            return
        try:
            fn(*args)
        except EchoMimicError as exc:
            self.notes.append(f"{self.label}: {exc}")
            self.failed = True

    def add(self, k: int, frame: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass


def frame_pass(frames, metrics: list) -> int:
    """Feed every frame of ``frames`` (an array, or a re-iterable source decoded as it goes) to each metric, then finish
    them; the number of frames."""
    n = 0
    for k, frame in enumerate(frames):
        for m in metrics:
            m.guard(m.add, k, frame)
        n, frame = k + 1, None
    for m in metrics:
        m.guard(m.finish)
    return n


def first_frame(frames) -> np.ndarray:
    """The first frame (a stream decodes only that one)."""
    if isinstance(frames, np.ndarray):
        return frames[0]
    it = iter(frames)
    try:
        return next(it)
    finally:
        if hasattr(it, "close"):
            it.close()


class FlickerMetric(Metric):
    """Background flicker outside each frame's face region (the face mesh's hull, drawn per frame), or ``face_mask``
    ((H, W) or (F, H, W)), or the whole frame."""

    def __init__(self, rep, notes, px, size, face_mask=None):
        super().__init__(rep, notes)
        self.px, self.size, self.acc = px, size, Flicker()
        self.mask = None if face_mask is None or px is not None else np.asarray(face_mask, dtype=bool)

    def add(self, k, frame):
        if self.px is not None:
            mask = face_masks(self.px[k:k + 1], self.size)[0]
        elif self.mask is not None:
            mask = self.mask if self.mask.ndim == 2 else self.mask[k]
        else:
            mask = None
        self.acc.add(frame, mask)

    def finish(self):
        self.rep.flicker = self.acc.value if self.acc.pairs else None


class SyncNetMetric(Metric):
    """LSE-C / LSE-D: each 25-fps frame's face crop is cut as its source frame goes by, and SyncNet runs a batch of
    windows at a time (:class:`~.syncnet.LseFeed`)."""

    label = "LSE-C / LSE-D left out"

    def __init__(self, rep, notes, net, boxes, indices, wave16k, device):
        from .syncnet import FaceCropper, LseFeed

        super().__init__(rep, notes)
        self.cropper, self.indices, self.j = FaceCropper(boxes), np.asarray(indices), 0
        self.feed = LseFeed(net, len(self.indices), wave16k, device)

    def add(self, k, frame):
        while self.j < len(self.indices) and self.indices[self.j] == k:
            if self.j < self.feed.needed:
                self.feed.add(self.cropper.crop(self.j, frame))
            self.j += 1

    def finish(self):
        s = self.feed.result()
        self.rep.lse_c, self.rep.lse_d, self.rep.syncnet_av_offset = s.lse_c, s.lse_d, s.av_offset


def syncnet_metric(rep, clip, px, valid, learned, notes: list):
    if learned.syncnet is None:
        return None
    if clip.frames is None or px is None or clip.wave16k is None:
        notes.append("LSE-C / LSE-D need the video frames, face landmarks and audio.")
        return None
    from .syncnet import PROTOCOLS, SyncNet, frame_indices_25, load_syncnet, published_track_problem

    if learned.lse_protocol not in PROTOCOLS:
        raise EchoMimicError(f"LSE protocol must be one of {', '.join(PROTOCOLS)}; got {learned.lse_protocol!r}.")
    idx = frame_indices_25(clip.num_frames, clip.fps)
    boxes = face_boxes(px[idx])
    if learned.lse_protocol == "published":
        problem = published_track_problem(boxes, None if valid is None else np.asarray(valid)[idx])
        if problem:
            notes.append(f"LSE-C / LSE-D left out: {problem}")
            return None
        notes.append("LSE-C / LSE-D with the published protocol's track rules (> 100 frames at 25 fps, faces > 100 px, "
                     "gaps <= 25 frames); not matched: S3FD boxes (face-mesh boxes here), the JPEG / XVID re-encodes, "
                     "scene-cut splitting (docs/evaluation.md).")
    try:
        net = learned.syncnet if isinstance(learned.syncnet, SyncNet) else load_syncnet(learned.syncnet, learned.device)
        return SyncNetMetric(rep, notes, net, boxes, idx, clip.wave16k, learned.device)
    except EchoMimicError as exc:
        notes.append(f"LSE-C / LSE-D left out: {exc}")
        return None


class CsimMetric(Metric):
    label = "CSIM left out"

    def __init__(self, rep, notes, model, px, ref_image, ref_px):
        from .arcface import CsimFeed

        super().__init__(rep, notes)
        self.points = five_points(px)
        self.feed = CsimFeed(model, ref_image, five_points(ref_px))

    def add(self, k, frame):
        if k < len(self.points):
            self.feed.add(frame, self.points[k])

    def finish(self):
        self.rep.csim = self.feed.result()
        if self.rep.reference == "first frame":
            self.notes.append("CSIM compares with the first frame (give a reference image to compare with the portrait).")


def arcface_metric(rep, clip, px, ref_image, ref_px, learned, notes: list):
    """``ref_image`` None: the clip's first frame."""
    if learned.arcface is None:
        return None
    if clip.frames is None or px is None:
        notes.append("CSIM needs the video frames and face landmarks.")
        return None
    from .arcface import ArcFace

    try:
        model = learned.arcface if isinstance(learned.arcface, ArcFace) else ArcFace(learned.arcface, learned.onnx_providers)
        image = ref_image if ref_image is not None else first_frame(clip.frames)
        return CsimMetric(rep, notes, model, px, image, ref_px)
    except EchoMimicError as exc:
        notes.append(f"CSIM left out: {exc}")
        return None


class _RealComparison(Metric):
    """A distribution metric: ``feed(net, device)`` features of the clip's frames in the frame pass (``gen``) and of
    the real videos' in the real pass (``real``); :meth:`score` compares them."""

    def __init__(self, rep, notes, net, device):
        super().__init__(rep, notes)
        self.gen, self.real = self.feed(net, device), self.feed(net, device)

    @staticmethod
    def feed(net, device):
        raise NotImplementedError

    def add(self, k, frame):
        self.gen.add(frame)

    def add_real(self, frame):
        self.real.add(frame)

    def end_video(self):
        pass


class FidMetric(_RealComparison):
    """FID: Inception features of the frames (one per frame)."""

    label = "FID left out"

    @staticmethod
    def feed(net, device):
        from .fid import InceptionFeed

        return InceptionFeed(net, device)

    def score(self):
        from .fid import FEW_SAMPLES, check_sizes
        from .frechet import frechet_between

        check_sizes(self.gen.count, self.real.count)
        self.rep.fid = frechet_between(self.gen.features(), self.real.features())
        n, m = self.gen.count, self.real.count
        if min(m, n) < FEW_SAMPLES:
            self.notes.append(f"FID from {n} generated and {m} real frames: below {FEW_SAMPLES} frames it is biased "
                              "upwards; compare it only with FIDs of the same sizes, not with papers'.")


class FvdMetric(_RealComparison):
    """FVD: I3D features of 16-frame clips (a real video's last partial clip ends with it)."""

    label = "FVD left out"

    @staticmethod
    def feed(net, device):
        from .fvd import I3DFeed

        return I3DFeed(net, device)

    def end_video(self):
        self.real.end_video()

    def score(self):
        from .fvd import CLIP, check_sizes
        from .frechet import frechet_between

        check_sizes(self.gen.count, self.gen.frame_count, self.real.count, self.real.frame_count)
        self.rep.fvd = frechet_between(self.gen.features(), self.real.features())
        self.notes.append(f"FVD from {self.gen.count} generated and {self.real.count} real clips of {CLIP} frames: "
                          "small sets bias it upwards; compare it only with FVDs of the same sizes.")


def distribution_metrics(rep, clip, real, learned, fid_notes: list, fvd_notes: list) -> list:
    """The FID and FVD metrics whose weights are given (and load)."""
    if learned.inception is None and learned.i3d is None:
        return []
    if clip.frames is None or not real:
        fid_notes.append("FID / FVD need the video frames and real videos to compare with (--real VIDEO_OR_FOLDER).")
        return []
    from .i3d import I3D, load_i3d
    from .inception import InceptionV3, load_inception

    out = []
    if learned.inception is not None:
        try:
            net = learned.inception if isinstance(learned.inception, InceptionV3) else \
                load_inception(learned.inception, learned.inception_variant, learned.device)
            out.append(FidMetric(rep, fid_notes, net, learned.device))
        except EchoMimicError as exc:
            fid_notes.append(f"FID left out: {exc}")
    if learned.i3d is not None:
        try:
            net = learned.i3d if isinstance(learned.i3d, I3D) else load_i3d(learned.i3d, learned.device)
            out.append(FvdMetric(rep, fvd_notes, net, learned.device))
        except EchoMimicError as exc:
            fvd_notes.append(f"FVD left out: {exc}")
    return out


def score_against_real(metrics: list, real) -> None:
    """One pass over the real videos (arrays, or streamed :class:`VideoFrames`) for the FID / FVD metrics still in,
    then their scores."""
    live = [m for m in metrics if not m.failed]
    if not live:
        return
    for video in real:
        for frame in (video if isinstance(video, VideoFrames) else np.asarray(video)):
            for m in live:
                m.guard(m.add_real, frame)
            frame = None
        for m in live:
            m.guard(m.end_video)
    for m in live:
        m.guard(m.score)
