"""``animate --resumable``: a render stopped part-way goes on from its last finished step, with the same result."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.jobs.animate import AnimateRequest, run
from echomimic_lib.pipeline import sampler as sampler_mod
from echomimic_lib.pipeline.resume import StepCheckpoint, state_path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STEPS = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def latents(monkeypatch):
    """The final latents of every render in the test."""
    got, original = [], sampler_mod.Sampler.__call__

    def spy(self, *a, **kw):
        result = original(self, *a, **kw)
        got.append(result.latents.clone())
        return result

    monkeypatch.setattr(sampler_mod.Sampler, "__call__", spy)
    return got


def _req(out: Path, models: Path, **kw) -> AnimateRequest:
    return AnimateRequest(reference=str(DATA / "images" / "portrait_a.png"), audio=str(DATA / "audio" / "echomimic_en.wav"),
                          output=str(out), smoke=True, models=str(models), face_crop=False, steps=STEPS, **kw)


class Stop(KeyboardInterrupt):
    pass


def _progress(seen: list):
    def progress(done, total):
        seen.append((done, total))

    return progress


def test_an_interrupted_render_goes_on_from_its_last_step_with_the_same_latents(tmp_path, models, latents):
    run(_req(tmp_path / "plain.mp4", models))  # the default path: no state, no resume
    assert not state_path(tmp_path / "plain.mp4").exists()
    out = tmp_path / "long.mp4"
    seen = []
    with pytest.raises(Stop):
        run(_req(out, models, resumable=True), progress=_stop_in_step(3, seen))
    per_step = seen[0][1] // STEPS
    state = state_path(out)
    assert state.is_file() and not out.exists()  # the state is kept, no half video
    again = []
    summary = run(_req(out, models, resumable=True), progress=_progress(again))
    assert summary["resumed_after_step"] == 2  # steps 1 and 2 finished before the stop in step 3
    assert again[0][0] == 2 * per_step + 1 and len(again) == (STEPS - 2) * per_step  # only steps 3 and 4 ran
    assert torch.equal(latents[-1], latents[0])  # the same result as the render that never stopped
    assert out.is_file() and not state.exists()  # removed once the video is written


def _stop_in_step(step: int, seen: list):
    """A progress callback that raises in the first window of ``step`` (1-based)."""
    def progress(done, total):
        seen.append((done, total))
        if done == (step - 1) * (total // STEPS) + 1:
            raise Stop()

    return progress


def test_another_requests_state_is_not_used(tmp_path, models, caplog):
    out = tmp_path / "v.mp4"
    with pytest.raises(Stop):
        run(_req(out, models, resumable=True, seed=5), progress=_stop_in_step(3, []))
    assert state_path(out).is_file()
    seen = []
    with caplog.at_level(logging.WARNING):
        summary = run(_req(out, models, resumable=True, seed=6), progress=_progress(seen))
    assert "another render" in caplog.text and "resumed_after_step" not in summary
    assert seen[0][0] == 1 and len(seen) == seen[0][1]  # every step, from the first
    assert not state_path(out).exists()


def test_resumable_refuses_deep_cache_and_an_unwritable_state_name_before_any_work(tmp_path, models):
    with pytest.raises(EchoMimicError, match="DeepCache"):
        run(_req(tmp_path / "a.mp4", models, resumable=True, deep_cache=2))
    state_path(tmp_path / "b.mp4").mkdir()
    with pytest.raises(EchoMimicError, match="folder"):
        run(_req(tmp_path / "b.mp4", models, resumable=True))
    assert not (tmp_path / "a.mp4").exists() and not (tmp_path / "b.mp4").exists()


def test_a_damaged_state_file_is_never_trusted(tmp_path, caplog):
    path = tmp_path / "x.mp4.resume"
    path.write_bytes(b"\x00" * 40)
    ck = StepCheckpoint(path, "abc")
    with caplog.at_level(logging.WARNING):
        assert ck.load((1, 4, 2, 8, 8)) is None
    assert "cannot be read" in caplog.text
    ck.save(0, torch.ones(1, 4, 2, 8, 8))
    assert StepCheckpoint(path, "abc").load((1, 4, 3, 8, 8)) is None  # another length: not this render's
    step, lat = StepCheckpoint(path, "abc").load((1, 4, 2, 8, 8))
    assert step == 0 and torch.equal(lat, torch.ones(1, 4, 2, 8, 8))


def test_the_state_is_written_every_so_often_and_after_the_last_step(tmp_path, monkeypatch):
    ck = StepCheckpoint(tmp_path / "y.mp4.resume", "k", every_s=3600.0)
    writes = []
    monkeypatch.setattr(ck, "save", lambda step, lat: writes.append(step))
    for i in range(5):
        ck.after_step(i, torch.zeros(1), last=i == 4)
    assert writes == [4]
    ck.every_s = 0.0
    ck.after_step(0, torch.zeros(1), last=False)
    assert writes == [4, 0]


def test_a_batch_row_with_the_resumable_column_goes_on_after_an_error(tmp_path, models, latents):
    import json

    from echomimic_lib.jobs.batch.manifest import check_jobs, read_manifest
    from echomimic_lib.jobs.batch.render import ModelCache, render_animate

    run(_req(tmp_path / "whole.mp4", models))  # the same render, never stopped (and the smoke run's tiny weights)
    row = {"name": "r", "reference": str(DATA / "images" / "portrait_a.png"), "audio": str(DATA / "audio" / "echomimic_en.wav"),
           "smoke": True, "models": str(models), "no-face-crop": True, "steps": STEPS, "resumable": True}
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text(json.dumps(row) + "\n")
    (job,) = check_jobs(read_manifest(manifest, tmp_path / "out"))
    assert job.error is None and job.request.resumable
    cache = ModelCache()
    with pytest.raises(Stop):  # the worker turns any error into the row's error and retries it
        render_animate(job, cache, _stop_in_step(3, []))
    state = state_path(job.request.output)
    assert state.is_file()
    seen = []
    render_animate(job, cache, _progress(seen))
    assert seen[0][0] == 2 * (seen[0][1] // STEPS) + 1 and not state.exists()  # steps 3 and 4 only
    assert torch.equal(latents[-1], latents[0])
