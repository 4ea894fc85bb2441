"""On-disk training set: one folder per clip inside shard folders, plus a manifest.

Layout of a prepared dataset ``ROOT``::

    ROOT/manifest.jsonl            accepted clips, one JSON object per line (written at the end of prepare)
    ROOT/report.jsonl              every input video: status ok / dropped, the reason, measurements
    ROOT/status/<clip>.json        per-clip status, written when the clip is finished (resume marker)
    ROOT/shard-00003/<clip>/       a finished clip (renamed from <clip>.partial when complete; a clip written again
                                   keeps its earlier folder as .old~<clip> until the new one is in place)
        clip.json                  metadata (fps, frames, size, crop, face boxes summary, kind, ...)
        frames.bin, frames.idx.npy JPEG frames back to back + (F + 1,) byte offsets (random access by seek)
        audio16k.npy               float32 mono 16 kHz waveform, trimmed to the video
        whisper.npy                float16 (N, 5, 384) whisper-tiny feature rows (50 per second; prepared with --whisper)
        landmarks.npy              float32 (F, 478, 3) face-mesh landmarks normalised to the stored frames
        face_boxes.npy             float32 (F, 4) face boxes x0, y0, x1, y1 normalised to the stored frames
        pose.npz                   (half-body clips) the DWPose sequence, normalised to the stored canvas

Readers memory-map the arrays and seek into ``frames.bin``: nothing is loaded beyond the frames a sample
needs, so a dataset of any size streams from disk. Clip ids hash to shards (``shard_of``), so several
workers / GPUs can read disjoint shards.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from echomimic_lib.io.json_file import json_problem
from echomimic_lib.io.os_errors import writing

from ..config import ConfigError

CLIP_META = "clip.json"
FORMAT_VERSION = 1
PARTIAL = ".partial"  # "<clip>.partial": a clip being written (no clip id ends so: prepare.check_clip_ids)
MAX_FRAME_BYTES = 64 << 20  # one JPEG frame of frames.bin: a 4K frame at quality 100 is under 10 MB
ASIDE = ".old~"  # ".old~<clip>": a clip's earlier folder, kept while a new write of it takes its place ('~' is in no id)
KEPT_CLIP = " Nothing partial was kept (a clip already there is unchanged)."


class DamagedClipError(ConfigError):
    """A prepared clip's files are missing or unreadable (a copy cut short, a disk error, files removed by hand).
    Raised in a DataLoader worker, torch rebuilds it in the training process from a message that holds the worker's
    traceback: that is cut back to the message itself, so the command prints one line that says what to do."""

    def __init__(self, message: str = ""):
        if isinstance(message, str) and message.startswith(f"Caught {type(self).__name__}"):
            message = message.rstrip().rsplit(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


def damaged(clip_dir: Path, what: str) -> DamagedClipError:
    clip_dir = Path(clip_dir)
    root = clip_dir.parent.parent
    return DamagedClipError(f"{clip_dir}: this prepared clip is damaged ({what}). Delete the folder {clip_dir} and run "
                            f"`echomimic-train prepare VIDEOS {root}` again with the dataset's settings (it prepares a clip "
                            f"whose folder is missing again), or remove the clip's line from {root / 'manifest.jsonl'}.")


def _damaged_by(clip_dir: Path, exc: BaseException, name: str) -> NoReturn:
    """Raise :class:`DamagedClipError` for an error reading the clip's file ``name`` (a permission error as it is: the
    folder's rights, not the clip, need fixing)."""
    if isinstance(exc, PermissionError):
        raise exc
    raise damaged(clip_dir, _why(exc, name)) from None


def aside_of(final: Path) -> Path:
    return Path(final).with_name(ASIDE + Path(final).name)


def _remove(path: Path) -> None:
    """Remove a folder (a link: the link, never what it leads to); nothing when there is none."""
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def shard_of(clip_id: str, num_shards: int) -> int:
    return zlib.crc32(clip_id.encode("utf-8")) % max(1, int(num_shards))


def shard_dir(root: Path, shard: int) -> Path:
    return Path(root) / f"shard-{shard:05d}"


def write_json_atomic(path: Path, obj) -> Path:
    from echomimic_lib.io.file_safety import write_text_atomic
    from echomimic_lib.io.json_meta import meta_json

    return write_text_atomic(Path(path), meta_json(obj, path, indent=1, sort_keys=True))


