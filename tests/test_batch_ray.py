"""``echomimic batch --backend ray`` on a local Ray instance, when Ray is installed (``pip install "ray[default]"``;
without it these are skipped and only test_batch's missing-Ray message runs): the same records and the same
sampling progress events as the local worker processes for the same rows, actors killed mid-job, an actor that
cannot start, Ray shut down after the batch only when the batch started it. Without Ray: what a cluster cannot
hold refused up front, and the progress forwarding (:mod:`echomimic_lib.jobs.batch.ray_progress`) on stand-ins
for Ray: each actor's events in order to the driver's ``on_event``, stale ones dropped, events dropped rather
than waited for when nobody answers, and a dead progress actor failing no row."""
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
def test_killed_actors_have_their_job_redone_then_given_up(ray, media, tmp_path, monkeypatch, caplog):
    from echomimic_lib.jobs.batch import BatchOptions, ray_backend, read_manifest, run_batch

    ray.init(address="local", num_cpus=2, num_gpus=1)  # an embedding program's own Ray (left running); a GPU in name only
    out, events, killed, where = tmp_path / "out", [], {"r0": [], "r1": []}, set()
    sinks = []
    monkeypatch.setattr(ray_backend, "_start_sink", lambda r, start=ray_backend._start_sink: sinks.append(start(r)) or sinks[0])

    def on_event(kind, worker, job, payload):
        events.append((kind, job.name, getattr(worker, "wid", None)))
        if kind == "start":  # handed a job once it has said where it runs
            where.add((worker.device, tuple(worker.gpu_ids), worker.node))
        if kind == "start" and (job.name == "r0" or (job.name == "r1" and not killed["r1"])):  # r0 every time, r1 once
            killed[job.name].append(worker.wid)
            ray.kill(worker.handle)
        if kind == "progress" and len(sinks) == 1:  # the progress actor lost too: the rows go on without progress
            ray.kill(sinks[0])
            sinks.append("killed")

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
    assert sinks[1:] == ["killed"] and "sampling progress is lost" in caplog.text
    assert where == {("cpu", (), ray.util.get_node_ip_address())}  # what the actors reported: CPU actors, no GPU id
    assert "died while rendering it" in res["r0"]["error"] and "(cpu on " in res["r0"]["error"]
    # an actor that cannot start is the cluster's setup, not a row's fault: the batch stops and says why
    import torch

    if not torch.cuda.is_available():
        jobs = read_manifest(_manifest(media / "ray_gpu.csv", _good_rows(1)), tmp_path / "gpu", defaults)
        with pytest.raises(EchoMimicError, match=r"a Ray actor \(gpu\) could not start: on node \S+: Ray gave this actor GPU id\(s\) "
                                                 r"\['0'\] \(CUDA_VISIBLE_DEVICES '0'\) but PyTorch sees no CUDA device"):
            run_batch(jobs, tmp_path / "gpu", BatchOptions(scores=False, quiet=True, backend="ray"))


def test_what_the_cluster_cannot_hold_is_refused_before_any_actor_starts():
    from echomimic_lib.jobs.batch.ray_backend import placement

    def opts(**kw):
        return SimpleNamespace(**{"device": "auto", "workers": None, "threads": None, **kw})

    # Ray resources only (GPU or CPU actors, how many, what each asks for): which GPU is Ray's to say
    assert placement({"CPU": 2}, opts(), 5) == ("cpu", 1, {"num_cpus": 1})
    assert placement({"CPU": 16, "GPU": 2}, opts(), 5) == ("gpu", 2, {"num_cpus": 1, "num_gpus": 1})
    assert placement({"CPU": 16, "GPU": 2}, opts(device="cuda"), 5) == ("gpu", 2, {"num_cpus": 1, "num_gpus": 1})
    assert placement({"CPU": 16, "GPU": 2}, opts(workers=3), 5)[2]["num_gpus"] == 0.5  # three share two GPUs
    assert placement({"CPU": 16, "GPU": 2}, opts(device="cpu", workers=4, threads=2), 2) == ("cpu", 2, {"num_cpus": 2})
    for kw, text in (({"device": "cuda"}, "has no GPU"), ({"workers": 3}, "need 3 CPUs"),
                     ({"workers": 0}, "use 1 or more"), ({"device": "mps"}, "use auto, cpu or cuda")):
        with pytest.raises(EchoMimicError, match=text):
            placement({"CPU": 2}, opts(**kw), 5)
    for device in ("cuda:1", "cuda:0,cuda:1"):  # this machine's GPU numbers mean nothing on a cluster
        with pytest.raises(EchoMimicError, match=f"--device {device}: with --backend ray, Ray assigns the GPUs; use "
                                                 "--device cuda .or auto.. .*ray start --num-gpus"):
            placement({"CPU": 16, "GPU": 2}, opts(device=device), 5)


