"""Make a pure-Python wheel smaller for the GPU machine's 64 MiB carry (issue 23): drop the package folders a run never
imports, and their rows in the wheel's RECORD, so pip installs the rest as usual.

    python bench/_slim_wheel.py WHEEL FOLDER [FOLDER ...]   # in place

FOLDER is a path inside the wheel. ``diffusers/pipelines/*`` drops every subfolder of ``diffusers/pipelines`` (the
model-specific pipelines, 3.4 MB of the 6.4 MB diffusers wheel) and keeps the files directly in it
(``diffusers.training_utils`` imports ``DiffusionPipeline`` from there); a FOLDER without ``*`` is dropped whole."""
from __future__ import annotations

import csv
import io
import os
import sys
import zipfile


def dropped(name: str, folders: list[str]) -> bool:
    for folder in folders:
        if folder.endswith("/*"):  # the folder's subfolders, not its own files
            base = folder[:-1]
            if name.startswith(base) and "/" in name[len(base):]:
                return True
        elif name.startswith(folder.rstrip("/") + "/"):
            return True
    return False


def slim(wheel: str, folders: list[str]) -> tuple[int, int]:
    """Rewrite ``wheel`` without ``folders``; returns (bytes before, bytes after)."""
    before, tmp = os.path.getsize(wheel), wheel + ".slim"
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info in zin.infolist():
            if dropped(info.filename, folders):
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                rows = [r for r in csv.reader(io.StringIO(data.decode())) if r and not dropped(r[0], folders)]
                out = io.StringIO()
                csv.writer(out, lineterminator="\n").writerows(rows)
                data = out.getvalue().encode()
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    os.replace(tmp, wheel)
    return before, os.path.getsize(wheel)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    b, a = slim(sys.argv[1], sys.argv[2:])
    print(f"{os.path.basename(sys.argv[1])}: {b / 2**20:.1f} MiB -> {a / 2**20:.1f} MiB")
