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
