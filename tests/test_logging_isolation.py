"""The root logger is restored after every test (the autouse fixture in tests/conftest.py): a handler that one test's
command line added to the root logger, writing to that test's capture stream, used to stay after the stream was
closed, and its "--- Logging error ---" traceback landed in the stderr of a later test. The two tests run in this
order (pytest keeps a file's order)."""
from __future__ import annotations

import logging

LEAKED: list = []


def test_1_a_command_line_configures_logging_in_a_test(capsys):
    from echomimic_lib.cli.common import setup_logging

    before = list(logging.getLogger().handlers)
    setup_logging()  # what `echomimic ...` does: a handler on this test's (captured) stderr
    logging.getLogger().setLevel(logging.INFO)  # as trainer.cli.main's logging.basicConfig(level=INFO) would
    LEAKED.extend(h for h in logging.getLogger().handlers if h not in before)
    assert LEAKED
    logging.getLogger("echomimic_lib.test").info("written to this test's capture")
    assert "written to this test's capture" in capsys.readouterr().err


def test_2_the_next_test_has_a_clean_root_logger(capsys):
    assert LEAKED, "runs after test_1"
    root = logging.getLogger()
    assert not [h for h in root.handlers if h in LEAKED]
    assert root.level == logging.WARNING  # the default, not what setup_logging set
    logging.getLogger("echomimic_lib.test").warning("a record after the first test's stream was closed")
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err, err
