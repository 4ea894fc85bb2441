"""MediaPipe model files: find them in a models folder, or download them once from Google.

Two files are used: the FaceLandmarker bundle ``face_landmarker.task`` (Google's published name, the
one the README, the help texts and the messages use; the copy the original EchoMimic release ships as
``face_landmarker_v2_with_blendshapes.task`` is found too) and the BlazeFace short-range detector
(``blaze_face_short_range.tflite``). Search order in each models folder: ``mediapipe/``, the folder
itself, ``mp_models/``. Downloads go to a temporary name inside the target folder and are renamed
into place only when complete and valid, so an interrupted download never leaves a broken model
behind. MediaPipe itself is imported lazily (:func:`import_mediapipe`); :func:`quiet_native_logs`
keeps its C++ (glog / TFLite) lines off the terminal unless debug logging is on.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterable

from ..errors import EchoMimicError, MissingWeightsError
from ..io.file_safety import publish

log = logging.getLogger(__name__)

MODELS = {
    "face_landmarker": {
        "names": ("face_landmarker.task", "face_landmarker_v2_with_blendshapes.task"),
        "url": "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/latest/face_landmarker.task",
        "save_as": "face_landmarker.task",
    },
    "face_detector": {
        "names": ("blaze_face_short_range.tflite",),
        "url": "https://storage.googleapis.com/mediapipe-models/face_detector/blaze_face_short_range/float16/latest/blaze_face_short_range.tflite",
        "save_as": "blaze_face_short_range.tflite",
    },
}
SUBFOLDERS = ("mediapipe", "", "mp_models")
_NATIVE_LOG = re.compile(r"^(?:[IWEF]\d{4} |WARNING: (?:Logging before InitGoogle|All log messages before absl)|INFO: Created TensorFlow Lite)")


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
    where = ", ".join(str(f / sub if sub else f) for f in folders for sub in SUBFOLDERS) or "(no models folder given)"
    into = f" into {folders[0] / SUBFOLDERS[0]}" if folders else ""
    raise MissingWeightsError(
        f"MediaPipe {kind} model '{spec['save_as']}' not found; looked at: {where}. Download it from {spec['url']}{into}, "
        "or allow the one-time download.", looked)


def download_model(kind: str, dest_dir: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Download a MediaPipe model into ``dest_dir`` atomically; returns the final path."""
    from ..io.fetch_plan import planned

    spec = MODELS[kind]
    dest_dir = Path(dest_dir)
    final = dest_dir / spec["save_as"]
    if planned(spec["save_as"], spec["url"], final):  # a dry run: said, never downloaded
        return final
    dest_dir.mkdir(parents=True, exist_ok=True)
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
        publish(tmp, final)  # the umask's mode, not mkstemp's 0600 (a shared models folder stays readable)
    except EchoMimicError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise EchoMimicError(f"could not download the MediaPipe {kind} model from {spec['url']} ({exc}); download "
                             f"it by hand and put it in {dest_dir} as '{spec['save_as']}'.") from exc
    return final


@contextlib.contextmanager
def quiet_native_logs():
    """Keep MediaPipe's / TFLite's C++ log lines (``W0000 ... face_landmarker_graph.cc``, ``INFO: Created
    TensorFlow Lite XNNPACK delegate``) off the terminal while MediaPipe runs inside the block.

    They are written straight to file descriptor 2, so Python's logging cannot filter them: the block
    sends fd 2 to a temporary file and afterwards replays every other line (Python warnings, messages)
    to the real stderr. With debug logging on (``-v``) nothing is touched."""
    if log.getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters)
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except ValueError:
                pass
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode("utf-8", "replace").splitlines(keepends=True) if not _NATIVE_LOG.match(line)]
            if kept:
                os.write(2, "".join(kept).encode())
