"""``animate --resumable``: which request a kept render state belongs to (the state itself: pipeline.resume for V1/V2,
pipeline.wan.chunk_state for a long EchoMimicV3 clip).

The fingerprint is a digest of everything that shapes the frames: the request's options, the sampler settings,
each input file and weight file (path, size, modification time: a changed file is another input), the device
type, the dtype and the torch and pack versions. Left out on purpose: the output name, ``--offline`` and the
options whose output is the same up to float rounding (``--low-vram``, ``--compile``, ``--cuda-graphs``), so a
render that ran out of memory goes on with ``--low-vram``. A V3 request (:func:`v3_checkpoint_for`) has the same
digest over its own fields (its ``models`` folder: through its weight files) plus the chunking.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..io.file_safety import regular_target
from ..pipeline.resume import StepCheckpoint, check_resumable, state_path

NOT_SHAPING = ("output", "resumable", "download", "low_vram", "compile", "cuda_graphs", "models")
INPUT_FIELDS = ("reference", "video", "audio", "landmarks", "pose", "gesture_library", "mediapipe_model", "lora")


def _stat_lines(path: Path) -> list[str]:
    """One line per file under ``path`` (itself, or every file of a folder): path, size, modification time."""
    if not path.exists():
        return [f"{path} missing"]
    files = [path] if not path.is_dir() else sorted(p for p in path.rglob("*") if p.is_file())
    out = []
    for p in files:
        st = os.stat(p)
        out.append(f"{p.resolve()} {st.st_size} {st.st_mtime_ns}")
    return out


def fingerprint(req, settings, device, dtype, weight_files: dict, extra: dict | None = None) -> str:
    """``extra``: more that shapes the output, hashed when given (a V3 render's chunk layout)."""
    from .. import __version__

    fields = {k: v for k, v in asdict(req).items() if k not in NOT_SHAPING}
    lines = [json.dumps(fields, sort_keys=True, default=str), json.dumps(asdict(settings), sort_keys=True, default=str),
             f"{torch.device(device).type} {dtype} torch {torch.__version__} echomimic {__version__}"]
    for name in INPUT_FIELDS:
        value = getattr(req, name, None)
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v and v != "auto":
                lines += _stat_lines(Path(v).expanduser())
    for comp in sorted(weight_files):
        if weight_files[comp] is not None:
            lines += [comp] + _stat_lines(Path(weight_files[comp]))
    if extra:
        lines.append(json.dumps(extra, sort_keys=True, default=str))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def check_request(req) -> None:
    """Before any work: a state name that cannot be written, or DeepCache, is refused."""
    if getattr(req, "resumable", False):
        check_resumable(req.deep_cache)
        regular_target(state_path(req.output))  # refuses a folder, device or pipe where the state file goes


def checkpoint_for(plan, weight_files: dict) -> StepCheckpoint | None:
    req = plan.request
    if not getattr(req, "resumable", False):
        return None
    key = fingerprint(req, plan.settings, plan.device, plan.dtype, weight_files)
    return StepCheckpoint(state_path(plan.output), key)


def v3_checkpoint_for(plan, models, settings, chunk: int, overlap: int):
    """The kept chunks of a long resumable V3 render (``plan``: jobs.animate_v3.V3Plan), or None without --resumable."""
    from ..pipeline.wan.chunk_state import ChunkCheckpoint, chunk_state_path
    from ..pipeline.wan.long import chunk_sizes

    req = plan.req
    if not getattr(req, "resumable", False):
        return None
    sizes = chunk_sizes(plan.frames, chunk, overlap)
    key = fingerprint(req, settings, models.device, models.dtype, models.files,
                      extra={"frames": plan.frames, "chunk": chunk, "overlap": overlap})
    w, h = plan.size
    return ChunkCheckpoint(chunk_state_path(plan.output), key, sizes, (h, w), overlap, settings.color_transfer)
