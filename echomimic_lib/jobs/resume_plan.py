"""``animate --resumable``: which request a kept render state belongs to (the state itself: pipeline.resume for V1/V2,
pipeline.wan.chunk_state for a long EchoMimicV3 clip).

The fingerprint is a digest of everything that shapes the frames: the request's options, the sampler settings,
each input file and weight file (path, size, modification time: a changed file is another input), the device
type, the dtype and the torch and pack versions. Left out on purpose: the output name, ``--offline`` and the
options whose output is the same up to float rounding (``--low-vram``, ``--compile``, ``--cuda-graphs``), so a
render that ran out of memory goes on with ``--low-vram``. A V3 request (:func:`v3_checkpoint_for`) has the same
digest over its own fields (its ``models`` folder: through its weight files) plus the chunking. The V1/V2 sampler
nodes' ``resumable`` (``nodes/resume.py``) have no input files: :func:`request_digest` takes the digest of their input
tensors (:func:`value_digest`) among its fields.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, fields as dataclass_fields, is_dataclass
from pathlib import Path

import numpy as np
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
    fields = {k: v for k, v in asdict(req).items() if k not in NOT_SHAPING}
    if "vae_dtype" in fields and fields["vae_dtype"] in (None, fields.get("dtype")):  # V3's, added later: the VAE in
        del fields["vae_dtype"]  # the networks' precision, as before it, leaves the digests of earlier renders as they were
    inputs = []
    for name in INPUT_FIELDS:
        value = getattr(req, name, None)
        inputs += [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v and v != "auto"]
    return request_digest(fields, settings, device, dtype, weight_files, inputs, extra)


def request_digest(fields: dict, settings, device, dtype, weight_files: dict, input_files=(), extra: dict | None = None) -> str:
    """The digest of one render: ``fields`` (its options, JSON), the sampler ``settings`` (a dataclass; its
    ``cuda_graphs`` is left out: same output up to float rounding), device type, dtype, versions, each input file and
    weight file by path, size and modification time, and ``extra``. The EchoMimic nodes, which have no input files,
    hash their input tensors into ``fields`` (:func:`value_digest`)."""
    from .. import __version__

    shaping = asdict(settings)
    if "cuda_graphs" in shaping:
        shaping["cuda_graphs"] = False
    lines = [json.dumps(fields, sort_keys=True, default=str), json.dumps(shaping, sort_keys=True, default=str),
             f"{torch.device(device).type} {dtype} torch {torch.__version__} echomimic {__version__}"]
    for v in input_files:
        lines += _stat_lines(Path(v).expanduser())
    for comp in sorted(weight_files):
        if weight_files[comp] is not None:
            lines += [comp] + _stat_lines(Path(weight_files[comp]))
    if extra:
        lines.append(json.dumps(extra, sort_keys=True, default=str))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def value_digest(value) -> str:
    """A digest of a value made of tensors, arrays, dataclasses, dicts, sequences and plain numbers / strings: the
    bytes of every tensor and array (a CPU copy of a device tensor; a CPU tensor is read in place) with its dtype
    and shape, every field and key by name. A dataclass field declared ``repr=False`` (a report) is left out.
    blake2b reads about 1 GB/s on one core: the minutes of audio and the picture a render takes cost a fraction of a
    second."""
    h = hashlib.blake2b(digest_size=32)
    _feed(h, value, set())
    return h.hexdigest()


def _feed(h, v, seen: set) -> None:
    if v is None or isinstance(v, (bool, int, float, str, Path, torch.dtype, torch.device)):
        h.update(f"{type(v).__name__}:{v!r};".encode())
    elif isinstance(v, np.generic):
        _feed(h, v.item(), seen)
    elif isinstance(v, torch.Tensor):
        t = v.detach().to("cpu").contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(v, np.ndarray) and v.dtype != object:
        a = np.ascontiguousarray(v)
        h.update(f"array {a.dtype.str} {a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8))
    elif id(v) in seen:  # a cycle
        h.update(b"<seen>;")
    else:
        seen.add(id(v))
        if is_dataclass(v) and not isinstance(v, type):
            h.update(f"{type(v).__qualname__}{{".encode())
            for f in dataclass_fields(v):
                if f.repr:
                    h.update(f"{f.name}=".encode())
                    _feed(h, getattr(v, f.name), seen)
            h.update(b"};")
        elif isinstance(v, dict):
            h.update(f"dict {len(v)}{{".encode())
            for key in sorted(v, key=str):
                _feed(h, key, seen)
                _feed(h, v[key], seen)
            h.update(b"};")
        elif isinstance(v, (set, frozenset)):
            h.update(f"set {len(v)}{{{','.join(sorted(value_digest(x) for x in v))}}};".encode())
        elif isinstance(v, (list, tuple, np.ndarray)):
            h.update(f"{type(v).__name__} {len(v)}[".encode())
            for x in v:
                _feed(h, x, seen)
            h.update(b"];")
        elif hasattr(v, "__dict__"):
            _feed(h, {"<type>": type(v).__qualname__, **vars(v)}, seen)
        else:  # (no such value reaches the sampler today) its type only: never an address from its repr
            h.update(f"<{type(v).__qualname__}>;".encode())
        seen.discard(id(v))


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
    """The kept chunks of a long resumable V3 render (``plan``: jobs.v3_plan.V3Plan), or None without --resumable."""
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
