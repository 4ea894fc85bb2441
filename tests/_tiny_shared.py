"""The session's tiny weight folders, written once and copied where a test needs one (CI time: each
``make_tiny(version="v1")`` costs 10-25 s on a 2-core runner; a copy, a fraction of a second).

``make_tiny`` is deterministic (fixed seeds), so a copy holds the bytes a fresh call would write. The tests of
``make-tiny`` itself (tests/test_weights.py, tests/test_trust.py, tests/test_animate.py) still call it."""
from __future__ import annotations

import shutil
from pathlib import Path

from tests.test_trainer_helpers import shared_dir, tiny_weights


def tiny_v1_copy(tmp_path_factory, dest: Path) -> Path:
    """A private copy of ``make_tiny(version="v1")`` at ``dest`` (built once per session, shared with the trainer
    tests' ``tiny_weights``), returned like ``make_tiny`` returns its folder."""
    src = tiny_weights(shared_dir(tmp_path_factory), "v1")
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".done"))
    return dest
