"""Where ``echomimic-train export`` / ``v3-export`` write, checked before anything is read: a full model's file set
goes into a folder, a LoRA into one ``.safetensors`` file (DEST itself, or a file named after the run in the folder DEST).
A DEST that is a file where a folder is meant, or a new name with another weight suffix (``lora.pt``, ``model.pth``:
each became a *folder* of that name), is refused with the fix."""
from __future__ import annotations

import os
from pathlib import Path

from .config import ConfigError

# names a user may give a weight file: as DEST they mean a file, never a folder of that name
FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensor", ".safetensors", ".sft", ".lora")


def _file_on_the_way(dest: Path) -> Path | None:
    """DEST itself or a folder above it that exists and is not a folder (``DEST/...`` cannot be created)."""
    for p in (dest, *dest.parents):
        if os.path.lexists(p):
            return None if p.is_dir() else p
    return None


def check_export_folder(dest: Path) -> None:
    """The official file set goes into a folder: DEST a file (or under one), or a new DEST named like a weight file
    (``model.safetensors``, which would become a folder of that name), is refused before anything is read."""
    blocked = _file_on_the_way(Path(dest))
    if blocked is not None:
        raise ConfigError(f"DEST {dest}: {blocked} is a file, not a folder; the export is a folder of files (the networks' "
                          ".pth / .safetensors, configs, VAE, whisper): give a new or existing folder")
    if not os.path.lexists(dest) and Path(dest).suffix.lower() in FILE_SUFFIXES:
        raise ConfigError(f"DEST {dest}: the export of a full model is a folder of files (one per network, as a release's "
                          f"pretrained_weights/), not one {Path(dest).suffix} file; give a folder, e.g. {Path(dest).with_suffix('')}")


def lora_file_target(dest: Path, default_name: str) -> Path:
    """Where a LoRA export writes: DEST itself when it names a ``.safetensors`` file (any case), else the folder DEST,
    ``default_name`` inside. A DEST that is a file of another name, or a new name with another weight suffix
    (``lora.pt``, which became a folder ``lora.pt/``), is refused before anything is read."""
    dest = Path(dest)
    if dest.suffix.lower() == ".safetensors":
        return dest
    blocked = _file_on_the_way(dest)
    if blocked is not None:
        raise ConfigError(f"DEST {dest}: {blocked} is a file, not a folder; name the LoRA file NAME.safetensors, or give a "
                          "folder to write it into")
    if not os.path.lexists(dest) and dest.suffix.lower() in FILE_SUFFIXES:
        raise ConfigError(f"DEST {dest}: a LoRA is written as one .safetensors file (the format the pack and ComfyUI read); "
                          f"name it {dest.with_suffix('.safetensors')}, or give a folder to write it into")
    return dest / default_name
