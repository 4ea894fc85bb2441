"""The parts of a dub that keep its memory bounded, whatever the video's length (:mod:`echomimic_lib.jobs.dub`).

- :class:`SourceWindow`: source frames by index, decoded from the file in order with only the last few held
  (:data:`WINDOW_BYTES`). The output walks the source in order (a cut, ``hold-last``, ``stretch``) or jumps back
  (``loop``, ``ping-pong`` once the audio outlasts the video): a jump back to a frame no longer held reads the
  window's worth of frames that end at it again, from the nearest keyframe before them (a seek,
  :meth:`echomimic_lib.io.video_io.VideoFrames.frames_from`), so a backward run decodes each frame about once plus
  one keyframe interval per window, whatever the video's length.
- :class:`GeneratedCrops`: the generated crops (uint8) as the sampler hands them over, in memory or in a temporary
  ``.npy`` file beside the output (tracked as a partial file, so an interrupt removes it; :meth:`close` always does).
- :func:`composite_frames`: each output frame composited as it is needed (paste-back, or the source frame itself
  where it shows no face), one at a time.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import EchoMimicError

WINDOW_BYTES = 1 << 30  # decoded source frames kept for frames used again (about 170 frames of 1080p)


class SourceWindow:
    """``get(i)``: source frame ``i``; ``open_frames(upto)`` iterates the first ``upto`` frames from the start. Where
    what it returns has ``frames_from(start)`` (a :class:`~echomimic_lib.io.video_io.VideoFrames`), it is opened once
    and a jump back reads from the window's first frame on (the file sought near it); else from the start."""

    def __init__(self, open_frames: Callable[[int], Iterable[np.ndarray]], upto: int, capacity: int):
        self.open_frames, self.upto, self.capacity = open_frames, int(upto), max(2, int(capacity))
        self.frames: OrderedDict[int, np.ndarray] = OrderedDict()
        self.decoded = 0  # frames read in all (a jump back reads some again)
        self._it: Iterator | None = None
        self._pos = 0
        self._source = None  # the opened frames_from source, kept for its keyframe index

    def get(self, i: int) -> np.ndarray:
        i = int(i)
        if i in self.frames:
            return self.frames[i]
        if not 0 <= i < self.upto:
            raise EchoMimicError(f"source frame {i} is outside the frames read (0..{self.upto - 1}).")
        if self._it is None or i < self._pos:  # read again: keep the window that ends at i
            self._restart(i)
        while self._pos <= i:
            frame = next(self._it, None)
            if frame is None:
                raise EchoMimicError(f"the source video ended after {self._pos} frames where {self.upto} were counted; "
                                     "the file changed or cannot be decoded the same way twice. Re-export it.")
            self.frames[self._pos] = frame
            self._pos += 1
            self.decoded += 1
            if len(self.frames) > self.capacity:
                self.frames.popitem(last=False)
        return self.frames[i]

    def _restart(self, i: int) -> None:
        self.close()
        source = self._source if self._source is not None else self.open_frames(self.upto)
        if hasattr(source, "frames_from"):
            self._source, self._pos = source, max(0, i - self.capacity + 1)
            self._it = iter(source.frames_from(self._pos))
        else:
            self._it, self._pos = iter(source), 0

    def close(self) -> None:
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()  # a VideoFrames generator closes its file
        self._it = None
        self.frames.clear()


def window_capacity(size: tuple[int, int], budget: int | None = None) -> int:
    """How many (width, height) RGB frames fit in ``budget`` bytes (default :data:`WINDOW_BYTES`); at least 2."""
    w, h = size
    return max(2, (WINDOW_BYTES if budget is None else budget) // max(1, w * h * 3))


class GeneratedCrops:
    """The sampler's ``frame_sink`` that keeps the generated crops (k, h, w, 3) in order; ``frames`` are those kept.
    With ``beside`` (the output path) they go to a temporary memory-mapped file in its folder."""

    def __init__(self, capacity: int, size: tuple[int, int], beside=None):
        from ..io.file_safety import temp_beside, track_partial

        w, h = size
        shape = (int(capacity), h, w, 3)
        self.path: Path | None = None
        self.count = 0
        if beside is None:
            self._store = np.empty(shape, np.uint8)
            return
        self.path = temp_beside(beside, suffix=".crops.npy")
        track_partial(self.path)
        try:
            self._store = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.uint8, shape=shape)
        except BaseException:
            self.close()
            raise

    def __call__(self, start, frames) -> None:
        import torch

        if isinstance(frames, torch.Tensor):
            frames = (frames.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
        k = len(frames)
        if self.count + k > len(self._store):
            raise EchoMimicError(f"the sampler gave {self.count + k} frames where {len(self._store)} were planned.")
        self._store[self.count:self.count + k] = frames
        self.count += k

    @property
    def frames(self) -> np.ndarray:
        return self._store[:self.count]

    def close(self) -> None:
        from ..io.file_safety import untrack_partial

        self._store = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            untrack_partial(self.path)
            self.path = None

    def __enter__(self) -> "GeneratedCrops":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def source_regions(plan, s: int) -> dict:
    """The paste-back regions of source frame ``s``: its landmark hull and its V1 face box."""
    from ..frames.reference import v1_face_region

    box = tuple(int(round(v)) for v in plan.track.boxes[s])
    return {"hull": plan.track.hull(s), "face_box": v1_face_region(box, plan.source_size)}


def composite_frame(plan, paster, s: int, generated_frame, source_frame) -> np.ndarray:
    """Output frame over source frame ``s``: the generated crop pasted back, or the source frame where it has no face."""
    if not plan.track.valid[s]:
        return source_frame
    return paster.frame(np.asarray(generated_frame), source_frame, **source_regions(plan, s))


def composite_frames(plan, schedule, generated, source: SourceWindow, paster,
                     check: Callable[[], None] | None = None) -> Iterator[np.ndarray]:
    """The output frames in order, each made when it is asked for (``check`` runs every 16 frames)."""
    for j, (s, g) in enumerate(zip(schedule.source, schedule.generated)):
        if check is not None and j % 16 == 15:
            check()
        yield composite_frame(plan, paster, int(s), generated[g], source.get(s))
