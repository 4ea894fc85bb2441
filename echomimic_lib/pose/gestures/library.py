"""A gesture library: V2 pose sequences cut into gesture units, with the features motion matching needs.

A *source* is one pose sequence (a released folder of ``0.npy, 1.npy, ...`` or our ``.npz``); a library path
may also be a folder *of* such sources (``models/echomimic/poses/``). Each source is cut into *units* at
natural boundaries: local minima of the smoothed hand speed, and the edges of frames where the person is not
visible. Per unit: duration, amplitude (peak hand speed), mean speed, stroke offset (the speed peak), hand
height, which hands move, start and end posture (shoulders, elbows, wrists relative to the neck), an 8-bin
speed profile, and whether it is a rest.

Speeds are in shoulder widths per second (comparable across sources and framings); heights in shoulder
widths below the neck (positive = lower).

The index (the stacked sequence + the unit table) is cached as one ``.npz`` of plain arrays, beside the
source (``.<name>.gestures.npz`` in its parent folder, a hidden name the pose lists skip) or, when that folder
is read-only, in ``$ECHOMIMIC_CACHE/gestures`` (default ``~/.cache/echomimic/gestures``). It is rebuilt when
the source's frame files change (names, sizes and modification times are fingerprinted).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import EchoMimicError
from ...io.file_safety import ExistingFileError, publish, temp_beside, track_partial, untrack_partial
from ...io.json_file import loads_json
from ...io.json_meta import MetadataError, meta_json
from ...io.npz_file import open_npz
from ...io.os_errors import WriteError, writing
from ..io import load_pose
from ..sequence import ARRAY_FIELDS, PoseSequence

log = logging.getLogger(__name__)

INDEX_FORMAT = "echomimic-gesture-index"
INDEX_VERSION = 1
NECK, R_SHOULDER, R_ELBOW, R_WRIST, L_SHOULDER, L_ELBOW, L_WRIST = 1, 2, 3, 4, 5, 6, 7
POSTURE_JOINTS = (R_SHOULDER, R_ELBOW, R_WRIST, L_SHOULDER, L_ELBOW, L_WRIST)
PROFILE_BINS = 8
SMOOTH_S = 0.15  # speed smoothing window
MIN_UNIT_S = 0.25
MAX_UNIT_S = 2.5
_FRAME = re.compile(r"^\d+\.npy$")
UNIT_FIELDS = ("source", "start", "end", "stroke", "amplitude", "mean_speed", "hand_height", "moving", "start_posture",
               "end_posture", "profile", "rest")


def _visible(points, scores):
    return np.isfinite(points).all(-1) & ~(points == -1.0).all(-1) & (scores > 0.3)


def _fill(track: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """(F, 2) positions with gaps (``ok`` False) filled by linear interpolation (edges held)."""
    if ok.all() or not ok.any():
        return track if ok.any() else np.zeros_like(track)
    t = np.arange(len(track))
    return np.stack([np.interp(t, t[ok], track[ok, d]) for d in range(2)], axis=-1)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(x) < 2:
        return x.copy()
    k = np.hanning(width + 2)[1:-1]
    k /= k.sum()
    pad = np.pad(x, ((width // 2, width - 1 - width // 2),) + ((0, 0),) * (x.ndim - 1), mode="edge")
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, pad)


@dataclass
class SourceMotion:
    """Per-frame motion signals of one source (derived, not cached: cheap to recompute)."""

    scale: float  # median shoulder width in normalised canvas units (x scaled by the draw aspect)
    valid: np.ndarray  # (F,) bool: neck and both shoulders visible
    hands: np.ndarray  # (F, 2, 2) wrist positions (R, L) in shoulder widths, relative to the median neck
    speed: np.ndarray  # (F,) smoothed mean wrist speed, shoulder widths / s
    hand_speed: np.ndarray  # (F, 2) smoothed per-wrist speed


def source_motion(seq: PoseSequence) -> SourceMotion:
    body, score = seq.body, seq.body_score
    vis = _visible(body, score)
    valid = vis[:, NECK] & vis[:, R_SHOULDER] & vis[:, L_SHOULDER]
    aspect = seq.draw_pose_params[:, 1] / np.maximum(seq.draw_pose_params[:, 0], 1)  # imw / imh: x units -> y units
    pts = body.copy()
    pts[..., 0] = pts[..., 0] * aspect[:, None]
    if valid.any():
        sw = np.linalg.norm(pts[valid, R_SHOULDER] - pts[valid, L_SHOULDER], axis=-1)
        scale = float(np.median(sw)) if np.median(sw) > 1e-6 else 1.0
        neck = np.median(pts[valid, NECK], axis=0)
    else:
        scale, neck = 1.0, np.zeros(2)
    hands = np.stack([_fill(pts[:, j], vis[:, j]) for j in (R_WRIST, L_WRIST)], axis=1)
    hands = (hands - neck) / scale
    vel = np.zeros_like(hands)
    vel[1:] = np.diff(hands, axis=0) * seq.fps
    per = np.linalg.norm(vel, axis=-1)
    per[~valid] = 0.0
    width = max(1, int(round(SMOOTH_S * seq.fps)))
    hand_speed = _smooth(per, width)
    return SourceMotion(scale, valid, hands, hand_speed.mean(axis=1), hand_speed)


def posture(seq: PoseSequence, motion: SourceMotion, i: int) -> np.ndarray:
    """Shoulders, elbows and wrists of frame ``i`` relative to its neck, in shoulder widths (12 numbers)."""
    a = seq.draw_pose_params[i, 1] / max(seq.draw_pose_params[i, 0], 1)
    p = seq.body[i].copy()
    p[:, 0] *= a
    rel = (p[list(POSTURE_JOINTS)] - p[NECK]) / motion.scale
    ok = _visible(seq.body[i, list(POSTURE_JOINTS)], seq.body_score[i, list(POSTURE_JOINTS)])
    rel[~ok] = 0.0
    return rel.reshape(-1)


def cut_points(speed: np.ndarray, valid: np.ndarray, fps: float) -> list[tuple[int, int]]:
    """Unit boundaries [start, end) inside valid runs, at local speed minima, MIN_UNIT_S..MAX_UNIT_S long."""
    lo, hi = max(2, int(round(MIN_UNIT_S * fps))), max(4, int(round(MAX_UNIT_S * fps)))
    units = []
    edges = np.flatnonzero(np.diff(np.r_[0, valid.astype(np.int8), 0]))
    for a, b in zip(edges[::2], edges[1::2]):
        if b - a < lo:
            continue
        s = speed[a:b]
        minima = [i for i in range(1, len(s) - 1) if s[i] <= s[i - 1] and s[i] <= s[i + 1]]
        cuts = [0]
        for m in minima:
            if m - cuts[-1] >= lo and len(s) - m >= lo:
                cuts.append(m)
        cuts.append(len(s))
        done = []
        for x, y in zip(cuts[:-1], cuts[1:]):
            stack = [(x, y)]
            while stack:  # split units that are too long at their slowest interior frame
                u, v = stack.pop()
                if v - u <= hi:
                    done.append((u, v))
                    continue
                m = u + lo + int(np.argmin(s[u + lo : v - lo])) if v - u > 2 * lo else (u + v) // 2
                stack += [(m, v), (u, m)]
        units += [(a + u, a + v) for u, v in sorted(done)]
    return units


@dataclass
class GestureLibrary:
    """Sources (pose sequences) and their gesture units. Build with :func:`load_library`."""

    sources: list[PoseSequence]
    units: dict  # UNIT_FIELDS -> arrays (U, ...)
    names: list[str] = field(default_factory=list)
    motions: list[SourceMotion] = field(default_factory=list, repr=False)

    def __post_init__(self):
        if not self.motions:
            self.motions = [source_motion(s) for s in self.sources]

    def __len__(self) -> int:
        return len(self.units["start"])

    @property
    def speaking_speed(self) -> float:
        """Mean hand speed over the non-rest units (the library's 'speaking' motion level)."""
        u = self.units
        moving = ~u["rest"]
        return float(np.average(u["mean_speed"][moving], weights=(u["end"] - u["start"])[moving])) if moving.any() else 0.0

    def acceleration_percentile(self, q: float = 99.0) -> float:
        """The q-th percentile of per-joint acceleration (normalised canvas units / frame^2) over all frames of
        all sources: body joints and hand centres (see :func:`joint_acceleration`)."""
        acc = [joint_acceleration(s) for s in self.sources]
        acc = np.concatenate([a[np.isfinite(a)] for a in acc]) if acc else np.zeros(0)
        return float(np.percentile(acc, q)) if acc.size else 0.0


def joint_acceleration(seq: PoseSequence) -> np.ndarray:
    """(F-2, 20) norms of the second differences of the 18 body joints and the two hand centres (the mean of each
    hand's visible points: a hand moves as a whole, finger jitter of the detector aside), per frame; NaN where a
    joint is hidden on one of the three frames."""
    if len(seq) < 3:
        return np.zeros((0, 20))
    hand_ok = _visible(seq.hands, seq.hands_score)
    cnt = hand_ok.sum(-1)
    centre = (seq.hands * hand_ok[..., None]).sum(2) / np.maximum(cnt, 1)[..., None]
    pts = np.concatenate([seq.body, centre], axis=1)
    ok = np.concatenate([_visible(seq.body, seq.body_score), cnt >= 5], axis=1)
    acc = np.linalg.norm(pts[2:] - 2 * pts[1:-1] + pts[:-2], axis=-1)
    return np.where(ok[2:] & ok[1:-1] & ok[:-2], acc, np.nan)


def index_source(seq: PoseSequence, source: int = 0) -> dict:
    """The unit table of one sequence (UNIT_FIELDS -> arrays)."""
    m = source_motion(seq)
    rows = []
    moving_speed = m.speed[m.valid]
    rest_level = 0.35 * float(np.median(moving_speed)) if moving_speed.size else 0.0
    for a, b in cut_points(m.speed, m.valid, seq.fps):
        s = m.speed[a:b]
        prof = np.interp(np.linspace(0, len(s) - 1, PROFILE_BINS), np.arange(len(s)), s)
        rows.append({
            "source": source, "start": a, "end": b, "stroke": int(np.argmax(s)), "amplitude": float(s.max()),
            "mean_speed": float(s.mean()), "hand_height": float(m.hands[a:b, :, 1].mean()),
            "moving": m.hand_speed[a:b].mean(axis=0) > max(rest_level, 1e-6), "start_posture": posture(seq, m, a),
            "end_posture": posture(seq, m, b - 1), "profile": prof, "rest": bool(s.max() < max(rest_level * 2, 1e-6)),
        })
    return _stack_units(rows)


def _stack_units(rows: list[dict]) -> dict:
    shapes = {"moving": (2,), "start_posture": (12,), "end_posture": (12,), "profile": (PROFILE_BINS,)}
    ints = ("source", "start", "end", "stroke")
    out = {}
    for k in UNIT_FIELDS:
        dtype = np.int64 if k in ints else (bool if k in ("moving", "rest") else np.float64)
        out[k] = np.array([r[k] for r in rows], dtype=dtype).reshape((len(rows),) + shapes.get(k, ()))
    return out


def _concat_units(tables: list[dict]) -> dict:
    return {k: np.concatenate([t[k] for t in tables]) for k in UNIT_FIELDS}


# ------------------------------------------------------------------------------------------ sources & cache
def _is_pose_folder(p: Path) -> bool:
    try:
        return p.is_dir() and any(_FRAME.match(e.name) for e in p.iterdir())
    except OSError:
        return False


def find_sources(path: str | Path) -> list[Path]:
    """The pose sequences a library path stands for: itself (pose folder or .npz), or the pose folders and
    .npz files directly inside it. A path that holds none is refused with a message saying what to put there."""
    from ...io.os_errors import not_file_text

    p = Path(path)
    problem = None if p.is_dir() else not_file_text(p, "not found")  # (a pipe was "cannot read: Not a directory")
    if problem:
        raise EchoMimicError(f"gesture library: {p} {problem}. Give a V2 pose folder (0.npy, 1.npy, ...), a .npz pose "
                             "sequence, or a folder of them (e.g. models/echomimic/poses/).")
    if p.is_file():
        if p.suffix != ".npz":
            raise EchoMimicError(f"gesture library: {p} is not a pose sequence (expected a folder of 0.npy, 1.npy, ... "
                                 "frames or an .npz written by `echomimic poses`).")
        return [p]
    if _is_pose_folder(p):
        return [p]
    try:
        children = sorted(c for c in p.iterdir() if not c.name.startswith("."))
    except OSError as exc:
        raise EchoMimicError(f"gesture library: cannot read {p} ({exc}).") from exc
    found = [c for c in children if _is_pose_folder(c) or (c.is_file() and c.suffix == ".npz")]
    if not found:
        shown = ", ".join(c.name for c in children[:5]) or "nothing"
        raise EchoMimicError(
            f"gesture library: {p} is not a pose sequence and holds none (found {shown}). Put EchoMimicV2 pose folders "
            "there (e.g. assets/halfbody_demo/pose/01 of the EchoMimicV2 release, or poses extracted from any video with "
            "the Hand-Pose Sequence Loader / DWPose), each a folder of 0.npy, 1.npy, ... frames.")
    return found


def fingerprint(src: Path) -> str:
    """Names, sizes and modification times of the frame files (or the .npz file), hashed."""
    files = [src] if src.is_file() else sorted((e for e in src.iterdir() if _FRAME.match(e.name)), key=lambda e: e.name)
    h = hashlib.sha1(f"{INDEX_FORMAT}:{INDEX_VERSION}:{SMOOTH_S}:{MIN_UNIT_S}:{MAX_UNIT_S}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("ECHOMIMIC_CACHE", Path.home() / ".cache" / "echomimic")) / "gestures"


def cache_path(src: Path, cache_dir: str | Path | None = None) -> Path:
    """Where the index of ``src`` lives: beside it (hidden), unless ``cache_dir`` is given or the folder is read-only."""
    src = src.resolve()
    if cache_dir is None and os.access(src.parent, os.W_OK):
        return src.parent / f".{src.name}.gestures.npz"
    key = hashlib.sha1(str(src).encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / f"{src.name}-{key}.gestures.npz"


def _read_index(path: Path, fp: str):
    try:
        with open_npz(path, "It is rebuilt.") as z:
            meta = loads_json(bytes(z["meta"]), "its 'meta' entry", "unreadable", "the index is rebuilt", ValueError,
                              expect=dict)
            if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION or meta.get("fingerprint") != fp:
                return None
            seq = PoseSequence(**{n: z[n] for n in ARRAY_FIELDS}, fps=meta["fps"], canvas_size=tuple(meta["canvas_size"]),
                               source=meta["source"])
            units = {k: z["unit_" + k] for k in UNIT_FIELDS}
    except Exception as exc:  # unreadable / stale / foreign: rebuilt
        log.info("gesture index %s not usable (%s); rebuilding", path, exc)
        return None
    return seq, units


def _write_index(path: Path, fp: str, seq: PoseSequence, units: dict) -> None:
    meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "fingerprint": fp, "fps": seq.fps,
            "canvas_size": list(seq.canvas_size), "source": seq.source}
    tmp = None
    try:
        header = np.frombuffer(meta_json(meta, path).encode("utf-8"), dtype=np.uint8)  # before anything is written
        tmp = temp_beside(path, ".partial.npz")  # unique: two indexers of one library (batch workers) never share it
        track_partial(tmp)  # an interrupt that cannot wait for the render thread removes it (echomimic_lib.cli)
        with writing(path, ""):  # a full disk names the index, not its temporary file (removed below)
            np.savez_compressed(tmp, meta=header, **{n: getattr(seq, n) for n in ARRAY_FIELDS}, **{"unit_" + k: v for k, v in units.items()})
        publish(tmp, path)
    except (OSError, ExistingFileError, MetadataError) as exc:  # read-only, full, a folder there, a bad value: uncached
        if isinstance(exc, (WriteError, MetadataError)):  # "cannot write <the index>: <what the system said>; <fix>."
            log.warning("gesture index not cached: %s The library is used without it.", exc)
        else:
            log.warning("gesture index not cached (%s): %s", path, exc)
    finally:  # written and renamed, or never left half-written (a failure, Ctrl-C, SIGTERM)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
            untrack_partial(tmp)


def index_path(src: Path, fps: float = 24.0, cache_dir=None, rebuild: bool = False) -> tuple[PoseSequence, dict, bool]:
    """(sequence, unit table for source 0, whether the cache was used) for one source path."""
    fp = fingerprint(src) + f":{fps}"
    where = cache_path(src, cache_dir)
    if not rebuild and where.is_file():
        hit = _read_index(where, fp)
        if hit is not None:
            return hit[0], hit[1], True
    try:
        seq = load_pose(src, fps=fps) if src.is_dir() else load_pose(src)
    except EchoMimicError as exc:
        raise EchoMimicError(f"gesture library: {src} is not a usable pose sequence: {exc}") from exc
    units = index_source(seq)
    _write_index(where, fp, seq, units)
    return seq, units, False


def load_library(paths, fps: float = 24.0, cache_dir: str | Path | None = None, rebuild: bool = False) -> GestureLibrary:
    """Index (or read the cached index of) every pose sequence the given paths stand for.

    ``paths``: one path or a list (pose folders, .npz sequences, folders of them). ``fps``: frame rate of released
    folders (24 for the EchoMimicV2 demos). Raises a clear error for a path that holds no pose sequence, or when the
    sequences hold no gesture (all too short, or nobody visible)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    srcs = [s for p in paths for s in find_sources(p)]
    if not srcs:
        raise EchoMimicError("gesture library: no library folder given; pass a pose folder or a folder of pose folders.")
    seqs, tables, names = [], [], []
    for i, src in enumerate(dict.fromkeys(s.resolve() for s in srcs)):
        seq, units, _ = index_path(src, fps, cache_dir, rebuild)
        units = dict(units, source=np.full(len(units["start"]), i, dtype=np.int64))
        seqs.append(seq), tables.append(units), names.append(src.name)
    lib = GestureLibrary(seqs, _concat_units(tables), names)
    if not (~lib.units["rest"]).any():
        raise EchoMimicError(f"gesture library: {', '.join(names)} hold no gestures (too short, nobody visible, or no hand "
                             "movement); add pose folders of someone talking with their hands.")
    return lib
