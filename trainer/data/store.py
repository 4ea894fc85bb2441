"""On-disk training set: one folder per clip inside shard folders, plus a manifest.

Layout of a prepared dataset ``ROOT``::

    ROOT/manifest.jsonl            accepted clips, one JSON object per line (written at the end of prepare)
    ROOT/report.jsonl              every input video: status ok / dropped, the reason, measurements
    ROOT/status/<clip>.json        per-clip status, written when the clip is finished (resume marker)
    ROOT/shard-00003/<clip>/       a finished clip (renamed from <clip>.partial when complete)
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
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLIP_META = "clip.json"
FORMAT_VERSION = 1


def shard_of(clip_id: str, num_shards: int) -> int:
    return zlib.crc32(clip_id.encode("utf-8")) % max(1, int(num_shards))


def shard_dir(root: Path, shard: int) -> Path:
    return Path(root) / f"shard-{shard:05d}"


def write_json_atomic(path: Path, obj) -> Path:
    from echomimic_lib.io.file_safety import write_text_atomic

    return write_text_atomic(Path(path), json.dumps(obj, indent=1, sort_keys=True))


def encode_jpeg(frame: np.ndarray, quality: int = 95) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(img[..., ::-1])


class ClipWriter:
    """Writes one clip into ``<final>.partial`` and renames it to ``final`` in :meth:`finish`."""

    def __init__(self, final_dir: Path, jpeg_quality: int = 95):
        self.final = Path(final_dir)
        if not self.final.name.strip("."):  # shard/'..' is the dataset folder: finish() would remove it
            raise ValueError(f"{final_dir}: a clip folder needs a name of its own (not '.', '..' or empty)")
        self.tmp = self.final.with_name(self.final.name + ".partial")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.quality = jpeg_quality
        self._frames = open(self.tmp / "frames.bin", "wb")
        self._offsets = [0]

    def add_frame(self, rgb: np.ndarray) -> None:
        data = encode_jpeg(rgb, self.quality)
        self._frames.write(data)
        self._offsets.append(self._offsets[-1] + len(data))

    @property
    def num_frames(self) -> int:
        return len(self._offsets) - 1

    def finish(self, meta: dict, arrays: dict[str, np.ndarray]) -> Path:
        """Write the arrays and ``clip.json`` (other files may already be in ``self.tmp``), then rename into place."""
        self._frames.close()
        np.save(self.tmp / "frames.idx.npy", np.asarray(self._offsets, dtype=np.int64))
        for name, arr in arrays.items():
            np.save(self.tmp / f"{name}.npy", arr)
        meta = {**meta, "format_version": FORMAT_VERSION, "num_frames": self.num_frames}
        write_json_atomic(self.tmp / CLIP_META, meta)
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        try:
            self._frames.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


class ClipReader:
    """Random access to one prepared clip; arrays are memory-mapped, frames decoded on demand."""

    def __init__(self, clip_dir: str | Path):
        self.dir = Path(clip_dir)
        meta_path = self.dir / CLIP_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.dir}: not a prepared clip (no {CLIP_META})")
        self.meta = json.loads(meta_path.read_text())
        self._offsets = np.load(self.dir / "frames.idx.npy")
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
            self._cache[name] = np.load(self.dir / f"{name}.npy", mmap_mode="r")
        return self._cache[name]

    def has(self, name: str) -> bool:
        return (self.dir / name).exists() or (self.dir / f"{name}.npy").exists()

    def frame(self, i: int) -> np.ndarray:
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        with open(self.dir / "frames.bin", "rb") as f:
            f.seek(a)
            return decode_jpeg(f.read(b - a))

    def frames(self, indices) -> np.ndarray:
        return np.stack([self.frame(int(i)) for i in indices])

    def pose(self):
        from echomimic_lib.pose import load_pose_npz

        if "pose" not in self._cache:
            self._cache["pose"] = load_pose_npz(self.dir / "pose.npz")
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
        raise FileNotFoundError(f"{root}: no manifest.jsonl; run `echomimic-train prepare` for this folder first")
    inside, parents = root.resolve(), {}
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            d = json.loads(line)
            folder = clip_folder(root, inside, d["path"], f"{path} line {number} (clip {d.get('id')})",
                                 parents)
            out.append(ClipEntry(d["id"], folder, int(d["shard"]), int(d["num_frames"]), float(d["fps"]), d.get("kind", "headshot"),
                                 str(d.get("group") or "")))
    return out
