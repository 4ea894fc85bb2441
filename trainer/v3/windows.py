"""The samples of an EchoMimicV3 LoRA run: fixed windows of ``data.frames`` frames cut from prepared clips.

The clips are the V1/V2 trainer's (``echomimic-train prepare``: JPEG frames, 16 kHz audio, ``manifest.jsonl``), prepared
at 25 fps, the rate EchoMimicV3 animates at (its audio features are per 25-fps frame). A window's first frame is the
reference, as at inference (the release animates from the reference as frame 0); its audio is the window's own speech.
Pose-driven clips (``--kind pose``: no speech) train with silent audio. Windows are fixed (every ``data.stride`` frames),
so each is encoded once (:mod:`.encode`) and a resumed run sees the same samples.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echomimic_lib.io.json_file import read_json

from ..config import ConfigError
from ..data.store import CLIP_META, ClipReader, check_clips_present, damaged, read_manifest
from .config import V3Data

log = logging.getLogger(__name__)
FPS = 25.0


@dataclass(frozen=True)
class Window:
    clip_dir: Path
    clip_id: str
    start: int
    frames: int
    prompt: str
    silent: bool = False  # a pose-driven clip: its audio is never used


def read_captions(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    p = Path(path)
    data = read_json(p, "not a JSON file", 'write {"clip id": "caption", ...}', ConfigError,
                     missing=f"data.captions {p}: no such file", name=f"data.captions {p}")
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in data.items()):
        raise ConfigError(f"data.captions {p}: expected a JSON object of clip id -> non-empty caption text")
    return data


def clip_caption(entry, captions: dict[str, str], default: str) -> tuple[str, str | None]:
    """(caption, the ``data.captions`` key it came from): ``data.captions`` by clip id, source file name or stem; else a
    ``.txt`` beside the source video (the convention of Wan LoRA trainers); else ``data.prompt``."""
    meta_path = Path(entry.path) / CLIP_META
    text = None
    if meta_path.is_file():  # (a damaged one: named with the fix, before any network is built)
        text = read_json(meta_path, "unreadable", "written by prepare, then cut short or edited", name=CLIP_META,
                         error=lambda msg: damaged(entry.path, msg), expect=dict).get("source")
    source = Path(text) if isinstance(text, str) and text else None
    for key in (entry.id, *((source.name, source.stem) if source else ())):
        if key in captions:
            return captions[key], key
    side = source.with_suffix(".txt") if source else None
    if side is not None and side.is_file():
        text = side.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            return text, None
    return default, None


def list_windows(data: V3Data) -> list[Window]:
    """Every training window of ``data.roots``, in a fixed order; clear errors when nothing can be trained."""
    captions = read_captions(data.captions)
    stride = data.stride or data.frames
    out: list[Window] = []
    wrong_fps, short, used = [], [], set()
    for root in data.roots:
        entries = read_manifest(root)
        check_clips_present(entries)  # a clip folder gone: named now, not by a DataLoader worker
        for e in entries:
            if abs(e.fps - FPS) > 1e-3:
                wrong_fps.append(e)
                continue
            if e.num_frames < data.frames:
                short.append(e)
                continue
            prompt, key = clip_caption(e, captions, data.prompt)
            used.add(key)
            out.extend(Window(e.path, e.id, s, data.frames, prompt, e.kind == "pose")
                       for s in range(0, e.num_frames - data.frames + 1, stride))
    if wrong_fps:
        e = wrong_fps[0]
        raise ConfigError(f"{len(wrong_fps)} clip(s) were prepared at {e.fps:g} fps (e.g. {e.id} in {e.path.parent.parent}); "
                          "EchoMimicV3 animates at 25 fps: prepare them again with `echomimic-train prepare VIDEOS DATA --fps 25`")
    if not out:
        longest = max((e.num_frames for e in short), default=0)
        raise ConfigError(f"no clip has data.frames = {data.frames} frames (the longest has {longest}): lower data.frames "
                          "(4k+1, e.g. 33) or prepare longer clips")
    unknown = sorted(set(captions) - used)
    if unknown:
        log.warning("data.captions: %d caption(s) match no clip used for training (e.g. %r)", len(unknown), unknown[0])
    if short:
        log.warning("%d clip(s) shorter than data.frames = %d are not used (e.g. %s)", len(short), data.frames, short[0].id)
    return out


def fit_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop to the target aspect, then resize (area filter when shrinking): (height, width, 3) uint8."""
    import cv2

    h, w = frame.shape[:2]
    scale = min(w / width, h / height)
    cw, ch = round(width * scale), round(height * scale)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    crop = frame[y0:y0 + ch, x0:x0 + cw]
    interp = cv2.INTER_AREA if cw > width else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(crop, (width, height), interpolation=interp))


def window_pixels(win: Window, width: int, height: int) -> np.ndarray:
    """(frames, height, width, 3) uint8 frames of the window."""
    clip = ClipReader(win.clip_dir)
    return np.stack([fit_frame(clip.frame(i), width, height) for i in range(win.start, win.start + win.frames)])


def window_audio(win: Window) -> np.ndarray:
    """The window's 16 kHz speech, loudness-normalised and cut as the inference does (zeros for a silent clip)."""
    from echomimic_lib.audio.wav2vec import RATE, prepare_samples

    n = int(win.frames / FPS * RATE)
    if win.silent:
        return np.zeros(n, np.float32)
    wave = ClipReader(win.clip_dir).array("audio16k")
    a = int(round(win.start / FPS * RATE))
    part = np.asarray(wave[a:a + n], dtype=np.float32)
    if part.shape[0] < n:  # the stored audio is trimmed to the video: at most a few samples short at the end
        part = np.pad(part, (0, n - part.shape[0]))
    return prepare_samples(part, win.frames)
