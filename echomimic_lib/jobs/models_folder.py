"""Where a job finds its weights: ``--models``, else $ECHOMIMIC_MODELS or ~/.cache/echomimic (a file there refused),
and the folders under it that ``--pose VIDEO`` (DWPose) and ``--pose auto`` (the gesture library) read."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import EchoMimicError


def default_models_dir() -> Path:
    return Path(os.environ.get("ECHOMIMIC_MODELS", Path.home() / ".cache" / "echomimic"))


def models_root(req) -> Path:
    """``--models``, else $ECHOMIMIC_MODELS or ~/.cache/echomimic (a smoke run: its ``tiny/``); a file there is refused."""
    if req.models:
        return check_models_folder(Path(req.models).expanduser(), "--models")
    flag = "$ECHOMIMIC_MODELS" if os.environ.get("ECHOMIMIC_MODELS") else "the default models folder"
    root = check_models_folder(default_models_dir(), flag)
    return root / "tiny" if getattr(req, "smoke", False) else root


def check_models_folder(root: Path, flag: str = "--models") -> Path:
    """A models folder that is a file (a weight file or the wrong argument given as ``--models``) is named as such,
    before anything looks for, writes or downloads weights under it."""
    if root.exists() and not root.is_dir():
        raise EchoMimicError(f"{flag} {root}: is a file, not a folder; give the models folder (the one `echomimic download "
                             "--models DIR` fills, with v1/, v2/, sd-vae-ft-mse/ ... in it; a new folder is made on first use).")
    return root


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
