"""A resumable render whose state cannot be written (a full disk) goes on: the state is a spare, the video the work."""
from __future__ import annotations

import errno
import json
import logging

import numpy as np
import pytest
import torch

from echomimic_lib.pipeline.resume import StepCheckpoint, state_path
from tests.test_resume import _req, latents  # noqa: F401 (fixture)
from tests.test_v3_resume import _render, _state, _uninterrupted, env, small_chunks  # noqa: F401 (fixtures)


def _disk_full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_state_write_is_said_once_and_tried_again_later(tmp_path, monkeypatch, caplog):
    ck = StepCheckpoint(tmp_path / "x.mp4.resume", "k", every_s=0.0)
    real_save = ck.save
    monkeypatch.setattr(ck, "save", _disk_full)
    lat = torch.zeros(1, 4, 2, 8, 8)
    with caplog.at_level(logging.WARNING):
        for step in range(3):
            ck.after_step(step, lat, last=False)  # never raises
    said = [r.getMessage() for r in caplog.records if "could not keep" in r.getMessage()]
    assert len(said) == 1 and "No space left" in said[0] and "render goes on" in said[0]
    assert ck.failed_writes == 3 and ck.saved_step == -1 and not ck.path.exists()
    monkeypatch.setattr(ck, "save", real_save)  # space again: the next write keeps the state
    ck.after_step(3, lat + 1, last=True)
    step, kept = StepCheckpoint(ck.path, "k").load(tuple(lat.shape))
    assert step == 3 and torch.equal(kept, lat + 1)


def test_an_interrupt_is_still_raised_from_a_state_write(tmp_path, monkeypatch):
    """Ctrl-C during a write is the user's, not a write failure: it is not swallowed."""
    ck = StepCheckpoint(tmp_path / "x.mp4.resume", "k", every_s=0.0)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ck.after_step(0, torch.zeros(1), last=True)


def test_a_v1_render_finishes_to_the_same_video_when_no_state_can_be_written(tmp_path, tmp_path_factory, monkeypatch,
                                                                              caplog, latents):
    import safetensors.torch

    from echomimic_lib.jobs.animate import run

    got = latents
    models = tmp_path_factory.mktemp("models")
    run(_req(tmp_path / "plain.mp4", models))
    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    out = tmp_path / "full_disk.mp4"
    with caplog.at_level(logging.WARNING):
        run(_req(out, models, resumable=True))
    assert out.is_file() and not state_path(out).exists()
    assert torch.equal(got[-1], got[0])  # the same render as without --resumable
    assert any("could not keep the render's state" in r.getMessage() for r in caplog.records)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_a_v3_render_keeps_the_chunks_before_a_failed_write_and_finishes(env, tmp_path, monkeypatch, small_chunks, caplog):
    """Chunk 2's write fails: the render still writes all its frames; the state keeps chunk 1 only, a valid state."""
    from echomimic_lib.pipeline.wan import chunk_state

    want = _uninterrupted(env, monkeypatch)
    real_write, calls = chunk_state.ChunkCheckpoint._write, []

    def write(final, fill):
        calls.append(final.name)
        if final.name == "chunk_00001.npy":
            _disk_full()
        real_write(final, fill)

    monkeypatch.setattr(chunk_state.ChunkCheckpoint, "_write", staticmethod(write))
    out = tmp_path / "v3.mp4"
    with caplog.at_level(logging.WARNING):
        blocks, n_calls, summary = _render(env, out, monkeypatch, stop_after=14)  # stopped after chunk 2
    assert summary is None
    said = [r.getMessage() for r in caplog.records if "could not keep chunk" in r.getMessage()]
    assert len(said) == 1 and "chunk 2" in said[0]
    assert "chunk_00002.npy" not in calls  # nothing kept after the failed write
    meta = json.loads((_state(out) / "state.json").read_text())
    assert meta["chunks_done"] == 1
    monkeypatch.setattr(chunk_state.ChunkCheckpoint, "_write", staticmethod(real_write))
    blocks, n_calls, summary = _render(env, out, monkeypatch)  # goes on from chunk 2
    assert summary is not None and n_calls == 2
    assert np.array_equal(np.concatenate(blocks), want)
