"""Refuse TorchScript archives before any read: loading one runs its code (the FID / FVD ports of StyleGAN-V and
clean-fid ship their networks that way). A state dict of the same network is what the metrics accept."""
from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import UnsafeFileError


def refuse_torchscript(path: Path, fix: str) -> None:
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in names):
        raise UnsafeFileError(f"{path}: a TorchScript archive, refused (loading it would run the code inside). {fix}")
