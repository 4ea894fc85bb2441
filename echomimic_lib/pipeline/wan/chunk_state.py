"""Resumable long EchoMimicV3 renders: the finished chunks kept on disk, so a render that dies goes on with the next one.

A long V3 clip is rendered chunk by chunk (:func:`.long.iter_long`), and chunk k needs nothing of the earlier ones
but what ``on_chunk`` reports with chunk k - 1: its last ``overlap`` frames (float32, crossfaded into chunk k and, in
``continue`` mode, its first frames) and the colour-transfer anchor (the video's frame 0). So a folder beside the
output, ``<name>.resume-v3/``, holds:

* ``chunk_00000.npy``, ...: each finished chunk's frames as they went to the writer (uint8, about 1.8 MB per
  768x768 frame: a 5-minute clip keeps about 13 GB at the end of its render);
* ``carry_<k>.npz``: ``tail`` and ``anchor`` after the last finished chunk k (the previous one is removed);
* ``state.json``: the format, the request's fingerprint (:func:`echomimic_lib.jobs.resume_plan.fingerprint`) and the
  number of finished chunks, written last.

Every file is written to a temporary name and renamed into place, ``state.json`` after the chunk it counts, so a
render stopped at any moment leaves a state that claims only chunks on disk. A rerun of the same request feeds the
kept chunks to the writer one at a time and generates from the next chunk: the same frames as a render that never
stopped (``tests/test_v3_resume.py``). Another request's state, or one that does not check out (unreadable JSON, a
missing or cut file, shapes that do not fit), is never used: a warning, and the render starts afresh (the old state is
replaced at the first save). The folder is removed once the video is written.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import EchoMimicError
from ...io.file_safety import publish, temp_beside, track_partial, untrack_partial, write_text_atomic
from ...io.json_file import read_json
from ...io.json_meta import meta_json
from ...io.npz_file import open_npz
from ...io.os_errors import writing

log = logging.getLogger(__name__)

FORMAT = "echomimic-v3-chunks-1"
STATE = "state.json"


def chunk_state_path(output: str | Path) -> Path:
    """Where a resumable V3 render of ``output`` keeps its chunks: the folder ``<name>.resume-v3`` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".resume-v3")


def check_state_folder(path: str | Path) -> None:
    """Before any work: something other than a folder where the state folder goes is refused (never replaced)."""
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        raise EchoMimicError(f"{p} exists and is not a folder; --resumable keeps a long EchoMimicV3 render's chunks there. "
                             "Move it away or choose another output name.")


@dataclass
class Resumed:
    """A kept state that checks out: ``done`` chunks finished, and what the next chunk needs."""
    done: int
    tail: np.ndarray | None
    anchor: np.ndarray | None


def _chunk_name(k: int) -> str:
    return f"chunk_{k:05d}.npy"


def _carry_name(k: int) -> str:
    return f"carry_{k:05d}.npz"


def _npy_header(path: Path) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, data offset) of an .npy file, without reading its data."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"npy format {version}")
        if fortran:
            raise ValueError("Fortran order")
        return tuple(shape), dtype, fh.tell()


