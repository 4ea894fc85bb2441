"""``echomimic batch --backend ray`` on a local Ray instance, when Ray is installed (``pip install "ray[default]"``;
without it these are skipped and only test_batch's missing-Ray message runs): the same records as the local
worker processes for the same rows, actors killed mid-job, an actor that cannot start, Ray shut down after the
batch only when the batch started it, and what a cluster cannot hold refused up front."""
import os
import time
from types import SimpleNamespace

import pytest

from echomimic_lib.cli import main as cli
from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io.video_io import probe
from tests.test_batch import FRAMES, ROOT, _good_rows, _manifest, _no_partials, _options, _results, media  # noqa: F401

SAME = ("line", "kind", "status", "error", "frames", "fps", "device", "frames_sha256", "fingerprint", "attempts")


@pytest.fixture
def ray(monkeypatch):
    ray = pytest.importorskip("ray")
    if not hasattr(ray, "init"):  # pytest names this checkout's package after its folder: one named ray shadows Ray
        pytest.skip("'import ray' finds this checkout (its folder is named ray), not Ray")
    # the actors are processes of their own: they import this checkout, not whatever the environment installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    assert not ray.is_initialized()
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_records_of_the_local_workers(ray, media, shared_data, tmp_path):
    rows = _good_rows(3)
    rows.insert(1, {"name": "corrupt_audio", "reference": "portrait_a.png", "audio": "broken.wav", "seed": 1})
    rows.insert(3, {"name": "no_face", "reference": "blank.png", "audio": "speech.wav", "seed": 2, "no_face_crop": "false",
                    "mediapipe_model": str(shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task")})
    manifest = _manifest(media / "ray.csv", rows)
    out = {b: tmp_path / b for b in ("local", "ray")}
    assert cli(["batch", str(manifest), "-o", str(out["local"])] + _options(media, "--workers", "2")) == 1
    assert cli(["batch", str(manifest), "-o", str(out["ray"])] + _options(media, "--workers", "2", "--backend", "ray")) == 1
    assert not ray.is_initialized()  # started for the batch, shut down after it
    local, remote = _results(out["local"]), _results(out["ray"])
    assert list(remote) == [r["name"] for r in rows]  # one line per row, manifest order
    for name, rec in local.items():
        assert {k: remote[name].get(k) for k in SAME} == {k: rec.get(k) for k in SAME}, name
    assert "no face found" in remote["no_face"]["error"] and remote["no_face"]["worker"] in (0, 1)  # failed in an actor
    assert "cannot be opened" in remote["corrupt_audio"]["error"] and remote["corrupt_audio"]["worker"] is None  # checked first
    ok = [r for r in remote.values() if r["status"] == "ok"]
    assert len(ok) == 3 and {r["worker"] for r in ok} == {0, 1}  # both actors rendered
    for r in ok:
        assert r["output"] == str(out["ray"] / f"{r['name']}.mp4") and probe(r["output"])["frames"] == FRAMES
    _no_partials(out["ray"])


@pytest.mark.slow
def test_killed_actors_have_their_job_redone_then_given_up(ray, media, tmp_path):
    from echomimic_lib.jobs.batch import BatchOptions, read_manifest, run_batch

    ray.init(address="local", num_cpus=2, num_gpus=1)  # an embedding program's own Ray (left running); a GPU in name only
    out, events, killed = tmp_path / "out", [], {"r0": [], "r1": []}

    def on_event(kind, worker, job, payload):
        events.append((kind, job.name, getattr(worker, "wid", None)))
        if kind == "start" and (job.name == "r0" or (job.name == "r1" and not killed["r1"])):  # r0 every time, r1 once
            killed[job.name].append(worker.wid)
            ray.kill(worker.handle)

    defaults = {"models": str(media / "models"), "offline": "true", "steps": 1, "width": 64, "height": 64, "length": FRAMES}
    jobs = read_manifest(_manifest(media / "ray_kill.csv", _good_rows(3)), out, defaults)
    s = run_batch(jobs, out, BatchOptions(workers=2, threads=1, scores=False, quiet=True, on_event=on_event,
                                          max_attempts=2, backend="ray", device="cpu"))
    assert ray.is_initialized()
    deadline = time.time() + 30
    while ray.available_resources().get("CPU") != 2 and time.time() < deadline:  # its actors gone, their CPUs free
        time.sleep(0.2)
    assert ray.available_resources().get("CPU") == 2
    res = _results(out)
    assert s.exit_code == 1 and (s.ok, s.failed) == (2, 1)
    assert res["r0"]["status"] == "error" and "died" in res["r0"]["error"] and res["r0"]["attempts"] == 2
    assert [e for e in events if e[:2] == ("died", "r0")] == [("died", "r0", w) for w in killed["r0"]]
    assert ("died", "r1", killed["r1"][0]) in events
    assert res["r1"]["status"] == "ok" and res["r1"]["attempts"] == 2 and res["r1"]["worker"] not in killed["r0"] + killed["r1"]
    assert res["r2"]["status"] == "ok" and res["r2"]["attempts"] == 1
    assert probe(out / "r1.mp4")["frames"] == FRAMES and not (out / "r0.mp4").exists()
    _no_partials(out)
    # an actor that cannot start is the cluster's setup, not a row's fault: the batch stops and says why
    import torch

    if not torch.cuda.is_available():
        jobs = read_manifest(_manifest(media / "ray_gpu.csv", _good_rows(1)), tmp_path / "gpu", defaults)
        with pytest.raises(EchoMimicError, match="a Ray actor could not start .cuda.: .*no CUDA GPU is available"):
            run_batch(jobs, tmp_path / "gpu", BatchOptions(scores=False, quiet=True, backend="ray"))


def test_what_the_cluster_cannot_hold_is_refused_before_any_actor_starts():
    from echomimic_lib.jobs.batch.ray_backend import placement

    def opts(**kw):
        return SimpleNamespace(**{"device": "auto", "workers": None, "threads": None, **kw})

    assert placement({"CPU": 2}, opts(), 5) == ("cpu", 1, {"num_cpus": 1})
    assert placement({"CPU": 16, "GPU": 2}, opts(), 5) == ("cuda", 2, {"num_cpus": 1, "num_gpus": 1})
    assert placement({"CPU": 16, "GPU": 2}, opts(workers=3), 5)[2]["num_gpus"] == 0.5  # three share two GPUs
    assert placement({"CPU": 16, "GPU": 2}, opts(device="cpu", workers=4, threads=2), 2) == ("cpu", 2, {"num_cpus": 2})
    for kw, text in (({"device": "cuda"}, "has no GPU"), ({"workers": 3}, "need 3 CPUs"),
                     ({"workers": 0}, "use 1 or more"), ({"device": "mps"}, "use auto, cpu or cuda")):
        with pytest.raises(EchoMimicError, match=text):
            placement({"CPU": 2}, opts(**kw), 5)
