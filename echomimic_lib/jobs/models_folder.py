"""Where a job finds its weights: ``--models``, else $ECHOMIMIC_MODELS or ~/.cache/echomimic (a file there refused),
and the folders under it that ``--pose VIDEO`` (DWPose) and ``--pose auto`` (the gesture library) read."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import EchoMimicError


def default_models_dir() -> Path:
    """$ECHOMIMIC_MODELS (a ``~`` no shell expanded is the home folder; set but empty counts as unset, never the
    current folder), else ~/.cache/echomimic."""
    return Path(os.environ.get("ECHOMIMIC_MODELS") or Path.home() / ".cache" / "echomimic").expanduser()


def models_root(req) -> Path:
    """``--models``, else $ECHOMIMIC_MODELS or ~/.cache/echomimic (a smoke run: its ``tiny/``); a file there is refused."""
    if req.models:
        return check_models_folder(Path(req.models).expanduser(), "--models")
    flag = "$ECHOMIMIC_MODELS" if os.environ.get("ECHOMIMIC_MODELS") else "the default models folder"
    root = check_models_folder(default_models_dir(), flag)
    return root / "tiny" if getattr(req, "smoke", False) else root


def check_models_folder(root: Path, flag: str = "--models") -> Path:
    """A models folder that is a file (a weight file or the wrong argument given as ``--models``) is named as such,
    before anything looks for, writes or downloads weights under it; so is a symbolic link loop, a link to nothing and
    a path through a file (none can be read or made)."""
    _refuse_unreachable(root, flag)
    if root.exists() and not root.is_dir():
        raise EchoMimicError(f"{flag} {root}: is a file, not a folder; {_GIVE}")
    if root.is_dir():
        entries = _entries(root)
        if not _holds_models(entries):
            _refuse_a_folder_beside_the_models(root, entries, flag)
    return root


_GIVE = ("give the models folder (the one `echomimic download --models DIR` fills, with v1/, v2/, sd-vae-ft-mse/ ... "
         "in it; a new folder is made on first use).")


def _refuse_unreachable(root: Path, flag: str) -> None:
    """A path no folder can be at: a link loop, a link to nothing (a download could not make the folder through it),
    a file on the way (``weights.pth/models``). A path that is not there yet is fine: it is made on first use."""
    try:
        os.stat(root)
        code = None
    except OSError as exc:
        code = exc.errno
    if code is None:
        if os.path.isdir(root) and not os.access(root, os.X_OK):  # no file in it can be reached (r-less but x: still can)
            raise EchoMimicError(f"{flag} {root}: the folder cannot be read (permission denied); let this user read it "
                                 f"(chmod u+rx, or run as its owner), or {_GIVE}")
        return
    if code == errno.ELOOP:
        raise EchoMimicError(f"{flag} {root}: a symbolic link loop (a link that leads back to itself); point the link at "
                             f"the real folder, or {_GIVE}")
    if code == errno.ENOTDIR:
        part = next((p for p in (root, *root.parents) if p.is_file()), None)
        raise EchoMimicError(f"{flag} {root}: {part or 'a part of the path'} is a file, not a folder; {_GIVE}")
    if os.path.islink(root):
        raise EchoMimicError(f"{flag} {root}: a link to {os.readlink(root)}, which is not there; make that folder, or "
                             f"{_GIVE}")


_PARTS = ("v1", "v2", "v3-flash", "sd-vae-ft-mse", "audio_processor")  # what `echomimic download` / make-tiny put there
_OURS = _PARTS + ("tiny", "tiny-v3", "mediapipe", "dwpose", "poses", "loras", "metrics", "prompt_cache", "echomimic-tiny.json")
_WEIGHT_SUFFIXES = (".pth", ".safetensors", ".bin", ".pt", ".ckpt", ".onnx", ".task")
_SCAN = 500  # entries of a folder looked at (a home folder given as --models is not walked whole)


def _entries(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return [Path(e.path) for _, e in zip(range(_SCAN), it)]
    except OSError:
        return []


def _holds_models(entries: list[Path]) -> bool:
    """Anything a models folder holds: a part's folder, a weight file (a release's flat ``pretrained_weights/``)."""
    return any(p.name in _OURS or p.suffix.lower() in _WEIGHT_SUFFIXES for p in entries)


def _refuse_a_folder_beside_the_models(root: Path, entries: list[Path], flag: str) -> None:
    """``--models`` given the folder above the models folder (``ComfyUI/models``, the project folder) or a Hugging
    Face download cache: it holds no weights, so the missing-file messages would send the user to download (gigabytes)
    into it; the folder that holds them is named instead (``entries``: what :func:`_entries` found in ``root``)."""
    hub = sorted(p.name for p in entries if p.name.startswith("models--BadToBest--") and p.is_dir())
    if hub:
        raise EchoMimicError(f"{flag} {root}: a Hugging Face download cache ({', '.join(hub)}: files under "
                             "snapshots/<commit>/, links into blobs/), not a models folder; EchoMimic reads the layout of "
                             "`echomimic download --weights v1_audio --models DIR` (v1/, v2/, sd-vae-ft-mse/, "
                             "audio_processor/): run that with a models folder of your choice, or `hf download ... "
                             "--local-dir DIR/v1` as README.md shows.")
    inside = sorted(p for p in entries if p.is_dir() and any((p / part).is_dir() for part in _PARTS))
    if inside:
        raise EchoMimicError(f"{flag} {root}: holds no EchoMimic weights, but {inside[0]} does (with "
                             f"{', '.join(part + '/' for part in _PARTS if (inside[0] / part).is_dir())}): give "
                             f"{flag if flag.startswith('-') else '--models'} {inside[0]}.")


def dwpose_roots(req) -> list[Path]:
    """Where ``--pose VIDEO`` finds the DWPose models: the models folder (a smoke run: also the default one)."""
    smoke = getattr(req, "smoke", False)
    return [models_root(req)] + ([default_models_dir()] if smoke and not req.models else [])


def gesture_library_dirs(req) -> list[Path]:
    """``--gesture-library``, else the models folder's ``poses/`` (``--models``, else $ECHOMIMIC_MODELS or ~/.cache/echomimic)."""
    if getattr(req, "gesture_library", None):
        return [Path(req.gesture_library).expanduser()]
    root = check_models_folder(Path(req.models).expanduser(), "--models") if req.models else default_models_dir()
    return [root / "poses"]
