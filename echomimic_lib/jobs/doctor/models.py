"""``echomimic doctor``, the models folder: each weight set and variant (ready, missing files, tiny random weights,
a broken file), the shared parts (VAE, whisper-tiny, MediaPipe and DWPose (:mod:`.detectors`), the gesture library
``poses/``), and for each gap the exact command that fills it.

Found with the code that loading and ``echomimic download`` use (:mod:`echomimic_lib.io.model_files`,
:func:`echomimic_lib.models.wan.sources.missing_parts`, :func:`resolve_model`, :func:`resolve_dwpose_models`,
:func:`find_sources`), so a file listed here as missing is exactly one ``echomimic download`` fetches. Only looks:
file presence and sizes, and at most a weight file's first bytes, .safetensors header or zip index (nothing is
downloaded, written or loaded).
"""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from ...errors import EchoMimicError, MissingWeightsError
from ...io.json_file import loads_json
from ...io.model_files import (VAE_DIRS, WHISPER_FILES, _downloads, _find, _find_vae, is_tiny_folder, resolve_files,
                               search_dirs)
from ...modes import WEIGHT_SETS
from ...models.wan.sources import V3_FOLDER, missing_parts, resolved_files
from .shell import echomimic, fix as with_remarks, remove, then

VARIANTS = ("normal", "acc")
ALL_WEIGHTS = (*WEIGHT_SETS, V3_FOLDER)
SAFETENSORS_HEADER_MAX = 100_000_000  # what the safetensors library reads at most
V3_TINY_MARKER = ".echomimic-tiny-v3"  # echomimic_lib.models.wan.tiny.MARKER (not imported: that module builds networks)


def download_command(weights: str, variant: str | None, root: Path, default_root: Path | None) -> str:
    """The ``echomimic download`` line that fetches what ``root`` lacks of one set (``--models`` only off the default)."""
    cmd = ["download", "--weights", weights] + (["--variant", variant] if variant else [])
    return echomimic(*cmd, *models_args(root, default_root))


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


class _Unreadable(Exception):
    """A weight file's header said unreadable (the words are :func:`file_problem`'s answer)."""


def file_problem(path: Path) -> str | None:
    """What is wrong with a weight file, read from its first bytes (and a .safetensors header or a
    zip-format .pth's index); None when it looks whole."""
    if path.is_dir():
        return None
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(64)
            if size == 0:
                return "empty file"
            if head.startswith(b"version https://git-lfs"):
                return "a Git LFS pointer, not the weights (the repository was cloned without git-lfs)"
            if path.suffix == ".safetensors":
                n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
                if n < 2 or 8 + n > size:
                    return f"not a whole .safetensors file ({size} bytes; a broken-off download?)"
                if n > SAFETENSORS_HEADER_MAX:
                    return f"not a .safetensors file (its header would be {n} bytes, over the {SAFETENSORS_HEADER_MAX} one may be)"
                fh.seek(8)
                header = loads_json(fh.read(n), "its .safetensors header", "is damaged", "a broken-off download?",
                                    _Unreadable, expect=dict)
                end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
                if 8 + n + end > size:
                    return f"truncated: {size} bytes of {8 + n + end} (a broken-off download?)"
            elif path.suffix in (".pth", ".pt", ".bin") and not head.startswith((b"PK\x03\x04", b"\x80")):
                return "not a PyTorch weight file (neither a zip archive nor a pickle)"
            elif path.suffix in (".pth", ".pt", ".bin") and head.startswith(b"PK\x03\x04"):
                return _zip_problem(path, size)
    except _Unreadable as exc:
        return str(exc)
    except (OSError, ValueError, KeyError, TypeError, IndexError, OverflowError) as exc:  # (OverflowError: an offset 1e999)
        return f"unreadable ({exc})"
    return None


