"""Load a script of bench/ as a module (they are scripts, not a package). With ``monkeypatch`` the module can import
its neighbours in bench/ and is registered under its name (dataclasses need that) while the test runs; the scripts'
own additions to sys.path (the project root) are undone afterwards too."""
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str, monkeypatch=None):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "path", [str(BENCH), *sys.path])
        monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module
