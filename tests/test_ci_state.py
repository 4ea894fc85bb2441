"""Process state the test suite gives back after every test (tests/conftest.py), so that what a test sees does not
depend on the tests that ran before it in the same process.

torch's intra-op thread count: ``trainer.loop.fit`` sets ``cfg.cpu_threads`` for the whole process (the trainer test
configs set 1), and a test may set it itself. Every test starts with ``ECHOMIMIC_TEST_TORCH_THREADS`` (default 1: the
tests run tiny models, whose microsecond ops only wait on each other's thread barrier with more threads)."""
from __future__ import annotations

import os

import torch

TEST_TORCH_THREADS = int(os.environ.get("ECHOMIMIC_TEST_TORCH_THREADS", "1"))  # tests/conftest.py's

OTHER = TEST_TORCH_THREADS + 1


def test_a_test_starts_with_the_suites_torch_thread_count():
    assert torch.get_num_threads() == TEST_TORCH_THREADS


def test_a_test_that_changes_the_thread_count():
    torch.set_num_threads(OTHER)  # as trainer.loop.fit does with cfg.cpu_threads, never set back
    assert torch.get_num_threads() == OTHER


def test_the_next_test_gets_the_suites_count_back():
    assert torch.get_num_threads() == TEST_TORCH_THREADS


def test_fit_with_cpu_threads_leaves_the_next_test_the_suites_count(tmp_path):
    """The real leak: a trainer config's ``cpu_threads`` is applied to the process by fit (before anything is built;
    here it stops at the missing SD config it checks first)."""
    import pytest

    from tests.test_trainer_helpers import write_yaml
    from trainer.config_file import load_config
    from trainer.loop import fit

    cfg = load_config(write_yaml(tmp_path / "c.yaml", {"preset": "v1_stage1", "output_dir": str(tmp_path / "out"),
                                                       "cpu_threads": OTHER,
                                                       "model": {"init": "sd", "sd_path": str(tmp_path / "no-sd")}}))
    with pytest.raises(Exception):
        fit(cfg)
    assert torch.get_num_threads() == OTHER


def test_and_the_test_after_fit_gets_the_suites_count_back():
    assert torch.get_num_threads() == TEST_TORCH_THREADS
