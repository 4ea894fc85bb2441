"""What an evaluation reads: video frames and/or face landmarks, the audio as 16 kHz mono, the frame rate.

Sources: a video file (frames and, by default, its own audio track), a folder of V1 ``.pkl`` landmark frames
(read through the allow-list unpickler; coordinates of a 512 x 512 frame), or arrays (ComfyUI frames, the
trainer's rendered validation video). A video file's frames are not read into memory: the clip holds a
:class:`~echomimic_lib.io.video_io.VideoFrames`, decoded frame by frame each time the evaluation goes through them (a
variable frame rate video's frames placed by their timestamps on its rate's clock, :mod:`echomimic_lib.io.retime`).
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError
from ..io.retime import ClockedFrames
from ..io.video_io import VideoFrames, count_frames
from ..landmarks.sequence import LandmarkSequence

log = logging.getLogger(__name__)
PKL_FPS = 24.0  # V1 renders (and its landmark demos) run at 24 fps


@dataclass
class Clip:
    source: str
    fps: float
    wave16k: np.ndarray | None = None            # (T,) float32 mono 16 kHz, -1..1
    frames: np.ndarray | VideoFrames | None = None  # (F, H, W, 3) uint8 RGB, or a video file's frames (streamed)
    landmarks: LandmarkSequence | None = None    # given landmarks (else extracted from the frames)
    frame_count: int | None = field(default=None, repr=False)  # a streamed video's frame count, once known

    @property
    def num_frames(self) -> int:
        if isinstance(self.frames, VideoFrames):
            if self.frame_count is None:  # counted by a pass over the video (the evaluation's own pass sets it)
                if isinstance(self.frames, ClockedFrames):  # (a variable frame rate: its frames placed on a clock)
                    self.frame_count = self.frames.count()
                else:
                    self.frame_count = count_frames(self.frames.path, self.frames.max_frames or sys.maxsize)
            return self.frame_count
        if self.frames is not None:
            return len(self.frames)
        return len(self.landmarks) if self.landmarks is not None else 0

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the frames (or of the landmarks' coordinate frame)."""
        if isinstance(self.frames, VideoFrames):
            return tuple(int(v) for v in self.frames.size)
        if self.frames is not None:
            return int(self.frames.shape[2]), int(self.frames.shape[1])
        return self.landmarks.image_size if self.landmarks is not None else (0, 0)


def audio_16k(audio, sample_rate=None) -> np.ndarray:
    """Any audio the library accepts (file path, ComfyUI AUDIO, (C, T) array + rate) -> 16 kHz mono float32."""
    from ..audio.waveform import read_raw_audio

    return read_raw_audio(audio, sample_rate).mono_16k()


def _is_pkl_folder(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.pkl"))


def clip_from_arrays(frames=None, audio=None, sample_rate=None, fps: float = 24.0, landmarks=None,
                     source: str = "frames") -> Clip:
    """A clip from in-memory frames ((F, H, W, 3) uint8, or float in 0..1) and audio."""
    if frames is not None:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
            raise EchoMimicError(f"frames must be a non-empty (F, H, W, 3) array, got shape {frames.shape}.")
        if frames.dtype != np.uint8:
            frames = (np.clip(frames.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    wave = None if audio is None else audio_16k(audio, sample_rate)
    fps = float(fps)
    if not np.isfinite(fps) or fps <= 0:
        raise EchoMimicError(f"fps must be a positive number, got {fps!r}.")
    return Clip(source, fps, wave, frames, landmarks)


def load_clip(path: str | Path, audio=None, landmarks: str | Path | None = None, fps: float | None = None) -> Clip:
    """A clip from a video file or a V1 ``.pkl`` landmark folder.

    ``audio``: a separate audio file (default: the video's own track; required for a landmark folder).
    ``landmarks``: a ``.pkl`` folder to use instead of extracting landmarks from the video's frames.
    ``fps``: frame rate of a landmark folder (default 24; a video's own rate is used for a video)."""
    from ..landmarks.io import load_pkl_folder

    path = Path(path)
    if fps is not None:
        from ..modes import MAX_SOURCE_FPS, check_frame_rate

        fps = check_frame_rate(fps, "--fps", MAX_SOURCE_FPS)  # the words of every node and flag
    from ..io.os_errors import missing_text

    if not path.exists():
        raise EchoMimicError(f"{path}: {missing_text(path, 'not found')}; give a video file or a folder of V1 .pkl landmark "
                             "frames.")
    if audio is not None and not Path(audio).is_file():
        raise EchoMimicError(f"{audio}: {missing_text(audio, 'audio file not found')}.")
    if landmarks is not None and not _is_pkl_folder(Path(landmarks)):
        raise EchoMimicError(f"{landmarks}: not a folder of V1 .pkl landmark frames (0.pkl, 1.pkl, ...).")
    if path.is_dir():
        if not _is_pkl_folder(path):
            raise EchoMimicError(f"{path}: the folder has no .pkl landmark frames; give a video file or a V1 landmark folder.")
        if audio is None:
            raise EchoMimicError(f"{path}: a landmark folder has no sound; pass the clip's audio (--audio speech.wav).")
        rate = float(fps or PKL_FPS)
        return Clip(str(path), rate, audio_16k(audio), None, load_pkl_folder(path, fps=rate))
    from ..io.retime import on_clock
    from ..io.audio_file import read_audio

    frames = VideoFrames(path)  # the header only: a file without a video stream is refused here
    first = list(VideoFrames(path, max_frames=2))  # two frames decoded, not the whole video
    if len(first) < 2:
        raise EchoMimicError(f"{path}: a still image ({len(first)} frame), not a video; evaluate scores a video "
                             "(mp4, mov, webm ...) with its speech, or a folder of V1 .pkl landmark frames.")
    del first
    if audio is not None:
        wave = audio_16k(audio)
    elif frames.has_audio:  # from the header already read: no other open
        wave = audio_16k(*read_audio(path))
    else:
        wave = None
    rate = float(fps or frames.fps)
    if landmarks is None:  # (given landmarks are timed by --fps, not by the video's timestamps)
        frames = on_clock(frames, "the video", "they are scored against the speech as they were shown")
    lm = load_pkl_folder(landmarks, fps=rate) if landmarks is not None else None
    count = None
    if lm is not None:
        count = count_frames(path, sys.maxsize)
        if len(lm) != count:  # score the frames both cover
            n = min(len(lm), count)
            log.warning("%s has %d frames, %s %d landmark frames: scoring the first %d", path, count, landmarks, len(lm), n)
            lm, frames, count = lm.take(range(n)), VideoFrames(path, max_frames=n), n
    return Clip(str(path), rate, wave, frames, lm, count)