def encode_jpeg(frame: np.ndarray, quality: int = 95) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray | None:
    """RGB pixels of a JPEG picture; None when ``data`` is no picture (a damaged file)."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    return None if img is None else np.ascontiguousarray(img[..., ::-1])


def _why(exc: BaseException, name: str) -> str:
    """What is wrong with the clip's file ``name``, from the error reading it."""
    if isinstance(exc, FileNotFoundError):
        return f"no {name}"
    if isinstance(exc, (KeyError, TypeError)):
        return f"{name} has no frame count"
    return f"{name} is unreadable: {exc.strerror if isinstance(exc, OSError) and exc.strerror else json_problem(exc) or exc}"


class ClipWriter:
    """Writes one clip into ``<final>.partial`` and renames it to ``final`` in :meth:`finish`. A write the system
    refuses (a full disk) raises :class:`~echomimic_lib.io.os_errors.WriteError` naming the clip's folder, not the
    partial one (:meth:`abort` removes that)."""

    def __init__(self, final_dir: Path, jpeg_quality: int = 95):
        self.final = Path(final_dir)
        if not self.final.name.strip("."):  # shard/'..' is the dataset folder: finish() would remove it
            raise ValueError(f"{final_dir}: a clip folder needs a name of its own (not '.', '..' or empty)")
        self.tmp = self.final.with_name(self.final.name + PARTIAL)
        self.quality = jpeg_quality
        self._frames = None
        self._offsets = [0]
        with self.writing():
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            self.tmp.mkdir(parents=True)
            self._frames = open(self.tmp / "frames.bin", "wb")

    def writing(self):
        """Around a write into ``self.tmp``: a refused one names the clip's folder (:func:`writing`)."""
        return writing(self.final, KEPT_CLIP, staged=True)

    def add_frame(self, rgb: np.ndarray) -> None:
        data = encode_jpeg(rgb, self.quality)
        with self.writing():
            self._frames.write(data)
        self._offsets.append(self._offsets[-1] + len(data))

    @property
    def num_frames(self) -> int:
        return len(self._offsets) - 1

    def finish(self, meta: dict, arrays: dict[str, np.ndarray]) -> Path:
        """Write the arrays and ``clip.json`` (other files may already be in ``self.tmp``), then rename into place."""
        from echomimic_lib.io.json_meta import plain_meta

        meta = plain_meta({**meta, "format_version": FORMAT_VERSION, "num_frames": self.num_frames}, self.final / CLIP_META)
        with self.writing():  # (a value clip.json cannot hold was refused above, before any array is written)
            self._frames.close()
            np.save(self.tmp / "frames.idx.npy", np.asarray(self._offsets, dtype=np.int64))
            for name, arr in arrays.items():
                np.save(self.tmp / f"{name}.npy", arr)
            write_json_atomic(self.tmp / CLIP_META, meta)
        aside = aside_of(self.final)
        if self.final.exists() or self.final.is_symlink():  # written again: the earlier clip stays until the new one is in
            _remove(aside)  # place, so a kill between the two renames loses neither (readers and recover_clips find it)
            os.replace(self.final, aside)
        os.replace(self.tmp, self.final)
        _remove(aside)
        return self.final

    def abort(self) -> None:
        try:
            if self._frames is not None:
                self._frames.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


