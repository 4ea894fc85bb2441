"""Streaming video decode at a fixed frame rate, and the scene-cut score.

Frames are decoded one at a time with PyAV (never the whole video in memory) and resampled to ``fps`` by
nearest timestamp: output frame ``k`` (time ``k / fps``) is the source frame whose time is closest. Frames are upright
as a player shows them (a phone's sideways-stored portrait clip is turned, :mod:`echomimic_lib.io.orientation`) and
a cover picture (an audio file's attached_pic stream) is no video.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

AUDIO_SIDECARS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".aac")
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")


def probe_video(path: str | Path) -> dict:
    """fps, frame size (as displayed), duration (s) and whether an audio stream exists; decodes the first frame only
    (for the display matrix)."""
    import av

    from echomimic_lib.io.video_io import displayed_size, video_stream

    with av.open(str(path)) as c:
        vs = video_stream(c, path, required=False)
        if vs is None:
            raise ValueError(f"{path}: no video stream")
        fps = float(vs.average_rate or vs.guessed_rate or 25)
        dur = None
        if vs.duration is not None and vs.time_base is not None:
            dur = float(vs.duration * vs.time_base)
        elif c.duration is not None:
            dur = c.duration / 1e6
        has_audio = bool(c.streams.audio)
        width, height = displayed_size(c, vs, str(path))
        return {"fps": fps, "width": width, "height": height, "seconds": dur, "has_audio": has_audio}


def iter_frames(path: str | Path, fps: float, max_side: int | None = None, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames resampled to ``fps`` (nearest source frame), optionally downscaled to ``max_side``."""
    import av
    import cv2

    from echomimic_lib.io.orientation import upright_rgb
    from echomimic_lib.io.video_io import video_stream

    step = 1.0 / float(fps)
    k = 0
    prev = None  # (time, frame)
    with av.open(str(path)) as c:
        vs = video_stream(c, path)
        src_fps = float(vs.average_rate or vs.guessed_rate or 25)
        t0 = None
        for i, frame in enumerate(c.decode(vs)):
            t = frame.time if frame.time is not None else i / src_fps
            t0 = t if t0 is None else t0
            t -= t0
            img = upright_rgb(frame, str(path))
            if max_side and max(img.shape[:2]) > max_side:
                s = max_side / max(img.shape[:2])
                img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))), interpolation=cv2.INTER_AREA)
            if prev is not None:
                mid = (prev[0] + t) / 2.0
                while k * step < mid:
                    yield prev[1]
                    k += 1
                    if max_frames is not None and k >= max_frames:
                        return
            prev = (t, img)
        if prev is not None:
            end = prev[0] + 0.5 / src_fps
            while k * step < end:
                yield prev[1]
                k += 1
                if max_frames is not None and k >= max_frames:
                    return


def scene_score(a_small_hsv: np.ndarray, b_small_hsv: np.ndarray) -> float:
    """PySceneDetect ContentDetector score: mean absolute HSV difference (0..255 scale) of two frames."""
    d = np.abs(a_small_hsv.astype(np.int16) - b_small_hsv.astype(np.int16))
    return float(d.reshape(-1, 3).mean(axis=0).mean())


def small_hsv(rgb: np.ndarray, size: int = 64) -> np.ndarray:
    import cv2

    small = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2HSV)


def find_audio(video: Path) -> Path | None:
    """A sidecar audio file with the video's stem (for silent videos), or None."""
    for suffix in AUDIO_SIDECARS:
        p = video.with_suffix(suffix)
        if p.is_file():
            return p
    return None
