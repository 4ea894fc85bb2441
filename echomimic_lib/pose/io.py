"""Reading and writing hand-pose sequences.

Released format (EchoMimicV2 ``assets/halfbody_demo/pose/<name>/``): a folder of ``<N>.npy`` files, one per
frame, each a 0-d object array holding a dict::

    bodies            {candidate (18n, 2), subset (n, 18), score (n, 18)}
    hands (2n, 21, 2) rows 0..n-1 = left hands, n..2n-1 = right hands; normalised to the crop
    hands_score (2n, 21), faces (n, 68, 2), faces_score (n, 68)
    num               frame number (optional here)
    draw_pose_params  [imh, imw, row_begin, row_end, col_begin, col_end]
    stabilized        the --stabilize level, in every frame (optional: written by ``echomimic poses --stabilize``)

Files are read through the allow-list unpickler (:func:`echomimic_lib.io.safe_pickle.load_npy`), never with
numpy's free unpickling: a file that would build anything but arrays/dicts/lists/numbers is refused and named.
Frames are ordered by their number (0, 1, 2, ..., 10), files whose name is not ``<number>.npy`` (``.DS_Store``,
notes) are skipped, gaps in the numbering are reported. When a frame holds several people the one with the
highest mean body score is kept (V2 animates one person).

Our own format is a single ``.npz`` of plain arrays (loaded with ``allow_pickle=False``): see
:func:`save_pose_npz` / :func:`load_pose_npz`; :func:`convert_released_folder` converts a released folder.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError, UnsafeFileError
from ..io.file_safety import publish, publish_all, temp_beside
from ..io.json_file import loads_json
from ..io.json_meta import meta_json
from ..io.npz_file import open_npz
from ..io.os_errors import not_file_text, writing
from ..io.safe_pickle import load_npy
from ..temporal import saved_stabilized
from .sequence import ARRAY_FIELDS, DEFAULT_CANVAS, DEFAULT_FPS, PoseSequence, check_draw_pose_params

log = logging.getLogger(__name__)

FORMAT_NAME = "echomimic-pose-sequence"
FORMAT_VERSION = 1
_FRAME_NAME = re.compile(r"^(\d+)\.npy$")
REQUIRED_KEYS = ("bodies", "hands", "hands_score", "faces", "faces_score", "draw_pose_params")
REQUIRED_BODY_KEYS = ("candidate", "subset", "score")
NAN_POLICIES = ("hide", "error")
POSE_FIX = "write it again with `echomimic poses VIDEO -o FILE.npz`"
GAP_POLICIES = ("warn", "error")


@dataclass
class PoseLoadReport:
    """What the loader found besides the frames themselves."""

    folder: str
    n_frames: int = 0
    first_number: int | None = None
    last_number: int | None = None
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (first missing, last missing) number ranges
    skipped_files: list[str] = field(default_factory=list)
    nan_frames: list[int] = field(default_factory=list)  # frame numbers with NaN/Inf values (hidden)
    multi_person_frames: list[int] = field(default_factory=list)
    empty_frames: list[int] = field(default_factory=list)  # frames with no person (everything hidden)

    @property
    def missing_count(self) -> int:
        return sum(b - a + 1 for a, b in self.gaps)

    def summary(self) -> str:
        parts = [f"{self.n_frames} frames ({self.first_number}..{self.last_number})"]
        if self.gaps:
            parts.append(f"{self.missing_count} missing frame numbers: " + ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in self.gaps[:10]))
        if self.skipped_files:
            parts.append(f"skipped {len(self.skipped_files)} non-frame files ({', '.join(self.skipped_files[:5])})")
        if self.nan_frames:
            parts.append(f"NaN/Inf values hidden in {len(self.nan_frames)} frames (first: {self.nan_frames[:5]})")
        if self.multi_person_frames:
            parts.append(f"{len(self.multi_person_frames)} frames had several people (kept the most confident)")
        if self.empty_frames:
            parts.append(f"{len(self.empty_frames)} frames had no person")
        return f"{self.folder}: " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------- released
def list_frame_files(folder: str | Path) -> tuple[list[tuple[int, Path]], list[str]]:
    """(number, path) of the frame files sorted numerically, and the names of the skipped entries."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EchoMimicError(f"{folder}: pose folder not found (expected a folder of 0.npy, 1.npy, ... files).")
    frames, skipped, seen = [], [], {}
    for entry in sorted(folder.iterdir()):
        m = _FRAME_NAME.match(entry.name)
        if not m or not entry.is_file():
            skipped.append(entry.name)
            continue
        num = int(m.group(1))
        if num in seen:
            raise EchoMimicError(f"{folder}: '{seen[num]}' and '{entry.name}' are both frame {num}; remove one of them.")
        seen[num] = entry.name
        frames.append((num, entry))
    frames.sort(key=lambda t: t[0])
    return frames, skipped


