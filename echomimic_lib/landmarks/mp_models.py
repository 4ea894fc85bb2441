"""MediaPipe model files: find them in a models folder, or download them once from Google.

Two files are used: the FaceLandmarker bundle (``face_landmarker_v2_with_blendshapes.task``, also
published as ``face_landmarker.task``) and the BlazeFace short-range detector
(``blaze_face_short_range.tflite``). Downloads go to a temporary name inside the target folder and
are renamed into place only when complete and valid, so an interrupted download never leaves a
broken model behind. MediaPipe itself is imported lazily (:func:`import_mediapipe`).
"""
from __future__ import annotations

import logging
import os
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterable

from ..errors import EchoMimicError, MissingWeightsError

log = logging.getLogger(__name__)

MODELS = {
    "face_landmarker": {
        "names": ("face_landmarker_v2_with_blendshapes.task", "face_landmarker.task"),
        "url": "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/latest/face_landmarker.task",
        "save_as": "face_landmarker.task",
    },
    "face_detector": {
        "names": ("blaze_face_short_range.tflite",),
        "url": "https://storage.googleapis.com/mediapipe-models/face_detector/blaze_face_short_range/float16/latest/blaze_face_short_range.tflite",
        "save_as": "blaze_face_short_range.tflite",
    },
}
SUBFOLDERS = ("", "mediapipe", "mp_models")


def import_mediapipe():
    """Import MediaPipe's Tasks API lazily, with an install hint if it is missing."""
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions
        from mediapipe.tasks.python.vision import face_detector, face_landmarker
    except ImportError as exc:
        raise EchoMimicError(
            "MediaPipe (Tasks API) is needed for face landmarks and face boxes: install it with "
            "'pip install mediapipe' (version 0.10.14 or newer).") from exc
    return mp, BaseOptions, face_landmarker, face_detector


def _folders(models_dir) -> list[Path]:
    if models_dir is None:
        return []
    dirs = [models_dir] if isinstance(models_dir, (str, os.PathLike)) else list(models_dir)
    return [Path(d) for d in dirs]


def _valid(kind: str, path: Path) -> bool:
    try:
        if path.stat().st_size < 1024:
            return False
        if kind == "face_landmarker":
            with zipfile.ZipFile(path) as zf:
                return "face_landmarks_detector.tflite" in zf.namelist()
        with open(path, "rb") as fh:
            return fh.read(8)[4:8] == b"TFL3"
    except (OSError, zipfile.BadZipFile):
        return False


def resolve_model(kind: str, model_path: str | os.PathLike | None = None,
                  models_dir: str | os.PathLike | Iterable | None = None, download: bool = False) -> Path:
    """Path of a MediaPipe model file.

    Order: ``model_path`` if given (must exist); else the known file names in each of
    ``models_dir`` (and its ``mediapipe/`` subfolder); else, with ``download=True``, a one-time
    download from Google's official URL into the first ``models_dir``.
    """
    if kind not in MODELS:
        raise EchoMimicError(f"unknown MediaPipe model '{kind}'; expected one of {', '.join(MODELS)}.")
    spec = MODELS[kind]
    if model_path is not None:
        p = Path(model_path)
        if not p.is_file():
            raise MissingWeightsError(f"MediaPipe {kind} model not found at {p}.", [str(p)])
        if not _valid(kind, p):
            raise EchoMimicError(f"{p}: not a valid MediaPipe {kind} model file; download it again from {spec['url']}.")
        return p
    looked = []
    for folder in _folders(models_dir):
        for sub in SUBFOLDERS:
            for name in spec["names"]:
                p = folder / sub / name if sub else folder / name
                looked.append(str(p))
                if p.is_file() and _valid(kind, p):
                    return p
    folders = _folders(models_dir)
    if download and folders:
        return download_model(kind, folders[0])
    where = ", ".join(looked) if looked else "(no models folder given)"
    raise MissingWeightsError(
        f"MediaPipe {kind} model not found; looked at: {where}. Put '{spec['names'][0]}' in your models "
        f"folder, or allow the one-time download from {spec['url']}.", looked)


def download_model(kind: str, dest_dir: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Download a MediaPipe model into ``dest_dir`` atomically; returns the final path."""
    spec = MODELS[kind]
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / spec["save_as"]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec['save_as']}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    log.info("downloading MediaPipe %s model from %s", kind, spec["url"])
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec["url"], timeout=timeout) as resp:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
        if not _valid(kind, tmp):
            raise EchoMimicError(f"the file downloaded from {spec['url']} is not a valid {kind} model; try again "
                                 f"or download it by hand into {dest_dir}.")
        os.replace(tmp, final)
    except EchoMimicError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise EchoMimicError(f"could not download the MediaPipe {kind} model from {spec['url']} ({exc}); download "
                             f"it by hand and put it in {dest_dir} as '{spec['save_as']}'.") from exc
    return final