class ChunkCheckpoint:
    """The kept chunks of one resumable render. ``sizes``: the frames of each chunk (:func:`.long.chunk_sizes`);
    ``frame``: (H, W) of a frame; ``overlap``: the tail's frames; ``anchor``: whether colour transfer keeps one."""

    def __init__(self, path: str | Path, fingerprint: str, sizes: list[int], frame: tuple[int, int], overlap: int,
                 anchor: bool):
        self.path, self.fingerprint = Path(path), str(fingerprint)
        self.sizes, self.frame, self.overlap, self.has_anchor = list(sizes), tuple(frame), int(overlap), bool(anchor)
        check_state_folder(self.path)
        self.done, self.resumed_from = 0, None
        self.failed: OSError | None = None  # the first write that failed: nothing is kept after it
        self._replace = self.path.exists()  # a state not loaded is another's (or damaged): cleared at the first save

    # ------------------------------------------------------------------ reading
    def load(self) -> Resumed | None:
        """The kept state of this request, checked, or None (none, another request's, or one not to be trusted)."""
        if not (self.path / STATE).is_file():
            if self.path.is_dir() and any(self.path.iterdir()):
                log.warning("%s holds no %s (stopped before its first chunk was recorded); starting from the first chunk",
                            self.path, STATE)
            return None
        try:
            meta = read_json(self.path / STATE, "not a resume state", "it is replaced at the first save", ValueError,
                             max_bytes=1 << 20, expect=dict)
            if meta.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} state")
            if meta.get("fingerprint") != self.fingerprint:
                log.warning("%s holds the chunks of another render (different inputs or settings); starting from the first "
                            "chunk (it is replaced at the first save)", self.path)
                return None
            done = meta.get("chunks_done")
            if not isinstance(done, int) or isinstance(done, bool) or not 1 <= done <= len(self.sizes):
                raise ValueError(f"chunks_done {done!r} (this render has {len(self.sizes)} chunks)")
            for k in range(done):
                self._check_chunk(k)
            tail, anchor = self._read_carry(done - 1)
        except Exception as exc:  # a cut-off, damaged or foreign state: never trusted, never fatal
            log.warning("%s cannot be used (%s); starting from the first chunk", self.path, exc)
            return None
        self.done = self.resumed_from = done
        self._replace = False
        log.info("resuming from %s: chunks 1..%d of %d are done", self.path, done, len(self.sizes))
        return Resumed(done, tail, anchor)

    def _check_chunk(self, k: int) -> None:
        path = self.path / _chunk_name(k)
        if not path.is_file():
            raise ValueError(f"{path.name} is missing")
        shape, dtype, offset = _npy_header(path)
        want = (self.sizes[k], *self.frame, 3)
        if shape != want or dtype != np.uint8:
            raise ValueError(f"{path.name} holds {dtype} {shape}, expected uint8 {want}")
        if path.stat().st_size != offset + int(np.prod(shape)):
            raise ValueError(f"{path.name} is cut off")

    def _read_carry(self, k: int):
        with open_npz(self.path / _carry_name(k), "The render starts over.") as z:
            tail = z["tail"] if "tail" in z.files else None
            anchor = z["anchor"] if "anchor" in z.files else None
        want_tail = (self.overlap, *self.frame, 3) if self.overlap else None
        if (None if tail is None else (tail.shape, tail.dtype)) != (None if want_tail is None else (want_tail, np.float32)):
            raise ValueError(f"{_carry_name(k)}: tail does not fit")
        want_anchor = (*self.frame, 3) if self.has_anchor else None
        if (None if anchor is None else (anchor.shape, anchor.dtype)) != (None if want_anchor is None else (want_anchor, np.uint8)):
            raise ValueError(f"{_carry_name(k)}: anchor does not fit")
        return tail, anchor

    def stored(self):
        """The kept chunks' frames, in order, one array at a time (memory stays flat)."""
        for k in range(self.resumed_from or 0):
            yield np.load(self.path / _chunk_name(k), allow_pickle=False)

    # ------------------------------------------------------------------ writing
    def save(self, k: int, out: np.ndarray, tail: np.ndarray | None, anchor: np.ndarray | None) -> None:
        """Chunk ``k`` is finished (``iter_long``'s ``on_chunk``): its frames and carry, then the count that claims them.

        A write that fails (a full disk) never stops the render: the chunks kept before it stay a valid state (the
        count is written last), nothing later is kept, and it is said once."""
        if self.failed is not None:
            return
        try:
            self._save(k, out, tail, anchor)
        except OSError as exc:
            self.failed = exc
            log.warning("could not keep chunk %d of the render in %s (%s); the render goes on, but a rerun after a "
                        "stop would go on from chunk %d", k + 1, self.path, str(exc).rstrip("."), self.done + 1)

    def _save(self, k: int, out: np.ndarray, tail: np.ndarray | None, anchor: np.ndarray | None) -> None:
        if k != self.done:
            raise ValueError(f"chunk {k} saved after {self.done} finished chunks")
        state = meta_json({"format": FORMAT, "fingerprint": self.fingerprint, "chunks_done": k + 1,  # before any write
                           "chunks": len(self.sizes)}, self.path / STATE)
        if self._replace:
            self._clear()
            self._replace = False
        self.path.mkdir(parents=True, exist_ok=True)
        self._write(self.path / _chunk_name(k), lambda fh: np.save(fh, np.ascontiguousarray(out, dtype=np.uint8)))
        carry = {} if tail is None else {"tail": np.ascontiguousarray(tail, dtype=np.float32)}
        if anchor is not None:
            carry["anchor"] = np.ascontiguousarray(anchor, dtype=np.uint8)
        self._write(self.path / _carry_name(k), lambda fh: np.savez(fh, **carry))
        write_text_atomic(self.path / STATE, state)
        if k:
            (self.path / _carry_name(k - 1)).unlink(missing_ok=True)
        self.done = k + 1

    @staticmethod
    def _write(final: Path, fill) -> None:
        tmp = temp_beside(final)
        track_partial(tmp)  # an interrupt that cannot wait for this write removes it
        try:
            with writing(final, ""), open(tmp, "wb") as fh:  # a full disk names the chunk file, not its temporary one
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
            publish(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
            untrack_partial(tmp)

    def _clear(self) -> None:
        """Remove this module's files from the folder (``state.json`` first), nothing else."""
        if not self.path.is_dir():
            return
        (self.path / STATE).unlink(missing_ok=True)
        for p in self.path.iterdir():
            name = p.name
            ours = (name.startswith(("chunk_", "carry_")) and name.endswith((".npy", ".npz"))) or \
                (name.startswith(".") and name.endswith(".partial"))
            if ours and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)

    def discard(self) -> None:
        """The video is written: the kept chunks go, and the folder when nothing else is in it."""
        self._clear()
        try:
            self.path.rmdir()
        except OSError:  # not there, or holding files that are not ours
            pass