class ClipReader:
    """Random access to one prepared clip; arrays are memory-mapped, frames decoded on demand. A missing or unreadable
    file raises :class:`DamagedClipError` naming the clip and the fix (also from a DataLoader worker)."""

    def __init__(self, clip_dir: str | Path):
        self.dir = Path(clip_dir)
        try:
            self.meta = json.loads((self.dir / CLIP_META).read_text(encoding="utf-8"))
            int(self.meta["num_frames"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError, OverflowError) as exc:  # (nested past what the
            _damaged_by(self.dir, exc, CLIP_META)  # parser reads; a number past any float: 1e999 reads as inf)
        try:
            self._offsets = np.load(self.dir / "frames.idx.npy", mmap_mode="r")  # (a header declaring more than the
            if self._offsets.dtype.kind not in "iu" or self._offsets.ndim != 1:  # file holds: refused, not allocated)
                raise ValueError(f"{self._offsets.dtype} {self._offsets.shape} offsets, not one row of byte positions")
        except (OSError, ValueError) as exc:
            _damaged_by(self.dir, exc, "frames.idx.npy")
        self._cache: dict[str, np.ndarray] = {}

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def num_frames(self) -> int:
        return int(self.meta["num_frames"])

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "headshot")

    def array(self, name: str) -> np.ndarray:
        if name not in self._cache:
            try:
                self._cache[name] = np.load(self.dir / f"{name}.npy", mmap_mode="r")
            except (OSError, ValueError) as exc:
                _damaged_by(self.dir, exc, f"{name}.npy")
        return self._cache[name]

    def has(self, name: str) -> bool:
        return (self.dir / name).exists() or (self.dir / f"{name}.npy").exists()

    def frame(self, i: int) -> np.ndarray:
        if not 0 <= i < min(self.num_frames, len(self._offsets) - 1):
            root = self.dir.parent.parent
            raise DamagedClipError(f"{self.dir}: frame {i} asked of a clip of {self.num_frames} frames ({len(self._offsets) - 1} "
                                   f"stored): {root / 'manifest.jsonl'} is older than the clip (a prepare run that wrote it "
                                   f"again stopped before its end). Run the same `echomimic-train prepare VIDEOS {root}` "
                                   "command again: it writes the manifest anew.")
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        if not 0 <= a <= b or b - a > MAX_FRAME_BYTES:  # read(b - a) would hold b - a bytes (a negative count: all)
            raise damaged(self.dir, f"frames.idx.npy places frame {i} at bytes {a}..{b} of frames.bin, which no JPEG "
                                    f"frame of a prepared clip spans (at most {MAX_FRAME_BYTES >> 20} MiB each)")
        try:
            with open(self.dir / "frames.bin", "rb") as f:
                f.seek(a)
                data = f.read(b - a)
        except OSError as exc:
            _damaged_by(self.dir, exc, "frames.bin")
        img = decode_jpeg(data) if len(data) == b - a else None
        if img is None:
            raise damaged(self.dir, f"frame {i} of frames.bin is {'cut short' if len(data) < b - a else 'not a JPEG picture'}")
        return img

    def frames(self, indices) -> np.ndarray:
        return np.stack([self.frame(int(i)) for i in indices])

    def pose(self):
        from echomimic_lib.pose import load_pose_npz

        if "pose" not in self._cache:
            try:
                self._cache["pose"] = load_pose_npz(self.dir / "pose.npz")
            except (OSError, ValueError, KeyError) as exc:
                _damaged_by(self.dir, exc, "pose.npz")
        return self._cache["pose"]


@dataclass(frozen=True)
class ClipEntry:
    id: str
    path: Path  # absolute clip folder
    shard: int
    num_frames: int
    fps: float
    kind: str
    group: str = ""  # identity group from the manifest row (e.g. a speaker id), "" when not given (see .split)


def clip_folder(root: Path, inside: Path, rel, where: str, parents: dict) -> Path:
    """``root / rel``, refused when ``rel`` (a manifest's clip path) leaves the dataset folder: an absolute path, a
    ``..`` part, or a link that leads outside (a shared dataset's manifest or links must not make the trainer read the
    user's other files). ``inside``: the dataset folder with its links resolved (the folder itself may be a link);
    ``parents``: resolved shard folders, so a large manifest costs one lstat per clip."""
    from ..config import ConfigError

    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ConfigError(f"{where}: path {rel!r} is not a clip folder inside the dataset folder {root} (an absolute path "
                          "or '..'): a manifest lists clips relative to its folder (shard-00000/<clip>); run "
                          "`echomimic-train prepare` again for these videos, or remove the line.")
    folder = root / rel
    if folder.is_symlink():
        target = folder.resolve()
    else:
        if folder.parent not in parents:
            parents[folder.parent] = folder.parent.resolve()
        target = parents[folder.parent] / folder.name
    if target != inside and inside not in target.parents:
        raise ConfigError(f"{where}: {rel!r} leads through a link to {target}, outside the dataset folder {root}: copy the clip "
                          "into the dataset folder (or list its own prepared folder in data.roots), or run "
                          "`echomimic-train prepare` again for these videos.")
    return folder


def read_manifest(root: str | Path) -> list[ClipEntry]:
    root = Path(root)
    path = root / "manifest.jsonl"
    if not path.is_file():
        if root.is_file() and path.parent.parent.joinpath("manifest.jsonl").is_file():  # the dataset's manifest itself
            from ..config import ConfigError

            raise ConfigError(f"{root}: a file; data.roots lists prepared dataset folders: give {root.parent} (the folder "
                              "that holds manifest.jsonl and the clips' shard folders)")
        raise FileNotFoundError(f"{root}: no manifest.jsonl; run `echomimic-train prepare` for this folder first")
    inside, parents = root.resolve(), {}
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            d = _manifest_row(path, number, line)
            folder = clip_folder(root, inside, d["path"], f"{path} line {number} (clip {d.get('id')})",
                                 parents)
            if not folder.exists() and (aside_of(folder) / CLIP_META).is_file():
                folder = aside_of(folder)  # a write of the clip cut short between its renames: its only copy
            out.append(ClipEntry(d["id"], folder, int(d["shard"]), int(d["num_frames"]), float(d["fps"]), d.get("kind", "headshot"),
                                 str(d.get("group") or "")))
    return out


