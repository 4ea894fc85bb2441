import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ECHOMIMIC_SHARED_DIR", PROJECT_ROOT.parent / "shared")).resolve()
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert DATA.is_dir(), f"shared test media not found at {DATA}"
    return DATA


@pytest.fixture(scope="session")
def tiny_comfy_models(tmp_path_factory, shared_data) -> Path:
    """ComfyUI's ``models/`` with tiny random weights for every version (``make_tiny(layout="comfyui")``) and the
    shared MediaPipe models; its ``echomimic/`` folder also serves as the command line's ``--models``."""
    import shutil

    from echomimic_lib.tiny import make_tiny

    root = tmp_path_factory.mktemp("comfy_models") / "models"
    make_tiny(root, layout="comfyui")
    shutil.copytree(shared_data / "mediapipe", root / "echomimic" / "mediapipe")
    return root