def _arr(d: dict, key: str, where: str) -> np.ndarray:
    try:
        a = np.asarray(d[key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EchoMimicError(f"{where}: '{key}' is not numeric ({exc}).") from exc
    return a


def parse_released_frame(d, where: str, on_nan: str = "hide", canvas_size=(DEFAULT_CANVAS, DEFAULT_CANVAS)) -> tuple[dict, dict]:
    """Validate one released-format dict and return (single-person frame arrays, notes)."""
    if not isinstance(d, dict):
        raise EchoMimicError(f"{where}: expected a dict of pose arrays, found {type(d).__name__}. Is this an EchoMimicV2 pose file?")
    missing = [k for k in REQUIRED_KEYS if k not in d]
    bodies = d.get("bodies")
    if isinstance(bodies, dict):
        missing += [f"bodies.{k}" for k in REQUIRED_BODY_KEYS if k not in bodies]
    elif "bodies" in d:
        missing += [f"bodies.{k}" for k in REQUIRED_BODY_KEYS]
    if missing:
        raise EchoMimicError(
            f"{where}: missing keys {', '.join(missing)}. An EchoMimicV2 pose frame needs {', '.join(REQUIRED_KEYS)} "
            f"and bodies.{{{', '.join(REQUIRED_BODY_KEYS)}}}; re-extract the poses or fix the file."
        )
    cand = _arr(bodies, "candidate", where)
    subset = _arr(bodies, "subset", where)
    score = _arr(bodies, "score", where)
    hands, hands_score = _arr(d, "hands", where), _arr(d, "hands_score", where)
    faces, faces_score = _arr(d, "faces", where), _arr(d, "faces_score", where)
    subset = subset.reshape(-1, 18) if subset.size % 18 == 0 else subset
    n = subset.shape[0] if subset.ndim == 2 else -1
    expect = {
        "bodies.candidate": (cand, (18 * n, 2)),
        "bodies.subset": (subset, (n, 18)),
        "bodies.score": (score.reshape(-1, 18) if score.size % 18 == 0 else score, (n, 18)),
        "hands": (hands, (2 * n, 21, 2)),
        "hands_score": (hands_score, (2 * n, 21)),
        "faces": (faces, (n, 68, 2)),
        "faces_score": (faces_score, (n, 68)),
    }
    for key, (a, shape) in expect.items():
        if n < 0 or a.shape != shape:
            raise EchoMimicError(f"{where}: '{key}' has shape {a.shape}, expected {shape} for {max(n, 0)} person(s).")
    score = score.reshape(n, 18)
    try:
        params = np.asarray(d["draw_pose_params"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise EchoMimicError(f"{where}: draw_pose_params is not a list of 6 integers ({exc}).") from exc
    if params.shape != (6,) or not np.isfinite(params).all() or (params != np.round(params)).any():
        raise EchoMimicError(f"{where}: draw_pose_params must be 6 integers [imh, imw, rb, re, cb, ce], got {d['draw_pose_params']!r}.")
    notes = {"multi": n > 1, "empty": n == 0, "nan": False, "stabilized": d.get("stabilized")}
    if n == 0:  # nobody in this frame: keep a frame where nothing is drawn
        frame = _empty_frame()
    else:
        p = int(np.argmax(score.mean(axis=1))) if n > 1 else 0
        frame = {
            "body": cand[18 * p : 18 * p + 18],
            "body_score": score[p],
            "body_subset": np.where(subset[p] >= 0, subset[p] - 18 * p, -1.0),
            "hands": hands[[p, n + p]],
            "hands_score": hands_score[[p, n + p]],
            "faces": faces[p],
            "faces_score": faces_score[p],
        }
    frame["draw_pose_params"] = params.astype(np.int64)
    check_draw_pose_params(frame["draw_pose_params"], canvas_size, what=where)
    num = d.get("num")
    frame["frame_ids"] = np.int64(num) if isinstance(num, (int, np.integer)) else np.int64(-1)
    bad = [k for k in ("body", "body_score", "hands", "hands_score", "faces", "faces_score") if not np.isfinite(frame[k]).all()]
    if bad:
        if on_nan == "error":
            raise EchoMimicError(
                f"{where}: NaN/Inf values in {', '.join(bad)}. Fix the file, or load with on_nan='hide' to treat those points as not detected."
            )
        notes["nan"] = True
        frame = hide_nonfinite(frame)
    return frame, notes


def _empty_frame() -> dict:
    return {
        "body": np.full((18, 2), -1.0), "body_score": np.zeros(18), "body_subset": np.full(18, -1.0),
        "hands": np.full((2, 21, 2), -1.0), "hands_score": np.zeros((2, 21)),
        "faces": np.full((68, 2), -1.0), "faces_score": np.zeros(68),
    }


def hide_nonfinite(frame: dict) -> dict:
    """Points with a NaN/Inf coordinate or score become 'not detected': (-1, -1) with score 0 (never drawn)."""
    frame = {k: np.array(v, copy=True) for k, v in frame.items()}
    for pts, sc in (("body", "body_score"), ("hands", "hands_score"), ("faces", "faces_score")):
        bad = ~np.isfinite(frame[pts]).all(axis=-1) | ~np.isfinite(frame[sc])
        frame[pts][bad] = -1.0
        frame[sc][bad] = 0.0
        if pts == "body":
            frame["body_subset"][bad] = -1.0
    return frame


def load_released_folder(
    folder: str | Path,
    fps: float = DEFAULT_FPS,
    canvas_size: int | tuple[int, int] = DEFAULT_CANVAS,
    on_gap: str = "warn",
    on_nan: str = "hide",
) -> PoseSequence:
    """Load a released EchoMimicV2 pose folder. The :class:`PoseLoadReport` is in ``seq.report``.

    ``fps``: frame rate the poses were extracted at (the reference uses 24). ``canvas_size``: the canvas the
    draw_pose_params refer to (768 for the released demos). ``on_gap``: 'warn' (log + report, frames are
    used in order) or 'error'. ``on_nan``: 'hide' (NaN/Inf points become undetected, reported) or 'error'.
    """
    if on_gap not in GAP_POLICIES:
        raise EchoMimicError(f"on_gap must be one of {GAP_POLICIES}, got '{on_gap}'.")
    if on_nan not in NAN_POLICIES:
        raise EchoMimicError(f"on_nan must be one of {NAN_POLICIES}, got '{on_nan}'.")
    cs = (canvas_size, canvas_size) if isinstance(canvas_size, (int, np.integer)) else tuple(canvas_size)
    folder = Path(folder)
    files, skipped = list_frame_files(folder)
    if not files:
        raise EchoMimicError(
            f"{folder}: no pose frames found (expected files named 0.npy, 1.npy, ...; "
            f"found {len(skipped)} other entries{': ' + ', '.join(skipped[:5]) if skipped else ''})."
        )
    report = PoseLoadReport(str(folder), len(files), files[0][0], files[-1][0], skipped_files=skipped)
    nums = [n for n, _ in files]
    if nums[0] != 0:
        report.gaps.append((0, nums[0] - 1))
    report.gaps += [(a + 1, b - 1) for a, b in zip(nums[:-1], nums[1:]) if b - a > 1]
    if report.gaps:
        msg = f"{folder}: frame numbering has gaps ({report.summary()})"
        if on_gap == "error":
            raise EchoMimicError(msg + "; fill in the missing frames or load with on_gap='warn' to play the frames in order.")
        log.warning("%s; the frames are used in order.", msg)
    frames, levels = [], set()
    for num, path in files:
        frame, notes = parse_released_frame(load_npy(path), str(path), on_nan, cs)
        frame["frame_ids"] = np.int64(num)
        levels.add(saved_stabilized(notes["stabilized"], path))
        for key, lst in (("nan", report.nan_frames), ("multi", report.multi_person_frames), ("empty", report.empty_frames)):
            if notes[key]:
                lst.append(num)
        frames.append(frame)
    if report.nan_frames or report.multi_person_frames or report.empty_frames:
        log.warning("%s", report.summary())
    # steadied by `echomimic poses --stabilize` when every frame says so at one level (a mixed folder: as unsteadied)
    seq = PoseSequence.from_frames(frames, fps=fps, canvas_size=cs, source=str(folder),
                                   stabilized=levels.pop() if len(levels) == 1 else "off")
    seq.report = report
    return seq


def save_released_folder(seq: PoseSequence, folder: str | Path, overwrite: bool = False) -> Path:
    """Write ``0.npy .. N-1.npy`` in the released format (readable by the reference scripts)."""
    folder = Path(folder)
    if os.path.lexists(folder) and not folder.is_dir():
        raise EchoMimicError(f"{folder}: is a file, not a folder; choose a folder name for the pose frames.")
    if folder.exists() and any(folder.glob("*.npy")) and not overwrite:
        raise EchoMimicError(f"{folder}: already holds .npy files; choose an empty folder or pass overwrite=True.")
    folder.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []  # every frame written beside its name first, then all moved in together:
    try:  # a full disk at frame 50 (overwrite) left frames 0-49 new and 50-99 the earlier sequence's, one mixed motion
        for i in range(len(seq)):
            d = seq.frame_dict(i)
            d["num"] = i
            if seq.stabilized != "off":  # a key the reference's readers ignore; animate does not steady it twice
                d["stabilized"] = seq.stabilized
            holder = np.empty((), dtype=object)
            holder[()] = d
            staged.append((temp_beside(folder / f"{i}.npy", ".partial.npy"), folder / f"{i}.npy"))
            with writing(folder / f"{i}.npy"):  # a full disk names the frame's file, not the temporary one
                _write_object_npy(staged[-1][0], holder)
        publish_all(staged)  # (a failure part way puts the earlier frames back)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    for entry in list(folder.iterdir()):  # overwrite: the earlier sequence's frames past the new end go too (they
        m = _FRAME_NAME.match(entry.name)  # would play on after it)
        if m and int(m.group(1)) >= len(seq) and (entry.is_file() or entry.is_symlink()):
            entry.unlink()
    return folder


def _write_object_npy(path: Path, holder: np.ndarray) -> None:
    """Write a 0-d object array in the released .npy layout (header + pickled array), as numpy does.
    Writing only: reading always goes through the allow-list unpickler."""
    import pickle

    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(holder))
        pickle.dump(holder, fh, protocol=3)


# ---------------------------------------------------------------------------------------------- own format
def save_pose_npz(seq: PoseSequence, path: str | Path) -> Path:
    """Save a sequence as one ``.npz`` of plain arrays (no pickle)."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "fps": seq.fps, "canvas_size": list(seq.canvas_size), "source": seq.source}
    if seq.stabilized != "off":  # `echomimic poses --stabilize`: animate does not steady it twice
        meta["stabilized"] = seq.stabilized
    header = np.frombuffer(meta_json(meta, path).encode("utf-8"), dtype=np.uint8)  # checked before anything is written
    tmp = temp_beside(path, ".partial.npz")  # unique, beside a link's target (publish writes through the link)
    try:
        with writing(path):  # a full disk names the file asked for, not the temporary one removed below
            np.savez_compressed(tmp, meta=header, **{n: getattr(seq, n) for n in ARRAY_FIELDS})
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_pose_npz(path: str | Path) -> PoseSequence:
    """Load a sequence saved by :func:`save_pose_npz` (``allow_pickle=False``)."""
    path = Path(path)
    if problem := not_file_text(path, "pose file not found"):  # (a pipe or a device was "not found" too)
        raise EchoMimicError(f"{path}: {problem}; check the path, or write one with `echomimic poses VIDEO -o FILE.npz`.")
    try:
        with open_npz(path, "Write the pose sequence again with `echomimic poses VIDEO -o FILE.npz`.") as z:
            data = {k: z[k] for k in z.files}
    except EchoMimicError:
        raise
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise EchoMimicError(f"{path}: not a readable .npz file ({exc}).") from exc
        raise UnsafeFileError(f"{path}: holds pickled objects, which this format never contains; refusing to load it.") from exc
    except Exception as exc:
        raise EchoMimicError(f"{path}: not a readable .npz file ({exc}).") from exc
    try:  # meta fields or arrays of another kind under our names (text, a number for a list): not our file
        return _pose_from(data, path)
    except EchoMimicError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:  # (Overflow: 1e999 as int)
        raise EchoMimicError(f"{path}: not an EchoMimic pose sequence ({type(exc).__name__}: {exc}); write it again with "
                             "`echomimic poses VIDEO -o FILE.npz`.") from None


def _pose_from(data: dict, path: Path) -> PoseSequence:
    """The sequence of :func:`load_pose_npz`'s arrays (``data``: the archive's members, ``meta`` among them)."""
    if "meta" not in data:
        raise EchoMimicError(f"{path}: not an EchoMimic pose sequence (no 'meta' entry); {POSE_FIX}")
    meta = loads_json(bytes(data.pop("meta")), str(path), "not an EchoMimic pose sequence: its 'meta' entry is not "
                      "readable", POSE_FIX, EchoMimicError, expect=dict)
    if meta.get("format") != FORMAT_NAME:
        raise EchoMimicError(f"{path}: not an EchoMimic pose sequence (format '{meta.get('format')}').")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise EchoMimicError(f"{path}: pose format version {meta['version']} is newer than this code ({FORMAT_VERSION}); update the package.")
    missing = [n for n in ARRAY_FIELDS if n not in data]
    if missing:
        raise EchoMimicError(f"{path}: missing arrays {', '.join(missing)}.")
    arrays = {n: data[n] for n in ARRAY_FIELDS}
    fps, canvas = _saved_fps(meta.get("fps"), path), _saved_canvas(meta.get("canvas_size"), path)
    try:
        return PoseSequence(**arrays, fps=fps, canvas_size=canvas, source=meta.get("source", str(path)),
                            stabilized=saved_stabilized(meta.get("stabilized"), path))
    except EchoMimicError as exc:  # the sequence's own checks ("pose sequence field 'x' has shape ...") name no file
        if str(path) in str(exc):
            raise
        raise EchoMimicError(f"{path}: not an EchoMimic pose sequence ({str(exc).rstrip('.')}); {POSE_FIX}.") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # (JSON true is no 1)


def _saved_fps(fps, path: Path) -> float:
    """A pose .npz's frame rate: a positive finite number (``true`` loaded as 1 fps, ``"24"`` as 24; -2 was refused
    by the sequence without naming the file)."""
    if not (_is_number(fps) and 0 < fps < float("inf")):
        said = json.dumps(fps, default=str)[:40]  # (as the file has it: true, "24")
        raise EchoMimicError(f"{path}: not an EchoMimic pose sequence (its frame rate (fps) {said} is not a positive "
                             f"number); {POSE_FIX}.")
    return float(fps)


def _saved_canvas(canvas, path: Path) -> tuple[int, int]:
    """A pose .npz's canvas: two positive whole numbers of pixels (``[true, true]`` loaded as a 1x1 canvas)."""
    if not (isinstance(canvas, list) and len(canvas) == 2 and all(_is_number(v) and 1 <= v < float("inf") and v == int(v) for v in canvas)):
        said = json.dumps(canvas, default=str)[:40]
        raise EchoMimicError(f"{path}: not an EchoMimic pose sequence (its canvas_size {said} is not a width and height "
                             f"in pixels); {POSE_FIX}.")
    return int(canvas[0]), int(canvas[1])


def load_pose(path: str | Path, **kwargs) -> PoseSequence:
    """Load a released folder, our ``.npz``, or a single released ``.npy`` frame."""
    path = Path(path)
    if path.is_dir():
        return load_released_folder(path, **kwargs)
    if path.suffix == ".npz":
        return load_pose_npz(path)
    if path.suffix == ".npy" and (problem := not_file_text(path, "pose file not found")):  # (was "not a pose folder")
        raise EchoMimicError(f"{path}: {problem}; check the path, or give a released pose folder, a .npy frame or an "
                             "`echomimic poses` .npz.")
    if path.suffix == ".npy":
        on_nan = kwargs.get("on_nan", "hide")
        cs = kwargs.get("canvas_size", DEFAULT_CANVAS)
        cs = (cs, cs) if isinstance(cs, (int, np.integer)) else tuple(cs)
        frame, _ = parse_released_frame(load_npy(path), str(path), on_nan, cs)
        return PoseSequence.from_frames([frame], fps=kwargs.get("fps", DEFAULT_FPS), canvas_size=cs, source=str(path))
    raise EchoMimicError(f"{path}: not a pose folder, .npz sequence or .npy frame.")


def convert_released_folder(folder: str | Path, out_path: str | Path, **kwargs) -> tuple[Path, PoseLoadReport]:
    """Convert a released pose folder to one ``.npz``; returns the written path and the load report."""
    seq = load_released_folder(folder, **kwargs)
    return save_pose_npz(seq, out_path), seq.report