def _events_by_row(events):
    rows = {}
    for kind, name, payload in events:
        rows.setdefault(name, []).append((kind, tuple(payload) if kind == "progress" else None))
    return rows


@pytest.mark.slow
def test_ray_actors_send_the_sampling_progress_of_the_local_workers(ray, media, tmp_path):
    from echomimic_lib.jobs.batch import BatchOptions, read_manifest, run_batch

    defaults = {"models": str(media / "models"), "offline": "true", "steps": 3, "width": 64, "height": 64, "length": FRAMES}
    seen = {}
    for backend in ("local", "ray"):
        out, seen[backend] = tmp_path / backend, []
        jobs = read_manifest(_manifest(media / f"progress_{backend}.csv", _good_rows(3)), out, defaults)
        s = run_batch(jobs, out, BatchOptions(workers=2, threads=1, scores=False, quiet=True, backend=backend, device="cpu",
                                              on_event=lambda k, w, j, p, ev=seen[backend]: ev.append((k, j.name, p))))
        assert s.exit_code == 0 and s.ok == 3, backend
    assert not ray.is_initialized()
    local, remote = _events_by_row(seen["local"]), _events_by_row(seen["ray"])
    assert remote == local  # per row: start, each sampling step in order, done; nothing after done
    for name, row in remote.items():
        steps = [p for kind, p in row if kind == "progress"]
        assert [d for d, _ in steps] == list(range(1, len(steps) + 1)) and len(steps) >= 3, (name, row)
        assert {t for _, t in steps} == {len(steps)} and row[0][0] == "start" and row[-1][0] == "done"


# ---- the progress forwarding on stand-ins for Ray (runs without Ray) ----

class _Ref:
    def __init__(self, call=None, error=None):
        self.call, self.error, self.ready = call, error, call is None

    def run(self):
        self.call()
        self.ready = True


class _FakeRay:
    """``wait`` / ``get`` as Ray's, on :class:`_Ref`; ``wait`` with a timeout runs the calls not yet answered when
    ``answers`` (a sink that answers late), else sleeps the timeout (a sink that never answers)."""

    def __init__(self, answers=True):
        self.answers, self.waits = answers, []  # waits: the timeout of every wait (what a sender would block for)

    def wait(self, refs, num_returns=1, timeout=None):
        self.waits.append(timeout)
        if timeout and self.answers:
            for r in refs:
                if not r.ready:
                    r.run()
        return [r for r in refs if r.ready], [r for r in refs if not r.ready]

    def get(self, refs, timeout=None):
        for r in refs if isinstance(refs, list) else [refs]:
            if r.error:
                raise r.error
        return refs.value if isinstance(refs, _Ref) else None


class _SinkHandle:
    """A handle on a :class:`ProgressSink`: ``put.remote`` queues the call (answered when waited for, or at once
    with ``eager``), ``drain.remote`` answers at once; ``dead``: every call's answer is an actor error."""

    def __init__(self, sink, eager=True, dead=None):
        self.sink, self.dead, self.sent = sink, dead, 0
        handle = self

        class _Put:
            @staticmethod
            def remote(event):
                handle.sent += 1
                if handle.dead:
                    return _Ref(error=handle.dead)
                ref = _Ref(call=lambda: sink.put(event))
                if eager:
                    ref.run()
                return ref

        class _Drain:
            @staticmethod
            def remote():
                ref = _Ref(error=handle.dead)
                ref.value = [] if handle.dead else sink.drain()
                return ref

        self.put, self.drain = _Put, _Drain


def _job(name, attempts=1):
    return SimpleNamespace(name=name, attempts=attempts)


