"""Video and audio file I/O through PyAV (no ffmpeg binary, no temp files in the user's folders)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import EchoMimicError


@dataclass
class VideoClip:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    fps: float
    audio: np.ndarray | None = None  # (C, T) float32 in [-1, 1]
    sample_rate: int | None = None


def _open(path: str | Path):
    import av

    path = Path(path)
    if not path.is_file():
        raise EchoMimicError(f"{path}: file not found.")
    try:
        return av.open(str(path))
    except Exception as exc:
        raise EchoMimicError(f"{path}: cannot be opened as a media file ({exc}).") from exc


def read_video(path: str | Path, max_frames: int | None = None, with_audio: bool = True) -> VideoClip:
    """Decode all video frames (RGB uint8) and, if present, the audio track of a media file."""
    container = _open(path)
    try:
        vstreams = container.streams.video
        if not vstreams:
            raise EchoMimicError(f"{path}: the file has no video stream.")
        vs = vstreams[0]
        fps = float(vs.average_rate or vs.guessed_rate or 25)
        frames = []
        for frame in container.decode(vs):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    finally:
        container.close()
    if not frames:
        raise EchoMimicError(f"{path}: the video has no frames.")
    audio, sr = (read_audio(path) if with_audio else (None, None)) if _has_audio(path) else (None, None)
    return VideoClip(np.stack(frames), fps, audio, sr)


def _has_audio(path) -> bool:
    container = _open(path)
    try:
        return bool(container.streams.audio)
    finally:
        container.close()


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream to float32 (C, T) at its native sample rate."""
    import av

    container = _open(path)
    try:
        if not container.streams.audio:
            raise EchoMimicError(f"{path}: the file has no audio stream.")
        stream = container.streams.audio[0]
        sr = stream.rate or stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name if stream.layout else None, rate=sr)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    finally:
        container.close()
    if not chunks:
        raise EchoMimicError(f"{path}: the audio stream is empty.")
    return np.concatenate(chunks, axis=1).astype(np.float32), int(sr)


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    crf: int = 18,
) -> Path:
    """Write RGB frames (F, H, W, 3; uint8 or float in [0, 1]) as H.264 mp4, with AAC audio when given.

    The file is written next to its destination and renamed at the end, so a failure never leaves a
    partial file behind. Audio (C, T) float is trimmed to the video's duration.
    """
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise EchoMimicError(f"write_video: frames must be (F, H, W, 3), got {frames.shape}.")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    n, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2  # yuv420p needs even sizes
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            vs = container.add_stream("libx264", rate=rate)
            vs.width, vs.height = frames.shape[2], frames.shape[1]
            vs.pix_fmt = "yuv420p"
            vs.options = {"crf": str(crf)}
            astream = None
            if audio is not None:
                audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
                if not sample_rate:
                    raise EchoMimicError("write_video: audio given without a sample rate.")
                keep = int(round(n / float(fps) * sample_rate))
                audio = audio[:2, :keep]
                astream = container.add_stream("aac", rate=int(sample_rate))
                astream.layout = "stereo" if audio.shape[0] == 2 else "mono"
            for i in range(n):
                for packet in vs.encode(av.VideoFrame.from_ndarray(frames[i], format="rgb24")):
                    container.mux(packet)
            for packet in vs.encode():
                container.mux(packet)
            if astream is not None:
                _mux_audio(container, astream, audio, int(sample_rate))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _mux_audio(container, astream, audio: np.ndarray, sr: int) -> None:
    import av

    chunk = 1024
    pts = 0
    for start in range(0, audio.shape[1], chunk):
        block = np.ascontiguousarray(audio[:, start : start + chunk])
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=astream.layout.name)
        frame.sample_rate = sr
        frame.pts = pts
        pts += block.shape[1]
        for packet in astream.encode(frame):
            container.mux(packet)
    for packet in astream.encode():
        container.mux(packet)


def probe(path: str | Path) -> dict:
    """Frame count, fps and audio duration of a media file (used by tests and the CLI summary)."""
    container = _open(path)
    try:
        info = {"frames": 0, "fps": None, "audio_seconds": None, "width": None, "height": None}
        if container.streams.video:
            vs = container.streams.video[0]
            info["fps"] = float(vs.average_rate) if vs.average_rate else None
            info["width"], info["height"] = vs.codec_context.width, vs.codec_context.height
            info["frames"] = sum(1 for _ in container.decode(vs))
    finally:
        container.close()
    if _has_audio(path):
        wav, sr = read_audio(path)
        info["audio_seconds"] = wav.shape[1] / sr
    return info
