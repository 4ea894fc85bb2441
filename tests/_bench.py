"""Load a script of bench/ as a module (they are scripts, not a package; each puts the project root on sys.path,
which ``monkeypatch``, when given, restores afterwards)."""
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str, monkeypatch=None):
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
