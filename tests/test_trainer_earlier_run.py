"""A fresh run never destroys the record of an earlier run that stopped before its first checkpoint: its log,
TensorBoard folder, validation videos, loss plot and config are renamed aside (trainer/earlier_run.py)."""
from __future__ import annotations

import calendar
import json
import logging
import os

import pytest

from tests.test_trainer_helpers import read_log, shared_dir, v1_config, write_yaml

OLD = '{"step": 1, "loss/total": 0.5}\n{"step": 2, "loss/total": 0.25}\n'
WHEN = calendar.timegm((2024, 1, 2, 3, 4, 5, 0, 0, 0))  # 2024-01-02 03:04:05 UTC
STAMP = "20240102T030405Z"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_dir(tmp_path_factory)


def _earlier_run(out, config_header=True):
    from trainer.config_file import RUN_CONFIG_HEADER

    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"tb")
    (out / "validation").mkdir()
    (out / "validation" / "step-00000001.mp4").write_bytes(b"video")
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "checkpoints" / "loss.png").write_bytes(b"png")
    (out / "config.yaml").write_text((RUN_CONFIG_HEADER if config_header else "") + "seed: 1\n")
    (out / "train_log.jsonl").write_text(OLD)
    os.utime(out / "train_log.jsonl", (WHEN, WHEN))


def test_the_record_is_renamed_aside_with_one_suffix_and_never_over_another(tmp_path, caplog):
    from trainer.earlier_run import keep_earlier_run

    _earlier_run(tmp_path)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        moved = keep_earlier_run(tmp_path)
    assert {k: v.relative_to(tmp_path).as_posix() for k, v in moved.items()} == {
        "train_log.jsonl": f"train_log.{STAMP}.jsonl", "tensorboard": f"tensorboard.{STAMP}",
        "validation": f"validation.{STAMP}", "checkpoints/loss.png": f"checkpoints/loss.{STAMP}.png",
        "config.yaml": f"config.{STAMP}.yaml"}
    assert (tmp_path / f"train_log.{STAMP}.jsonl").read_text() == OLD
    assert (tmp_path / f"validation.{STAMP}" / "step-00000001.mp4").read_bytes() == b"video"
    assert not any((tmp_path / n).exists() for n in ("train_log.jsonl", "tensorboard", "validation", "config.yaml"))
    assert f"train_log.{STAMP}.jsonl" in caplog.text and f"tensorboard.{STAMP}/" in caplog.text
    # another earlier run last written in the same second: its names take "-1", the first one's files stay as they are
    _earlier_run(tmp_path)
    (tmp_path / "train_log.jsonl").write_text("second\n")
    os.utime(tmp_path / "train_log.jsonl", (WHEN, WHEN))
    moved = keep_earlier_run(tmp_path)
    assert moved["train_log.jsonl"].name == f"train_log.{STAMP}-1.jsonl" and moved["validation"].name == f"validation.{STAMP}-1"
    assert (tmp_path / f"train_log.{STAMP}-1.jsonl").read_text() == "second\n"
    assert (tmp_path / f"train_log.{STAMP}.jsonl").read_text() == OLD


def test_nothing_is_moved_without_a_record(tmp_path):
    from trainer.earlier_run import keep_earlier_run

    (tmp_path / "train_log.jsonl").write_text("")  # an empty log and empty folders hold nothing
    (tmp_path / "validation").mkdir()
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    assert keep_earlier_run(tmp_path) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "train_log.jsonl", "validation"]


def test_a_config_of_the_users_own_is_left_to_the_config_writer(tmp_path):
    from trainer.earlier_run import keep_earlier_run

    _earlier_run(tmp_path, config_header=False)
    assert "config.yaml" not in keep_earlier_run(tmp_path)
    assert (tmp_path / "config.yaml").read_text() == "seed: 1\n"  # write_run_config keeps it as config.user.yaml


def test_a_fresh_fit_keeps_the_logs_of_earlier_runs_that_stopped_before_a_checkpoint(base, tmp_path, caplog):
    from trainer.config_file import load_config
    from trainer.loop import fit

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.jsonl").write_text(OLD)
    os.utime(run / "train_log.jsonl", (WHEN, WHEN))
    # 2 steps, a checkpoint only at the end: stopped after one step, each run leaves a log and no checkpoint
    cfg = load_config(write_yaml(tmp_path / "c.yaml", v1_config(base, run, steps=2, optim={"batch_size": 1})))
    with caplog.at_level(logging.WARNING, logger="trainer"):
        assert fit(cfg, stop_after=1)["step"] == 1
    assert f"train_log.{STAMP}.jsonl" in caplog.text
    assert (run / f"train_log.{STAMP}.jsonl").read_text() == OLD
    first = read_log(run)
    assert first[0]["event"] == "start" and [r["step"] for r in first if "event" not in r] == [1]
    assert not (run / "checkpoints").is_dir() or not list((run / "checkpoints").glob("step-*"))
    fit(cfg, stop_after=1)  # a second fresh run: both earlier logs are kept
    kept = sorted(p.name for p in run.glob("train_log.*.jsonl"))
    assert len(kept) == 2 and f"train_log.{STAMP}.jsonl" in kept
    assert (run / f"train_log.{STAMP}.jsonl").read_text() == OLD
    other = next(n for n in kept if STAMP not in n)
    assert [json.loads(x) for x in (run / other).read_text().splitlines()] == first
    assert len(list(run.glob("config.*.yaml"))) == 1  # the first fit's config, beside its log
    assert [r["step"] for r in read_log(run) if "event" not in r] == [1]  # the new log: this run's rows only
