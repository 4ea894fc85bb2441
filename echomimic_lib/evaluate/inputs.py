"""What an evaluation reads: video frames and/or face landmarks, the audio as 16 kHz mono, the frame rate.

Sources: a video file (frames and, by default, its own audio track), a folder of V1 ``.pkl`` landmark frames
(read through the allow-list unpickler; coordinates of a 512 x 512 frame), or arrays (ComfyUI frames, the
trainer's rendered validation video).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError
from ..landmarks.sequence import LandmarkSequence

log = logging.getLogger(__name__)
PKL_FPS = 24.0  # V1 renders (and its landmark demos) run at 24 fps


@dataclass
class Clip:
    source: str
    fps: float
    wave16k: np.ndarray | None = None            # (T,) float32 mono 16 kHz, -1..1
    frames: np.ndarray | None = None             # (F, H, W, 3) uint8 RGB
    landmarks: LandmarkSequence | None = None    # given landmarks (else extracted from the frames)

    @property
    def num_frames(self) -> int:
        if self.frames is not None:
            return len(self.frames)
        return len(self.landmarks) if self.landmarks is not None else 0

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the frames (or of the landmarks' coordinate frame)."""
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
    if fps is not None and not (np.isfinite(fps) and 1 <= fps <= 240):
        raise EchoMimicError(f"--fps {fps}: the frame rate must be a number between 1 and 240 (or leave it out: the video's).")
    if not path.exists():
        raise EchoMimicError(f"{path}: not found; give a video file or a folder of V1 .pkl landmark frames.")
    if audio is not None and not Path(audio).is_file():
        raise EchoMimicError(f"{audio}: audio file not found.")
    if landmarks is not None and not _is_pkl_folder(Path(landmarks)):
        raise EchoMimicError(f"{landmarks}: not a folder of V1 .pkl landmark frames (0.pkl, 1.pkl, ...).")
    if path.is_dir():
        if not _is_pkl_folder(path):
            raise EchoMimicError(f"{path}: the folder has no .pkl landmark frames; give a video file or a V1 landmark folder.")
        if audio is None:
            raise EchoMimicError(f"{path}: a landmark folder has no sound; pass the clip's audio (--audio speech.wav).")
        rate = float(fps or PKL_FPS)
        return Clip(str(path), rate, audio_16k(audio), None, load_pkl_folder(path, fps=rate))
    from ..io.video_io import read_video

    video = read_video(path, with_audio=audio is None)
    if len(video.frames) < 2:
        raise EchoMimicError(f"{path}: a still image ({len(video.frames)} frame), not a video; evaluate scores a video "
                             "(mp4, mov, webm ...) with its speech, or a folder of V1 .pkl landmark frames.")
    wave = audio_16k(audio) if audio is not None else (
        audio_16k(video.audio, video.sample_rate) if video.audio is not None else None)
    rate = float(fps or video.fps)
    frames = video.frames
    lm = load_pkl_folder(landmarks, fps=rate) if landmarks is not None else None
    if lm is not None and len(lm) != len(frames):  # score the frames both cover
        n = min(len(lm), len(frames))
        log.warning("%s has %d frames, %s %d landmark frames: scoring the first %d", path, len(frames), landmarks, len(lm), n)
        lm, frames = lm.take(range(n)), frames[:n]
    return Clip(str(path), rate, wave, frames, lm)
