"""Where ``echomimic-train export`` / ``v3-export`` write, checked before anything is read: a full model's file set
goes into a folder, a LoRA into one ``.safetensors`` file (DEST itself, or a file named after the run in the folder DEST).
A DEST that is a file where a folder is meant, or a new name with another weight suffix (``lora.pt``, ``model.pth``:
each became a *folder* of that name), is refused with the fix; so is a full model's DEST that holds other files and is
no earlier export (without ``--force``). One rule for the folders every export writes into (:class:`NewFolders`): the
missing ones are created, said in the log, and removed again when the export fails."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .config import ConfigError

log = logging.getLogger(__name__)
EXPORT_RECORD = "export.json"  # written last by a full model's export: a folder with it is an earlier export


class NewFolders:
    """``with NewFolders(folder):`` around an export's writes: the folders ``folder`` needs that do not exist yet are
    said in the log (the writers create them) and, when the block fails, removed again (innermost first, only empty)."""

    def __init__(self, folder):
        self.made = [p for p in (Path(folder), *Path(folder).parents) if not os.path.lexists(p)]

    def __enter__(self):
        if self.made:
            log.info("creating the folder %s (%s did not exist)", self.made[0], self.made[-1])
        return self

    def __exit__(self, kind, exc, tb):
        if kind is not None:
            for p in self.made:
                try:
                    p.rmdir()
                except OSError:
                    pass
        return False

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


def refuse_foreign_folder(dest: Path) -> None:
    """A full model's DEST that holds other files and no ``export.json`` (a folder of the user's, not an earlier export):
    the model's files would be mixed in among them. Refused before anything is read; ``--force`` writes into it."""
    dest = Path(dest)
    if not dest.is_dir() or (dest / EXPORT_RECORD).is_file():
        return
    others = sorted(p.name for p in dest.iterdir() if not p.name.startswith("."))
    if others:
        shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        raise ConfigError(f"DEST {dest} holds other files ({shown}) and is no earlier export (it has no {EXPORT_RECORD}): "
                          "the model's files would be mixed in among them. Give a new or empty folder, or add --force to "
                          "write into this one anyway (files of the same names are replaced)")


def lora_file_target(dest: Path, default_name: str) -> Path:
    """Where a LoRA export writes: DEST itself when it names a ``.safetensors`` file (any case), else the folder DEST,
    ``default_name`` inside. A DEST that is a file of another name, or a new name with another weight suffix
    (``lora.pt``, which became a folder ``lora.pt/``), is refused before anything is read."""
    dest = Path(dest)
    if dest.suffix.lower() == ".safetensors":
        blocked = _file_on_the_way(dest.parent)  # (a bare "File exists" once the weights had been read)
        if blocked is not None:
            raise ConfigError(f"DEST {dest}: {blocked} is a file, not a folder, so {dest.name} cannot be written inside "
                              "it; give a path in a folder (or a new folder's name)")
        return dest
    blocked = _file_on_the_way(dest)
    if blocked is not None:
        raise ConfigError(f"DEST {dest}: {blocked} is a file, not a folder; name the LoRA file NAME.safetensors, or give a "
                          "folder to write it into")
    if not os.path.lexists(dest) and dest.suffix.lower() in FILE_SUFFIXES:
        raise ConfigError(f"DEST {dest}: a LoRA is written as one .safetensors file (the format the pack and ComfyUI read); "
                          f"name it {dest.with_suffix('.safetensors')}, or give a folder to write it into")
    return dest / default_name
