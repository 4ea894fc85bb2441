"""Import the repository root the way ComfyUI does (a package from its __init__.py), for node tests."""
import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK = "echomimic_comfy_pack"


def load_pack():
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK]


def sub(name: str):
    load_pack()
    return importlib.import_module(f"{PACK}.{name}")
