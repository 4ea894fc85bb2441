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


# ------------------------------------------------------------------------------------------------------------------
# Root logger isolation (h-clirobust). The command lines configure logging for the process: echomimic's setup_logging
# adds a stderr handler, trainer.cli.main calls logging.basicConfig (which does nothing once the root logger has a
# handler). Called in a test, such a handler writes to that test's capture stream, closed when the test ends, and
# every later log record then puts a "--- Logging error ---" traceback into whatever test runs next. After every
# test the root logger gets back the handlers and level it had before it (pytest's own capture handlers are
# pytest's to manage).
@pytest.fixture(autouse=True)
def _restore_root_logger():
    import logging

    from _pytest.logging import LogCaptureHandler

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        try:
            handler.close()
        except (OSError, ValueError):  # its stream may be closed already
            pass
    for handler in handlers:
        if handler not in root.handlers and not isinstance(handler, LogCaptureHandler):
            root.addHandler(handler)
    root.setLevel(level)


# The command lines also set the levels of named loggers (setup_logging: echomimic_lib / trainer / nodes at WARNING
# with -q, the chatty libraries at ERROR): left so, a later test's caplog.at_level(INFO) on the root no longer sees
# this project's INFO lines, so whether a log assertion holds depended on which test ran before it. After every test
# each named logger gets back the level, propagation and enabled state it had; one first made during the test (under
# our own or the chatty libraries' names) goes back to a plain logger.
@pytest.fixture(autouse=True)
def _restore_named_loggers():
    import logging

    from echomimic_lib.cli.common import CHATTY, OUR_LOGGERS

    def named():
        return {n: lg for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}

    before = {n: (lg.level, lg.propagate, lg.disabled) for n, lg in named().items()}
    yield
    ours = tuple(OUR_LOGGERS) + tuple(CHATTY)
    for name, lg in named().items():
        if name in before:
            lg.level, lg.propagate, lg.disabled = before[name]
        elif name.split(".")[0] in ours or name in ours:
            lg.level, lg.propagate, lg.disabled = logging.NOTSET, True, False
    logging.root.manager._clear_cache()
