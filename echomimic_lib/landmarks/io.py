"""Landmark files: V1 ``.pkl`` frame folders (read through the allow-list unpickler) and our own
plain formats (``.npz`` without pickles, or ``.json``) to save and reload a ``LandmarkSequence``.

V1 format: a folder of ``0.pkl, 1.pkl, ...``, each a pickled float64 (478, 3) array of pixel
coordinates in a 512x512 image (x, y, z*512); motion-sync outputs are (478, 2). A dict with an
``"lmks"`` array (an unreleased V1 variant) is accepted too. Frames are ordered by the number in the
file name (numeric, not lexicographic). A pickle that would construct anything outside numpy
arrays and plain containers is refused with :class:`UnsafeFileError` before it can run code.
"""
from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError
from ..io.file_safety import publish, temp_beside, write_text_atomic
from ..io.json_file import loads_json, read_json
from ..io.json_meta import meta_json, plain_meta
from ..io.npz_file import open_npz
from ..io.os_errors import not_file_text, writing
from ..io.safe_pickle import load_pickle
from ..temporal import saved_stabilized
from .sequence import LandmarkSequence

log = logging.getLogger(__name__)

FORMAT = "echomimic-landmarks"
FORMAT_VERSION = 1
SEQUENCE_SUFFIXES = (".npz", ".json")  # save_sequence's formats (``echomimic landmarks -o``; ``animate --landmarks``)
_ARRAYS = ("lmks", "lmks3d", "trans_mat", "blendshapes", "valid", "face_counts")
# The largest .json landmark file read or written: one frame at full float precision (478 landmarks, the 468-point mesh,
# its pose, 52 blendshapes) is about 67 KB, so ten minutes at 60 fps about 2.4 GB; past 4 GiB a file is not ours (a
# disk image renamed lmks.json), refused by its size before it is read. Longer sequences are saved as .npz.
MAX_JSON_BYTES = 4 << 30


def _frame_number(path: Path) -> int:
    m = re.search(r"(\d+)$", path.stem)
    if not m:
        raise EchoMimicError(f"{path}: landmark frame files must be named by frame number (0.pkl, 1.pkl, ...).")
    return int(m.group(1))


def load_pkl_frame(path: str | Path) -> np.ndarray:
    """One V1 landmark frame: float64 (N, 2|3) pixel coordinates."""
    obj = load_pickle(path)
    if isinstance(obj, dict):
        if "lmks" not in obj:
            raise EchoMimicError(f"{path}: a dict landmark frame needs an 'lmks' entry; found {sorted(obj)}.")
        obj = obj["lmks"]
    arr = np.asarray(obj)
    if arr.dtype == object or arr.ndim != 2 or arr.shape[1] not in (2, 3) or arr.shape[0] < 468:
        raise EchoMimicError(f"{path}: expected a (478, 2|3) landmark array, got {type(obj).__name__} "
                             f"with shape {getattr(arr, 'shape', None)}.")
    return arr.astype(np.float64)


def load_pkl_folder(folder: str | Path, image_size: tuple[int, int] = (512, 512), fps: float | None = None) -> LandmarkSequence:
    """Load a V1 landmark folder (``{i}.pkl`` in ``image_size`` pixel coordinates) as a sequence."""
    folder = Path(folder)
    if not folder.is_dir():
        problem = not_file_text(folder, "landmark folder not found") or "is a file, not a folder"
        raise EchoMimicError(f"{folder}: {problem.replace(', not a file', ', not a folder')}; give the folder of V1 .pkl "
                             "landmark frames (0.pkl, 1.pkl, ...).")
    files = sorted(folder.glob("*.pkl"), key=_frame_number)
    if not files:
        raise EchoMimicError(f"{folder}: no .pkl landmark frames found (expected 0.pkl, 1.pkl, ...).")
    numbers = [_frame_number(f) for f in files]
    if len(set(numbers)) != len(numbers):
        raise EchoMimicError(f"{folder}: several files share a frame number; keep one file per frame.")
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        log.warning("%s: frame numbers are not contiguous (%d..%d, %d files); using file order",
                    folder, numbers[0], numbers[-1], len(numbers))
    frames = [load_pkl_frame(f) for f in files]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise EchoMimicError(f"{folder}: landmark frames have different shapes {sorted(shapes)}.")
    return LandmarkSequence.from_pixels(np.stack(frames), image_size=image_size, fps=fps)