def _zip_problem(path: Path, size: int) -> str | None:
    """A zip-format torch file (torch.save since 1.6) whose end is missing: its central directory (the archive's last
    bytes) is not there, or names data past the file's end. Reads only that directory, not the tensors. (The legacy
    pickle format, which starts with 0x80, has no such index and is left to the loader.)"""
    try:
        with zipfile.ZipFile(path) as zf:
            ends = [i.header_offset + i.compress_size for i in zf.infolist()]
            start_dir = zf.start_dir
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        return f"truncated or damaged: {size} bytes, no whole zip index at its end ({exc}; a broken-off download?)"
    if not ends or max(ends) > start_dir:
        return f"truncated or damaged: {size} bytes, its zip index names data it does not hold (a broken-off download?)"
    return None


def _broken(files: dict, root: Path) -> list[dict]:
    out = []
    for comp, p in files.items():
        if p is not None and Path(p).is_file() and (why := file_problem(Path(p))):
            out.append({"component": comp, "path": str(p), "problem": why})
    return out


def _rel(root: Path, p: Path) -> str:
    try:
        return str(Path(p).relative_to(root))
    except ValueError:
        return str(p)


def check_weight_set(root: Path, weights: str, variant: str, default_root: Path | None = None, need=None) -> dict:
    """One V1/V2 set and variant, resolved exactly as :func:`echomimic_lib.model_set.load_models` does (``need``: only
    these components, e.g. without the VAE, which the ComfyUI loader may take from elsewhere)."""
    root = Path(root)
    row = {"weights": weights, "variant": variant, "status": "ready", "missing": [], "broken": [], "bytes": 0, "fix": None}
    try:
        found = resolve_files(root, weights, variant, **({"need": need} if need else {}))
    except MissingWeightsError as err:  # what `echomimic download` would fetch: ensure_weights' own list
        fetch = [f for d in getattr(err, "details", []) for f in _downloads(root, weights, d)]
        row.update(status="missing", missing=[_rel(root, f.dest) for f in fetch],
                   fix=download_command(weights, variant, root, default_root))
        return row
    weights_only = {k: v for k, v in found.items() if k not in ("unet_config", "inference_config")}
    row["bytes"] = sum(_size(Path(p)) for p in weights_only.values() if p is not None)
    row["broken"] = _broken(weights_only, root)
    if row["broken"]:
        row["status"] = "broken"
        row["fix"] = then(remove(b["path"] for b in row["broken"]), download_command(weights, variant, root, default_root))
    elif is_tiny_folder(root):
        row["status"] = "tiny"
    return row


def check_v3(root: Path, default_root: Path | None = None, parts: tuple[str, ...] | None = None, fix: str | None = None,
             folder: Path | None = None) -> dict:
    """EchoMimicV3 flash-pro in ``root/v3-flash`` (or ``folder``), as :func:`echomimic_lib.model_set.resolve_v3` finds it
    (``parts``: only these parts, e.g. the three the ComfyUI loader reads; ``fix``: the line that fills a gap, if not
    the download)."""
    folder = Path(folder) if folder is not None else Path(root) / V3_FOLDER
    row = {"weights": V3_FOLDER, "variant": None, "status": "ready", "missing": [], "broken": [], "bytes": 0, "fix": None}
    fix = fix or download_command(V3_FOLDER, None, Path(root), default_root)
    try:
        missing = missing_parts(folder, parts=parts)
    except ValueError as exc:  # an unreadable weight index
        row.update(status="broken", broken=[{"component": "index", "path": str(folder), "problem": str(exc)}], fix=fix)
        return row
    if missing:  # ensure_v3 fetches these (the index first; its shards in a second round)
        at = _rel(Path(root), folder)
        files = [f"{at}/{m.source.folder}/{n}" for m in missing for n in m.files]
        files += [f"{at}/{m.source.folder}/(the shards its index lists)" for m in missing if m.shards_unknown]
        row.update(status="missing", missing=files, fix=fix)
        return row
    found = {k: p for k, p in resolved_files(folder).items() if parts is None or k in parts}
    row["bytes"] = sum(_size(Path(p)) for p in found.values())
    weights = {k: Path(p) / "diffusion_pytorch_model.safetensors" if k == "base" else Path(p) for k, p in found.items()}
    row["broken"] = _broken(weights, Path(root))
    if row["broken"]:
        row.update(status="broken", fix=then(remove(b["path"] for b in row["broken"]), fix))
    elif (folder / V3_TINY_MARKER).is_file():
        row["status"] = "tiny"
    return row