def test_progress_events_reach_on_event_in_order_and_stale_ones_are_dropped():
    from echomimic_lib.jobs.batch.ray_progress import ProgressSender, ProgressSink, drain

    sink = ProgressSink()
    handle, fake = _SinkHandle(sink, eager=False), _FakeRay()
    a, b = SimpleNamespace(wid=0), SimpleNamespace(wid=1)
    ja, jb, jold = _job("ra", attempts=2), _job("rb"), _job("rold")
    senders = [ProgressSender(fake, handle, 0), ProgressSender(fake, handle, 1), ProgressSender(fake, handle, 1)]
    pa, pb = senders[0].for_job(ja), senders[1].for_job(jb)
    for i in range(1, 4):
        pa(i, 3)
        pb(i, 3)
    senders[1].for_job(jold)(1, 3)          # a job no longer in flight (done, or its actor died)
    senders[0].for_job(_job("ra"))(1, 3)    # the first attempt of ra: its actor died, ra went to actor 0 again
    senders[2].for_job(ja)(1, 3)            # ra, but from another actor
    assert not sink.events and all(s.in_flight for s in senders)  # sent, not yet answered: the render went on
    for s in senders:
        s.flush()                          # the end of a job: every event in the sink
    assert len(sink.events) == 9 and not any(s.in_flight for s in senders)
    got = []
    busy = {"ref_a": (a, ja), "ref_b": (b, jb)}
    assert drain(fake, handle, busy, lambda *e: got.append(e)) is handle
    assert got == [("progress", a, ja, (i, 3)) for i in (1, 2, 3)] + [("progress", b, jb, (i, 3)) for i in (1, 2, 3)]
    assert not sink.events  # drained once


def test_progress_is_dropped_not_waited_for_when_nobody_answers():
    from echomimic_lib.jobs.batch.ray_progress import ProgressSender, ProgressSink

    # the driver lags: the sink keeps the newest events, the oldest are pushed out and counted
    sink = ProgressSink(size=3)
    for i in range(1, 6):
        sink.put(("w", "r", 1, i, 5))
    assert [e[3] for e in sink.drain()] == [3, 4, 5] and sink.dropped == 2 and sink.drain() == []
    # the sink does not answer: at most `limit` sends in flight, the rest dropped at once; the end of the job
    # waits flush_s once, then the sender gives up (no more sends, no more waits)
    handle = _SinkHandle(ProgressSink(), eager=False)
    fake = _FakeRay(answers=False)
    sender = ProgressSender(fake, handle, 0, limit=4, flush_s=0.2)
    progress = sender.for_job(_job("r"))
    for i in range(100):
        progress(i, 100)
    assert handle.sent == 4 and sender.dropped == 96 and not any(fake.waits)  # every look at the answers: timeout 0
    sender.flush()
    assert [w for w in fake.waits if w] == [0.2] and sender.sink is None  # one bounded wait, then given up
    n = len(fake.waits)
    progress(1, 100)
    sender.flush()
    assert handle.sent == 4 and len(fake.waits) == n  # given up: no more sends, no more waits


def test_a_dead_progress_actor_fails_no_row(monkeypatch):
    from echomimic_lib.jobs.batch import ray_backend, workers
    from echomimic_lib.jobs.batch.ray_progress import ProgressSender, ProgressSink, drain

    class ActorDied(Exception):
        pass

    handle = _SinkHandle(ProgressSink(), dead=ActorDied("The actor died unexpectedly before finishing this task."))
    calls = []

    def render_payload(job, device, cache, scorer, progress=None):  # a render that reports each step
        for i in range(1, 4):
            progress(i, 3)
            calls.append(i)
        return {"status": "ok", "frames": 3}

    monkeypatch.setattr(workers, "render_payload", render_payload)
    actor = ray_backend.RayWorker.__new__(ray_backend.RayWorker)  # its state without torch or models
    actor.device, actor.cache, actor.scorer = "cpu", None, None
    actor.progress = ProgressSender(_FakeRay(), handle, 0)
    assert actor.render(_job("r")) == {"status": "ok", "frames": 3} and calls == [1, 2, 3]
    assert actor.progress.sink is None and handle.sent <= 2  # found dead at the next step: no more sends
    # a put that raises at once (the handle itself unusable) is the same
    broken = SimpleNamespace(put=SimpleNamespace(remote=lambda e: (_ for _ in ()).throw(ActorDied("gone"))))
    sender = ProgressSender(_FakeRay(), broken, 0)
    sender.for_job(_job("r"))(1, 3)
    assert sender.sink is None
    # the driver: a sink it cannot reach is given up, nothing forwarded, the batch goes on
    got = []
    assert drain(_FakeRay(), handle, {"r": (SimpleNamespace(wid=0), _job("r"))}, lambda *e: got.append(e)) is None
    assert got == [] and drain(_FakeRay(), None, {}, lambda *e: got.append(e)) is None