def _meta(seq: LandmarkSequence) -> dict:
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "image_size": list(seq.image_size),
            "policy": seq.policy, "fps": seq.fps, "blendshape_names": list(seq.blendshape_names)}
    if seq.stabilized != "off":  # `echomimic landmarks --stabilize`: animate does not steady them twice
        meta["stabilized"] = seq.stabilized
    return meta


def save_sequence(path: str | Path, seq: LandmarkSequence) -> Path:
    """Save to ``.npz`` (plain arrays + a JSON header, no pickles) or ``.json``, whole or not at all: through a unique
    temporary file beside ``path`` (a symlink there is written through; a folder, pipe or device is refused)."""
    path = Path(path)
    meta = plain_meta(_meta(seq), path)  # a value JSON cannot hold: a clear error here, before anything is written
    arrays = {k: getattr(seq, k) for k in _ARRAYS if getattr(seq, k) is not None}
    if path.suffix.lower() == ".json":
        doc = dict(meta, **{k: np.asarray(v).tolist() for k, v in arrays.items()})
        text = json.dumps(doc)  # (ASCII: its length is its size in bytes)
        if len(text) > MAX_JSON_BYTES:  # never write what load_sequence refuses
            raise EchoMimicError(f"{path}: {len(seq)} frames of landmarks are {len(text)} bytes as JSON, over the "
                                 f"{MAX_JSON_BYTES} bytes a landmark .json may be; save them as .npz instead (smaller, "
                                 "and read back as fast).")
        write_text_atomic(path, text)
    elif path.suffix.lower() == ".npz":
        tmp = temp_beside(path, ".partial.npz")
        try:
            with writing(path):  # a full disk names the file asked for, not the temporary one removed below
                np.savez_compressed(tmp, meta=np.array(meta_json(meta, path)), **arrays)
            publish(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        raise EchoMimicError(f"{path}: save landmarks as .npz or .json.")
    return path


def load_sequence(path: str | Path) -> LandmarkSequence:
    """Load a sequence saved by :func:`save_sequence` (never unpickles anything)."""
    path = Path(path)
    if problem := not_file_text(path, "landmark file not found"):  # (a pipe or a device was "not found" too)
        raise EchoMimicError(f"{path}: {problem}; check the path, or write one with `echomimic landmarks VIDEO -o "
                             "FILE.npz`.")
    not_ours = ("not a landmark file written by this package", "extract the landmarks again with `echomimic landmarks "
                "VIDEO -o FILE.npz`.")
    try:
        if path.suffix.lower() == ".json":
            if (size := path.stat().st_size) > MAX_JSON_BYTES:  # (a disk image renamed: read whole, the memory ran out)
                raise EchoMimicError(f"{path}: {size} bytes, over the {MAX_JSON_BYTES} bytes a landmark .json may be (ten "
                                     "minutes at 60 fps take about 2.4 GB), so it is not read; save long sequences as "
                                     ".npz (`echomimic landmarks VIDEO -o FILE.npz`).")
            doc = read_json(path, *not_ours, expect=dict, max_bytes=MAX_JSON_BYTES)  # (and one that grows while read)
            meta = doc
            arrays = {k: np.asarray(doc[k]) for k in _ARRAYS if k in doc}
        else:
            with open_npz(path, "Extract the landmarks again with `echomimic landmarks VIDEO -o FILE.npz`.") as z:
                meta = loads_json(str(z["meta"]), str(path), *not_ours, expect=dict)
                arrays = {k: z[k] for k in _ARRAYS if k in z.files}
    except EchoMimicError:
        raise
    except (ValueError, KeyError, OSError) as exc:
        raise EchoMimicError(f"{path}: not a landmark file written by this package ({exc}).") from exc
    if meta.get("format") != FORMAT:
        raise EchoMimicError(f"{path}: not an '{FORMAT}' file (format={meta.get('format')!r}).")
    if "lmks" not in arrays:
        raise EchoMimicError(f"{path}: the file has no 'lmks' array.")
    fps = meta.get("fps")  # (a text or a list reached animate's frame-rate check as a TypeError traceback)
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < float("inf")):
        raise EchoMimicError(f"{path}: its frame rate (fps) {str(fps)[:40]!r} is not a positive number: not a landmark "
                             "file written by this package; extract the landmarks again with `echomimic landmarks VIDEO "
                             "-o FILE.npz`.")
    try:  # members of another kind under our names (text, a string array, a zip's other files): not our file
        if "valid" in arrays:
            arrays["valid"] = arrays["valid"].astype(bool)
        if "blendshapes" in arrays:
            arrays["blendshapes"] = arrays["blendshapes"].astype(np.float32)
        seq = LandmarkSequence(image_size=tuple(meta.get("image_size", (512, 512))), policy=meta.get("policy", "fail"),
                               fps=fps, blendshape_names=list(meta.get("blendshape_names", [])),
                               stabilized=saved_stabilized(meta.get("stabilized"), path), **arrays)
        if min(seq.image_size) < 1:  # (the drawing's canvas and the retargeting divide by it)
            raise ValueError(f"image_size {seq.image_size} is not a width and height in pixels")
        return seq
    except EchoMimicError:
        raise
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:  # (Overflow: an image_size of 1e999 as int)
        raise EchoMimicError(f"{path}: not a landmark file written by this package ({exc}); extract the landmarks again "
                             "with `echomimic landmarks VIDEO -o FILE.npz`.") from None