def _manifest_row(path: Path, number: int, line: str) -> dict:
    """One line of a dataset's ``manifest.jsonl`` as ``prepare`` writes it, or a :class:`ConfigError` naming the line."""
    from ..config import ConfigError

    try:
        d = json.loads(line)
        ok = (isinstance(d, dict) and isinstance(d.get("id"), str) and "path" in d  # (the path: clip_folder's to judge)
              and all(isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool) and math.isfinite(d[k])
                      for k in ("shard", "num_frames", "fps"))  # (1e999 reads as inf: int() of it would overflow)
              and d["fps"] > 0)  # (0 or less: frames at no rate; the window check divided by it)
    except (ValueError, RecursionError):
        ok = False
    if not ok:
        raise ConfigError(f"{path} line {number} is not a clip row written by `echomimic-train prepare` (a JSON object with "
                          "id, path, shard, num_frames and fps): the file was edited or cut short. Run `echomimic-train "
                          f"prepare VIDEOS {path.parent}` again (it writes the manifest anew), or remove the line.")
    return d


def check_clips_present(entries: list[ClipEntry]) -> None:
    """Refuse, before training builds anything, clips of a manifest whose folder is gone or holds no ``clip.json`` (one
    file test per clip), naming them and the fix, instead of a traceback from a DataLoader worker later on."""
    gone = [e for e in entries if not (e.path / CLIP_META).is_file()]
    if gone:
        e, root = gone[0], gone[0].path.parent.parent
        more = f" and {len(gone) - 1} more" if len(gone) > 1 else ""
        raise DamagedClipError(f"clip {e.id} of {root / 'manifest.jsonl'}{more}: its folder {e.path} is "
                               f"{'missing' if not e.path.exists() else f'damaged (no {CLIP_META})'}. Run `echomimic-train "
                               f"prepare VIDEOS {root}` again with the dataset's settings: it prepares a clip whose folder is "
                               "missing again (delete a damaged one first); or remove the clip's line from the manifest.")
    for e in entries:  # a frames.bin cut short (a copy or sync stopped early): named now, not hours into the run
        odd = [n for n in ("frames.idx.npy", "frames.bin") if (e.path / n).exists() and not (e.path / n).is_file()]
        if odd:  # (a pipe would be waited on for ever, here and in a DataLoader worker)
            raise damaged(e.path, f"{odd[0]} is not a regular file (a pipe, device or folder)")
        try:
            offsets = np.load(e.path / "frames.idx.npy", mmap_mode="r")
            end = int(offsets[-1]) if offsets.ndim == 1 and offsets.dtype.kind in "iu" and len(offsets) else 0
            size = (e.path / "frames.bin").stat().st_size
        except (OSError, ValueError):
            continue  # an unreadable file: named by the clip's reader, as before
        if size < end:
            raise damaged(e.path, f"frames.bin holds {size} bytes, its frames.idx.npy places frames up to byte {end}: "
                                  "the file was cut short")


def recover_clips(root: str | Path, mine=None) -> list[Path]:
    """At the start of a prepare run: writes of a clip cut short. A clip's earlier folder kept aside (:data:`ASIDE`) is
    put back when it is the clip's only copy and removed when the new one is in place; a ``<clip>.partial`` staging
    folder is removed. ``mine(clip_id)``: only this worker's clips (another worker may be writing its own). Returns the
    folders removed or put back."""
    done = []
    for shard in sorted(Path(root).glob("shard-*")):
        if not shard.is_dir() or shard.is_symlink():
            continue
        for p in sorted(shard.iterdir()):
            aside, partial = p.name.startswith(ASIDE), p.name.endswith(PARTIAL)
            cid = p.name[len(ASIDE):] if aside else p.name[: -len(PARTIAL)] if partial else ""
            if not cid or (mine is not None and not mine(cid)) or (Path(root) / "status" / f"{p.name}.json").is_file():
                continue  # another worker's; or a clip of its own named so by an older version
            final = p.with_name(cid)
            if aside and not (final.exists() or final.is_symlink()):
                os.replace(p, final)
            else:
                _remove(p)
            done.append(p)
    return done
