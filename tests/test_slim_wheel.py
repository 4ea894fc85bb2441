"""bench/_slim_wheel.py (the GPU carry's smaller diffusers wheel): the named folders and their RECORD rows go, the
rest stays byte for byte, and pip installs the result."""
from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _slim_wheel import slim  # noqa: E402

FILES = {"pkg/__init__.py": "X = 1\n", "pkg/pipelines/__init__.py": "P = 2\n", "pkg/pipelines/utils.py": "U = 3\n",
         "pkg/pipelines/big/__init__.py": "B = 4\n", "pkg/pipelines/big/model.py": "M = 5\n" * 100,
         "pkg/modular/x.py": "Y = 6\n", "pkg/modularity.py": "Z = 7\n"}


def _wheel(path: Path) -> Path:
    rows = [[name, "", str(len(text))] for name, text in FILES.items()] + [["pkg-1.0.dist-info/RECORD", "", ""]]
    meta = {"pkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n",
            "pkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    rows[-1:-1] = [[name, "", ""] for name in meta]
    record = io.StringIO()
    csv.writer(record, lineterminator="\n").writerows(rows)
    with zipfile.ZipFile(path, "w") as z:
        for name, text in {**FILES, **meta, "pkg-1.0.dist-info/RECORD": record.getvalue()}.items():
            z.writestr(name, text)
    return path


def test_slim_drops_subfolders_and_whole_folders_and_their_record_rows(tmp_path):
    wheel = _wheel(tmp_path / "pkg-1.0-py3-none-any.whl")
    before, after = slim(str(wheel), ["pkg/pipelines/*", "pkg/modular"])
    assert after < before
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        record = [r[0] for r in csv.reader(io.StringIO(z.read("pkg-1.0.dist-info/RECORD").decode())) if r]
        kept = {n: z.read(n).decode() for n in names if n in FILES}
    assert kept == {n: FILES[n] for n in ("pkg/__init__.py", "pkg/pipelines/__init__.py", "pkg/pipelines/utils.py",
                                          "pkg/modularity.py")}
    assert not any(n.startswith(("pkg/pipelines/big/", "pkg/modular/")) for n in names | set(record))
    assert set(record) == names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", "import pkg.pipelines.utils as u, pkg; print(pkg.X + u.U)"],
                         env={"PYTHONPATH": str(target)}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "4"
    assert not (target / "pkg" / "pipelines" / "big").exists()