def is_sequence_file(path) -> bool:
    """A saved landmark sequence by its name (``.npz`` / ``.json``), as ``--landmarks`` tells it from a video."""
    return Path(path).suffix.lower() in SEQUENCE_SUFFIXES and not Path(path).is_dir()


def load_driver_sequence(path, flag: str = "--landmarks") -> LandmarkSequence:
    """A sequence saved by ``echomimic landmarks`` that can drive the V1 landmark modes: it loads, has frames, and
    keeps the mesh and pose that motion sync retargets (pixel-only sequences cannot be)."""
    try:
        seq = load_sequence(path)
    except (EchoMimicError, TypeError, AttributeError, zipfile.BadZipFile) as exc:  # a JSON list, a damaged zip
        what = exc if isinstance(exc, EchoMimicError) else f"{path}: not a landmark file written by this package ({exc})."
        fix = "" if "`echomimic landmarks" in str(what) else f" Write one with `echomimic landmarks VIDEO -o {Path(path).name}`."
        raise EchoMimicError(f"{flag}: {what}{fix}") from None  # (one fix, not the reader's and then this one)
    if len(seq) == 0:
        raise EchoMimicError(f"{flag} {path}: the landmark file has no frames; extract it again from a driving video.")
    if seq.lmks3d is None or seq.trans_mat is None:
        raise EchoMimicError(f"{flag} {path}: these landmarks have no face mesh and pose (pixel-only, e.g. from .pkl frames), "
                             "so they cannot be retargeted onto the reference; extract them from the driving video with "
                             "`echomimic landmarks VIDEO -o FILE.npz`, or pass the .pkl folder itself.")
    if seq.fps is not None and not (np.isfinite(seq.fps) and seq.fps > 0):
        raise EchoMimicError(f"{flag} {path}: the file's frame rate {seq.fps!r} is not a positive number; extract it again.")
    return seq
