"""Model and data folders of the pack, and safe resolution of names that come from a workflow.

A name from a workflow (a VAE file, a weights folder, a pose folder) is only ever looked up inside the
folders registered for it: absolute paths, ``..`` parts and names that resolve (through a symlink)
outside their folder are refused with a message saying what to do instead.

Folders (``models`` is ComfyUI's models directory; extra_model_paths.yaml may add ``echomimic:`` roots)::

    models/echomimic/v1, v2, sd-vae-ft-mse/, audio_processor/   weights (see docs/comfyui.md)
    models/echomimic/poses/<name>/0.npy ...                     V2 hand-pose folders (also input/echomimic_poses/)
    models/echomimic/loras/<name>.safetensors                   LoRA adapters (echomimic-train export of a LoRA run)
    models/loras/<name>.safetensors                             Wan2.1 1.3B LoRAs for V3 (ComfyUI's own LoRA folder)
    models/echomimic/mediapipe/, models/echomimic/dwpose/       face-landmark and DWPose detector models
    models/vae/                                                 a single-file SD VAE may be chosen from here
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..echomimic_lib.errors import EchoMimicError
from ..echomimic_lib.io.file_safety import resolved_outside
from . import comfy_bridge as C

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".sft")
POSE_SUBFOLDER = "poses"
LORA_SUBFOLDER = "loras"
INPUT_POSE_FOLDER = "echomimic_poses"
_DRIVE = re.compile(r"^[A-Za-z]:")


def echomimic_roots() -> list[Path]:
    return C.folder_roots(C.FOLDER)


def vae_roots() -> list[Path]:
    return C.folder_roots("vae")


def pose_roots() -> list[Path]:
    return [r / POSE_SUBFOLDER for r in echomimic_roots()] + [C.input_dir() / INPUT_POSE_FOLDER]


def safe_child(root: Path, name: str, what: str) -> Path:
    """``root / name`` if ``name`` is a plain relative name that stays inside ``root``; else a clear error."""
    if not isinstance(name, (str, os.PathLike)):
        raise EchoMimicError(f"{what} {name!r} is not a name (a {type(name).__name__}): pick one from the list.")
    text = os.fspath(name)
    if not isinstance(text, str) or "\x00" in text:
        raise EchoMimicError(f"{what} {text!r} holds a NUL byte (or is not text), which no file name can hold: pick a name "
                             "from the list.")
    try:
        os.fsencode(text)
    except UnicodeEncodeError as exc:  # a JSON "\ud800": was a UnicodeEncodeError from deep in the look-up
        raise EchoMimicError(f"{what} {text!r} holds {exc.object[exc.start]!r}, a character no file name on this system can "
                             "hold (half of a surrogate pair): pick the name from the list again.") from None
    text = text.replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or text.startswith("/") or _DRIVE.match(text) or ".." in parts:
        raise EchoMimicError(
            f"{what} '{name}' is not a name inside {root}: absolute paths and '..' are refused. "
            f"Put the file or folder into {root} and pick it from the list.")
    if any(len(p.encode("utf-8", "surrogatepass")) > 255 for p in parts):
        raise EchoMimicError(f"{what} '{text[:60]}...' has a part longer than 255 bytes, which no file system allows: pick a "
                             "name from the list.")
    candidate = root.joinpath(*parts)
    try:
        real = resolved_outside(root, candidate)
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13), a name too long
        raise EchoMimicError(f"{what} '{name}' cannot be looked up in {root} ({exc}): a symlink that points to itself? "
                             f"Remove or fix that link in {root}.") from exc
    if real is not None:
        raise EchoMimicError(
            f"{what} '{name}' resolves to {real}, outside {root} (a symlink pointing elsewhere?). Copy it into "
            f"{root}, or add its folder to ComfyUI's extra_model_paths.yaml.")
    return candidate


def find_named(roots: list[Path], name: str, what: str, want_dir: bool = False) -> Path | None:
    """The first ``root / name`` that exists (a folder if ``want_dir``, else a file), checked for escapes."""
    for root in roots:
        p = safe_child(root, name, what)
        if (p.is_dir() if want_dir else p.is_file()):
            return p
    return None


def file_stamp(roots: list[Path], name) -> str:
    """What a node's ``IS_CHANGED`` gives for a picked file: its path, size and modification time, so that ComfyUI runs
    the node again when the file is written again under the same name (a LoRA exported again); never an exception
    (ComfyUI asks before the node runs, and the node names a bad or missing name itself)."""
    try:
        found = find_named(roots, name, "file") if isinstance(name, str) and name.strip() else None
        st = found.stat() if found is not None else None
    except (EchoMimicError, OSError, ValueError):
        found = st = None
    return f"{found}|{st.st_size}|{st.st_mtime_ns}" if st is not None else f"not found: {name!r}"


def _stat_line(name, stat) -> str:
    """``name|size|mtime_ns`` of one file (``stat`` its stat call), or ``name|unreadable`` (a link to itself, a file
    removed meanwhile)."""
    try:
        st = stat()
        return f"{name}|{st.st_size}|{st.st_mtime_ns}"
    except (OSError, ValueError):
        return f"{name}|unreadable"


def _tree_lines(path: Path, depth: int, out: list[str]) -> None:
    """Name, size and modification time of each file in ``path`` (and in its sub-folders, ``depth`` levels down); hidden
    names left out (a library's own .gestures.npz index, written by the node); no file is opened."""
    try:
        with os.scandir(path) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except NotADirectoryError:  # a .npz sequence: the file itself
        out.append(_stat_line(path, path.stat))
        return
    except (OSError, ValueError):
        out.append(f"{path}|unreadable")
        return
    out.append(f"{path}/")
    for e in entries:
        try:
            is_dir = e.is_dir()
        except (OSError, ValueError):
            is_dir = False  # (its stat line says unreadable)
        if is_dir and depth > 0:
            _tree_lines(Path(e.path), depth - 1, out)
        else:
            out.append(f"{e.name}/" if is_dir else _stat_line(e.name, e.stat))


def folder_stamp(folders: list[Path], depth: int = 1) -> str:
    """What a node's ``IS_CHANGED`` gives for picked folders (pose folders, a gesture library): the names, sizes and
    modification times of their files, so that ComfyUI runs the node again when frames are added or replaced; cheap
    (no file is read) and never an exception."""
    import hashlib

    out: list[str] = []
    for folder in folders:
        _tree_lines(Path(folder), depth, out)
    return f"{len(out)} entries|" + hashlib.sha1("\n".join(out).encode("utf-8", "surrogatepass")).hexdigest()


def pose_stamp(name) -> str:
    """The frames' fingerprint of a picked pose folder (or .npz), by name; a name that is no pose folder: a string saying so
    (the node names the problem itself when it runs)."""
    from ..echomimic_lib.pose.gestures.library import fingerprint  # (the gesture index's own: frames' names, sizes, times)

    try:
        return fingerprint(resolve_pose_folder(name))
    except (EchoMimicError, OSError, ValueError, TypeError):
        return f"not found: {name!r}"


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:  # missing or unreadable: nothing to list (INPUT_TYPES must never fail)
        return []


def _subdirs(root: Path) -> list[Path]:
    return [p for p in _entries(root) if p.is_dir()]


def weight_folders() -> list[str]:
    """Sub-folders of the echomimic roots holding denoiser weights (e.g. 'v1', 'v2', 'my_finetune/v2')."""
    names = set()
    for root in echomimic_roots():
        for d in _subdirs(root) + [s for d in _subdirs(root) for s in _subdirs(d)]:
            if any(f.name.startswith("denoising_unet") and f.suffix in WEIGHT_SUFFIXES for f in _entries(d)):
                names.add(d.relative_to(root).as_posix())
    return sorted(names)


def vae_files() -> list[str]:
    """Single-file VAEs in models/vae (relative names, as ComfyUI lists them)."""
    return sorted(f for f in C.filename_list("vae") if Path(f).suffix in WEIGHT_SUFFIXES)


def lora_roots() -> list[Path]:
    return [r / LORA_SUBFOLDER for r in echomimic_roots()]


def lora_files() -> list[str]:
    """LoRA adapters (.safetensors from ``echomimic-train export``) in models/echomimic/loras/, sub-folders included."""
    names = set()
    for root in lora_roots():
        try:
            found = [f for f in root.rglob("*.safetensors") if f.is_file()]
        except OSError:
            continue
        names.update(f.relative_to(root).as_posix() for f in found if not any(x.startswith(".") for x in f.relative_to(root).parts))
    return sorted(names)


def resolve_lora(name: str) -> Path:
    found = find_named(lora_roots(), name, "LoRA")
    if found is None:
        raise EchoMimicError(f"LoRA '{name}' not found in {', '.join(map(str, lora_roots()))}. Put the .safetensors written by "
                             "`echomimic-train export` there, or choose 'none'.")
    return found


def wan_lora_roots() -> list[Path]:
    """ComfyUI's own LoRA folders (models/loras and extra_model_paths.yaml's): where Wan LoRAs for V3 live."""
    return C.folder_roots("loras")


def wan_lora_files() -> list[str]:
    """The .safetensors files of ComfyUI's loras folders, as ComfyUI lists them (relative names)."""
    return sorted(f for f in C.filename_list("loras") if Path(f).suffix == ".safetensors")


def resolve_comfy_lora(name: str) -> Path:
    found = find_named(wan_lora_roots(), name, "LoRA")
    if found is None:
        raise EchoMimicError(f"LoRA '{name}' not found in {', '.join(map(str, wan_lora_roots()))}. Put the Wan2.1 1.3B LoRA "
                             "(.safetensors) there, or choose 'none'.")
    return found


def default_vae_file() -> Path | None:
    """An SD 'ft-mse' VAE in models/vae (used when the echomimic folder has no sd-vae-ft-mse/)."""
    for name in vae_files():
        if "ft-mse" in name.lower() or "echomimic" in name.lower():
            return find_named(vae_roots(), name, "VAE")
    return None


def pose_folders() -> list[str]:
    """Hand-pose folders (folders of N.npy frames) and .npz sequences found in the pose roots."""
    names = set()
    for root in pose_roots():
        for d in _subdirs(root):
            if any(f.suffix == ".npy" for f in _entries(d)):
                names.add(d.name)
        names.update(p.name for p in _entries(root) if p.suffix == ".npz")
    return sorted(names)


def resolve_pose_folder(name: str) -> Path:
    for root in pose_roots():
        p = safe_child(root, name, "pose folder")
        if p.exists():
            return p
    where = ", ".join(str(r) for r in pose_roots())
    raise EchoMimicError(
        f"pose folder '{name}' not found (looked in {where}). Put a folder of 0.npy, 1.npy, ... frames there (for "
        "example EchoMimicV2's assets/halfbody_demo/pose/01), or connect driving video frames to extract poses.")
