"""EchoMimicV3 batch rows and a missing set: without ``offline`` the worker fetches it through ``io.hub`` before loading
(two workers fetching the same folder at once, against the fake Hub of ``test_v3_download``); offline, the row fails up
front with the missing files listed and no worker starts.

The two workers are spawned processes running the worker's own render call (:func:`.workers.render_payload` with a
:class:`.render.ModelCache` of their own) with the fake Hub installed in them: the pool's workers would not see a
monkeypatched ``hf_hub_download``, and threads would share one process's transformers loading state."""
from __future__ import annotations

import json
import queue
from pathlib import Path

from echomimic_lib.models.wan.sources import V3_FOLDER
from tests._hub_worker import worker
from tests.test_v3_download import _expected, _tree, hub  # noqa: F401 - hub: the module's fixture

ROW = {"version": "v3-flash", "reference": "images/portrait_a.png", "audio": "audio/echomimic_en.wav", "seed": 3,
       "prompt": "download test ."}
SMALL = {"width": 64, "height": 64, "steps": 2, "length": 5}


def _jobs(shared_data, tmp_path, names, **defaults):
    from echomimic_lib.jobs.batch.manifest import check_jobs, read_manifest

    path = tmp_path / "jobs.jsonl"  # the shared media by absolute path (read in place)
    path.write_text("".join(json.dumps({**ROW, "name": n, "reference": str(shared_data / ROW["reference"]),
                                        "audio": str(shared_data / ROW["audio"])}) + "\n" for n in names))
    return check_jobs(read_manifest(path, tmp_path / "out", {**SMALL, **defaults}))


def test_two_workers_fetch_the_missing_set_at_once_and_render(hub, shared_data, tmp_path):  # noqa: F811
    """Two worker processes (as the batch spawns them) with the same missing set: both download at once, each staged
    in its own folder; both rows render, and the set on disk is whole."""
    import multiprocessing as mp

    from echomimic_lib.jobs.batch.runner import _prepare_weights

    models = tmp_path / "models"
    jobs = _jobs(shared_data, tmp_path, ["a", "b"], models=str(models))
    assert [j.error for j in jobs] == [None, None]
    _prepare_weights(jobs)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(dict(hub), j, barrier, results)) for j in jobs]
    for p in procs:
        p.start()
    got = {}
    try:
        while len(got) < len(jobs):
            try:
                name, payload, calls = results.get(timeout=5)
                got[name] = (payload, calls)
            except queue.Empty:
                assert any(p.is_alive() for p in procs), f"a worker died: exit codes {[p.exitcode for p in procs]}"
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    payloads = {n: p for n, (p, _) in got.items()}
    calls = [c for _, cs in got.values() for c in cs]
    assert all(cs for _, cs in got.values())  # both downloaded
    for job in jobs:
        rec = payloads[job.name]
        assert rec["status"] == "ok", rec.get("error")
        assert rec["output"] == str(job.output) and job.output.is_file() and rec["frames"] == 5
        assert rec["size"] == [64, 64] and len(rec["frames_sha256"]) == 64 and rec["prompts_encoded"] in (0, 1)
    assert payloads["a"]["frames_sha256"] == payloads["b"]["frames_sha256"]  # same settings, same frames
    folder = models / V3_FOLDER
    tree = _tree(folder)
    assert {p for p in tree if not p.startswith("prompt_cache/")} == _expected(hub)
    assert [p for p in tree if p.startswith("prompt_cache/")] and not [p for p in tree if p.endswith(".partial")]
    assert not list(folder.glob(".echomimic-download*"))  # each call's staging folder is gone
    assert set(calls) == set(hub)  # every file fetched (some twice: both workers found it missing)
    placed = {p: (folder / p).read_bytes() for p in _expected(hub)}
    assert sorted(len(b) for b in placed.values()) == sorted(src.stat().st_size for src in hub.values())
    assert {src.read_bytes() for src in hub.values()} == set(placed.values())


def test_an_offline_row_with_missing_files_fails_up_front_and_no_worker_starts(shared_data, tmp_path, monkeypatch):
    import huggingface_hub

    from echomimic_lib.jobs.batch import workers
    from echomimic_lib.jobs.batch.runner import BatchOptions, run_batch

    def refuse(*a, **kw):
        raise AssertionError("an offline row must not download or start a worker")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(workers, "LocalPool", refuse)
    jobs = _jobs(shared_data, tmp_path, ["off"], models=str(tmp_path / "empty"), offline=True)
    assert jobs[0].error and "flash-pro files missing" in jobs[0].error
    events = []
    summary = run_batch(jobs, tmp_path / "out", BatchOptions(quiet=True, scores=False,
                                                            on_event=lambda kind, w, job, p: events.append(kind)))
    assert summary.failed == 1 and summary.ok == 0 and events == ["done"]  # recorded, never started
    (rec,) = summary.records
    assert rec["status"] == "error" and rec["output"] is None and rec["worker"] is None
    for name in ("umt5-xxl/config.json", "echomimicv3-flash-pro/diffusion_pytorch_model.safetensors",
                 "chinese-wav2vec2-base/config.json", "clip-vit-h-14/config.json", "Wan2.1-Fun-V1.1-1.3B-InP/config.json"):
        assert name in rec["error"], name
    assert "echomimic download --weights v3-flash" in rec["error"]
    assert json.loads((tmp_path / "out" / "results.jsonl").read_text())["error"] == rec["error"]
    assert not (tmp_path / "empty").exists() and not Path(tmp_path / "out" / "off.mp4").exists()


def test_files_another_worker_publishes_between_two_looks_are_not_an_error(tmp_path, monkeypatch):
    """Two workers fetching one set: a file can appear between the check that found it missing and the listing of what
    to fetch. The part then still names what it lacked (one look per file), and the set, complete now, is used."""
    import shutil

    import huggingface_hub

    from echomimic_lib import model_set
    from echomimic_lib.models.wan import sources
    from echomimic_lib.models.wan.tiny import write_tiny_v3

    folder = write_tiny_v3(tmp_path / V3_FOLDER)
    target = folder / "clip-vit-h-14" / "model.safetensors"
    aside = tmp_path / "aside.safetensors"
    shutil.move(target, aside)
    clip = next(s for s in sources.SOURCES if s.name == "clip")
    looks, real_is_file = [], Path.is_file

    def appearing(self):  # the other worker publishes it right after the first look
        if self == target:
            looks.append(self)
            return len(looks) > 1
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", appearing)
    assert sources.part_missing(clip, folder).files == ("model.safetensors",)
    monkeypatch.setattr(Path, "is_file", real_is_file)

    def refuse(**kw):
        raise AssertionError("nothing is left to download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    real_missing, calls = model_set.missing_parts, []

    def racing(*a, **kw):
        out = real_missing(*a, **kw)
        if not calls:
            shutil.move(aside, target)
        calls.append(out)
        return out

    monkeypatch.setattr(model_set, "missing_parts", racing)
    files = model_set.ensure_v3(folder, download=True)
    assert files["clip"] == folder / "clip-vit-h-14" and target.is_file() and len(calls) >= 2