def _shared_dirs(root: Path) -> list[Path]:
    dirs: list[Path] = []
    for ws in WEIGHT_SETS.values():
        dirs += [d for d in search_dirs(root, ws) if d not in dirs]
    return dirs


def check_shared(root: Path, sets: list[dict], default_root: Path | None = None) -> list[dict]:
    """The parts several modes share; the fix of a missing VAE / whisper is the download line of a set that lacks it."""
    root = Path(root)
    rows = []
    for name, names, what in (("vae", VAE_DIRS, "SD VAE (sd-vae-ft-mse), V1/V2"),
                              ("whisper", WHISPER_FILES, "whisper-tiny audio encoder, V1/V2")):
        p = _find_vae(_shared_dirs(root)) if name == "vae" else _find(_shared_dirs(root), names)
        row = {"part": name, "what": what, "status": "ready" if p else "missing", "path": str(p) if p else None,
               "bytes": _size(p) if p else 0, "missing": [], "fix": None}
        if p is None:  # what ensure_weights fetches for it, and the line of a set that lacks it (any V1/V2 set does)
            row["missing"] = [_rel(root, f.dest) for f in _downloads(root, "v1_audio", {"component": name})]
            lacking = [s["fix"] for s in sets if s["status"] == "missing" and set(row["missing"]) <= set(s["missing"])]
            row["fix"] = lacking[0] if lacking else download_command("v1_audio", "normal", root, default_root)
        rows.append(row)
    rows.append(_mediapipe(root))
    rows.append(_dwpose(root))
    rows.append(_gestures(root, default_root))
    return rows


def _mediapipe(root: Path) -> dict:
    from .detectors import mediapipe_row

    return mediapipe_row(root)


def _dwpose(root: Path) -> dict:
    from .detectors import dwpose_row

    return dwpose_row(root)


def models_args(root: Path, default_root: Path | None) -> list:
    """``--models ROOT`` for a command line, unless ROOT is the command line's own default."""
    if default_root is None or _real(root) != _real(default_root):
        return ["--models", str(root)]
    return []


def _real(path) -> Path:
    """The path's real place; as written (made absolute) when it cannot be followed (a link loop: $ECHOMIMIC_MODELS's
    default, never the --models in use, which the command line checked)."""
    path = Path(path).expanduser()
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def poses_command(lib: Path, models: list) -> str:
    """The ``echomimic poses`` line that makes a pose folder in ``lib`` (DWPose read from the ``models`` root)."""
    return echomimic("poses", "--video", "DRIVING.mp4", "-o", lib / "NAME", *models)


def _gestures(root: Path, default_root: Path | None = None) -> dict:
    from ...pose.gestures.library import find_sources

    lib = root / "poses"
    row = {"part": "poses", "what": "gesture library, V2 --pose auto / --retime continue (optional)",
           "status": "ready", "path": str(lib), "bytes": 0, "missing": [], "fix": None, "sequences": 0}
    try:
        row["sequences"] = len(find_sources(lib))
        row["bytes"] = _size(lib)
    except EchoMimicError:
        row.update(status="missing", path=None, missing=["poses/<name>/0.npy, 1.npy, ..."],
                   fix=with_remarks(poses_command(lib, models_args(root, default_root)),
                                    "or copy EchoMimicV2's assets/halfbody_demo/pose/* there"))
    return row
