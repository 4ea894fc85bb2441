"""A studio running `echomimic batch` over hundreds of clips: a hung row, a crashing weight set on Ray, the words of
the retry log, the pool's own init (session 23, batch5)."""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
from types import SimpleNamespace

import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.jobs.batch.manifest_row import Job
from tests.test_batch import media  # noqa: F401 - (the tiny weights and inputs fixture)


def _job(line: int, name: str, key=("m", "v2", "a"), out=None):
    request = SimpleNamespace(output=str(out)) if out is not None else None
    return Job(line, name, "animate", request, weight_key=key)


# ------------------------------------------------------------------------------------ 1. --row-timeout: a hung row
class _HungProc:
    """A worker process that never answers (deadlocked): alive until killed."""
    exitcode = None

    def __init__(self):
        self.sentinel, self._w = os.pipe()  # never readable
        self.killed = False

    def is_alive(self):
        return not self.killed

    def kill(self):
        self.killed, self.exitcode = True, -9

    def join(self, timeout=None):
        pass


def _hung_pool(monkeypatch, workers: int, row_timeout):
    from echomimic_lib.jobs.batch import workers as w

    clock = iter(range(0, 10**9, 1000))  # every look at the clock: 1000 s later (no real waiting)
    monkeypatch.setattr(w.time, "monotonic", lambda: next(clock))
    pool = w.LocalPool.__new__(w.LocalPool)
    w.CrashRule.__init__(pool, workers, 3)
    pool.row_timeout, pool.workers, pool._next_id, procs = row_timeout, [], 0, []

    def spawn(device):
        ours, _theirs = mp.Pipe()
        proc = _HungProc()
        procs.append((proc, _theirs))
        worker = w._Worker(pool._next_id, device, proc, ours)
        worker.idle = True
        pool.workers.append(worker)
        pool._next_id += 1

    pool._spawn = spawn
    for _ in range(workers):
        spawn("cpu")
    return pool, procs


def test_a_hung_row_is_stopped_at_the_row_timeout_and_the_batch_goes_on(monkeypatch):
    """A deadlocked worker blocked the batch forever (no per-row limit). With --row-timeout its worker is killed,
    the row fails saying so, a fresh worker takes its place, and the other rows still get their turn."""
    pool, procs = _hung_pool(monkeypatch, 1, 1800.0)
    events = []
    pool.run([_job(2, "a"), _job(3, "b")], lambda kind, wk, job, payload: events.append((kind, job.name, payload)))
    done = {name: p for kind, name, p in events if kind == "done"}
    assert sorted(done) == ["a", "b"]  # both rows were handed out, each to a fresh worker after the other hung
    for payload in done.values():
        assert payload["status"] == "error" and "took longer than --row-timeout 30m" in payload["error"]
        assert "raise it" in payload["error"]
    assert all(proc.killed for proc, _ in procs[:2]) and len(pool.workers) == 1  # a fresh worker is left
    assert [k for k, *_ in events].count("died") == 2
    pool.workers[0].conn.close()


def test_without_a_row_timeout_a_slow_row_is_not_stopped(monkeypatch):
    """Default off: today's behaviour (no row is stopped, however long it takes)."""
    from echomimic_lib.jobs.batch import workers as w

    pool, procs = _hung_pool(monkeypatch, 1, None)
    events, worker = [], pool.workers[0]
    calls = {"n": 0}
    real_wait = w.wait

    def wait_then_finish(conns, timeout=None):  # after a few rounds the row finishes on its own
        calls["n"] += 1
        if calls["n"] == 3:
            procs[0][1].send(("done", "a", {"status": "ok"}))
        return real_wait(conns, timeout=0.01)

    monkeypatch.setattr(w, "wait", wait_then_finish)
    pool.run([_job(2, "a")], lambda kind, wk, job, payload: events.append((kind, job.name, payload)))
    assert ("done", "a", {"status": "ok"}) in events and not procs[0][0].killed
    worker.conn.close()


def test_a_row_that_finishes_as_its_time_runs_out_is_not_killed(monkeypatch):
    """The row's "done" reached the pipe just after the batch looked: its worker is not killed over a finished row."""
    from echomimic_lib.jobs.batch import workers as w

    pool, procs = _hung_pool(monkeypatch, 1, 1800.0)
    calls = {"n": 0}
    real_wait = w.wait

    def wait_then_answer(conns, timeout=None):
        calls["n"] += 1
        ready = real_wait(conns, timeout=0.01)
        if calls["n"] == 1:  # after the look: the answer arrives, the clock is past the limit
            procs[0][1].send(("done", "a", {"status": "ok"}))
            return []
        return ready

    monkeypatch.setattr(w, "wait", wait_then_answer)
    events = []
    pool.run([_job(2, "a")], lambda kind, wk, job, payload: events.append((kind, job.name, payload)))
    assert events[-1] == ("done", "a", {"status": "ok"}) and not procs[0][0].killed
    pool.workers[0].conn.close()


@pytest.mark.parametrize("text, seconds", [("1800", 1800.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0),
                                           (" 1.5H ", 5400.0), (None, None), ("", None)])
def test_row_timeout_values(text, seconds):
    from echomimic_lib.jobs.batch.runner import parse_row_timeout

    assert parse_row_timeout(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5", "0m", "soon", "30x", "nan", "inf", "m"])
def test_a_wrong_row_timeout_is_refused_before_any_work(text, tmp_path):
    from echomimic_lib.cli import build_parser
    from echomimic_lib.cli.batch import _cmd_batch

    (tmp_path / "jobs.csv").write_text("name,reference,audio\nr1,missing.png,missing.wav\n")
    args = build_parser().parse_args(["batch", str(tmp_path / "jobs.csv"), "-o", str(tmp_path / "out"),
                                      f"--row-timeout={text}", "--device", "cpu"])
    with pytest.raises(EchoMimicError, match=r"--row-timeout .*use a time above 0"):
        _cmd_batch(args)
    assert not (tmp_path / "out").exists()  # nothing made


def test_row_timeout_is_said_in_help():
    from echomimic_lib.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and a.choices and "batch" in a.choices)
    text = sub.choices["batch"].format_help()
    assert "--row-timeout" in text and "30m" in text


def test_the_timeout_error_names_the_limit_as_written():
    from echomimic_lib.jobs.batch.workers import format_seconds, timeout_error

    assert [format_seconds(s) for s in (45, 90, 1800, 7200, 5400, 2.5)] == ["45s", "90s", "30m", "2h", "90m", "2.5s"]
    assert "--row-timeout 30m" in timeout_error(1800, 0, "cpu") and "--row-timeout 1h" in timeout_error(1800, 0, "cpu")


# ------------------------------------------------------------- 2. the crashing-weight-set rule, shared with Ray
BAD, GOOD = ("m", "v2", "bad"), ("m", "v2", "good")


def test_the_shared_rule_fails_a_crashing_set_only_and_says_so_once():
    from echomimic_lib.jobs.batch.crash_rule import CrashRule

    rule, pending = CrashRule(1, 2), [_job(3, "b2", BAD), _job(4, "b3", BAD), _job(5, "g1", GOOD)]
    b1 = _job(2, "b1", BAD)
    ended = []
    for _ in range(2):
        b1.attempts += 1
        ended += rule.died(b1, "worker 0 (cpu) died", pending)
        if b1.retrying:
            assert pending.pop(0) is b1  # back at the front of the queue, taken again
    assert [(j.name, p["error"].endswith("giving up on this row.")) for j, p in ended] == [("b1", True)]
    b2 = pending.pop(0)
    b2.attempts += 1
    ended = rule.died(b2, "worker 0 (cpu) died", pending)
    assert [j.name for j, _ in ended] == ["b2", "b3"] and [j.name for j in pending] == ["g1"]
    assert all("crashes the worker" in p["error"] and "echomimic doctor --models m --weights v2" in p["error"]
               for _, p in ended)
    assert not b2.retrying


class _ActorDied(Exception):
    actor_init_failed = False


class _Ref:
    def __init__(self, value):
        self.value = value


class _FakeRay:
    """Enough of Ray for :func:`ray_backend._run`: actors render at once; a row of ``crash``'s weight set kills its actor."""
    exceptions = SimpleNamespace(RayActorError=_ActorDied)

    def __init__(self, crash):
        self.crash, self.started = crash, 0

    def cluster_resources(self):
        return {"CPU": 4}

    def remote(self, _cls):
        def make(*_a):
            self.started += 1
            return SimpleNamespace(where=SimpleNamespace(remote=lambda: _Ref({"device": "cpu", "gpu_ids": [], "node": "n"})),
                                   render=SimpleNamespace(remote=lambda job: _Ref(
                                       _ActorDied("died") if job.weight_key == self.crash else {"status": "ok"})))
        return SimpleNamespace(options=lambda **_k: SimpleNamespace(remote=make))

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:1], refs[1:]

    def get(self, ref, timeout=None):
        if isinstance(ref.value, Exception):
            raise ref.value
        return ref.value

    def kill(self, _handle):
        pass


def test_ray_fails_a_weight_set_that_crashes_its_actors_like_the_local_pool(monkeypatch):
    """Ray retried every row of a broken weight set max_attempts times, each crash a dead actor (hours on a cluster);
    it now keeps the local pool's rule: the set's rows fail with one error naming the doctor check."""
    from echomimic_lib.jobs.batch import ray_backend

    monkeypatch.setattr(ray_backend, "_start_sink", lambda ray: None)
    opts = SimpleNamespace(device="cpu", workers=1, threads=1, scores=False, max_attempts=2)
    jobs = [_job(2, "b1", BAD), _job(3, "b2", BAD), _job(4, "b3", BAD), _job(5, "g1", GOOD)]
    events, fake = [], _FakeRay(BAD)
    ray_backend._run(fake, jobs, opts, lambda kind, w, job, payload: events.append((kind, job.name, payload,
                                                                                     job.retrying)))
    done = {name: p for kind, name, p, _ in events if kind == "done"}
    assert done["g1"] == {"status": "ok"}
    assert "giving up on this row" in done["b1"]["error"]
    assert "crashes the worker" in done["b2"]["error"] and done["b3"] == done["b2"]
    assert [name for kind, name, *_ in events if kind == "start"].count("b3") == 0  # never rendered
    # 3. the words of the death: "retrying" only when the row goes back to the queue
    assert [(name, retrying) for kind, name, _, retrying in events if kind == "died"] == \
        [("b1", True), ("b1", False), ("b2", False)]


# ----------------------------------------------------- 3. the "retrying" log line before a set is declared failing
def test_the_log_says_giving_up_when_the_set_is_declared_failing(caplog, monkeypatch):
    """The line before a weight set is declared failing said "retrying", then nothing was retried."""
    from tests.test_batch_user_3 import _pool

    pool, pending = _pool(1, max_attempts=2), [_job(3, "b2", BAD), _job(4, "g1", GOOD)]
    seen = []

    def on_event(kind, _w, job, payload):
        if kind == "died":
            seen.append((job.name, job.retrying))
    b1 = _job(2, "b1", BAD)
    for _ in range(2):
        pool.workers[0].job = b1
        b1.attempts += 1
        pool._buried(pool.workers[0], pending, on_event)
        if pending[0] is b1:  # requeued: taken again
            pending.pop(0)
    b2 = pending.pop(0)
    pool.workers[0].job = b2
    b2.attempts += 1
    pool._buried(pool.workers[0], pending, on_event)
    assert seen == [("b1", True), ("b1", False), ("b2", False)] and [j.name for j in pending] == ["g1"]


def test_the_runner_logs_what_the_pool_decided(tmp_path, monkeypatch, caplog):
    from echomimic_lib.jobs.batch import runner

    out = tmp_path / "out"
    job = _job(2, "a", out=out / "a.mp4")
    job.fingerprint = "f"

    def dispatch(todo, opts, on_event):
        j = todo[0]
        j.attempts, j.retrying = 1, False  # first attempt, yet its set was declared failing: no retry
        on_event("died", None, j, "worker 0 (cpu) died (exit code -11) while rendering it")
        on_event("done", None, j, {"status": "error", "error": "its weight set (...) crashes the worker"})

    monkeypatch.setattr(runner, "check_jobs", lambda jobs: jobs)
    monkeypatch.setattr(runner, "_prepare_weights", lambda todo: None)
    monkeypatch.setattr(runner, "_dispatch", dispatch)
    with caplog.at_level(logging.WARNING, logger="echomimic_lib"):
        runner.run_batch([job], out, runner.BatchOptions(device="cpu", quiet=True, max_attempts=3))
    said = [r.getMessage() for r in caplog.records if "died" in r.getMessage()]
    assert said and said[0].endswith("giving up") and "retrying" not in said[0]


# ------------------------------------------------------------------ 4. the pool's counters have their own init
def test_the_pool_and_ray_share_one_explicit_init():
    import inspect

    from echomimic_lib.jobs.batch import ray_backend, workers
    from echomimic_lib.jobs.batch.crash_rule import CrashRule

    assert "__dict__" not in inspect.getsource(workers)
    assert issubclass(workers.LocalPool, CrashRule) and "CrashRule(" in inspect.getsource(ray_backend._run)
    rule = CrashRule(2, 3)
    assert (rule.respawns_left, rule.set_crashes, rule.bad_sets) == (4, {}, {})  # max(2 per worker, attempts)


def test_ray_refuses_a_row_timeout_up_front(tmp_path):
    from echomimic_lib.jobs.batch import runner

    with pytest.raises(EchoMimicError, match="--row-timeout works with the local workers only"):
        runner.run_batch([], tmp_path / "out", runner.BatchOptions(backend="ray", row_timeout="30m"))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------ end to end: a real worker that stops answering, then a rerun
@pytest.mark.slow
def test_a_stopped_worker_fails_its_row_at_the_timeout_and_a_rerun_renders_it(media, tmp_path):
    """A worker frozen mid-row (SIGSTOP: alive, never answering, as a deadlock) is killed at --row-timeout: its row
    fails saying so, its partial file is gone, the next row renders on a fresh worker; the same command again
    renders the failed row and skips the finished one."""
    import signal

    from echomimic_lib.jobs.batch import BatchOptions, read_manifest, run_batch
    from tests.test_batch import FRAMES, _good_rows, _manifest, _no_partials, _results

    out = tmp_path / "out"
    frozen = []

    def on_event(kind, worker, job, payload):
        if kind == "start" and job.name == "r0" and not frozen:
            frozen.append(worker.wid)
            out.mkdir(exist_ok=True)
            (out / ".r0.12345.partial.mp4").write_bytes(b"half a video")  # what a killed render leaves
            os.kill(worker.proc.pid, signal.SIGSTOP)

    defaults = {"models": str(media / "models"), "offline": "true", "steps": 1, "width": 64, "height": 64, "length": FRAMES}
    jobs = read_manifest(_manifest(media / "hang.csv", _good_rows(2)), out, defaults)
    s = run_batch(jobs, out, BatchOptions(workers=1, threads=1, scores=False, quiet=True, on_event=on_event,
                                          row_timeout="40s"))
    res = _results(out)
    assert s.exit_code == 1 and res["r0"]["status"] == "error" and "longer than --row-timeout 40s" in res["r0"]["error"]
    assert res["r1"]["status"] == "ok" and res["r1"]["worker"] != frozen[0] and not (out / "r0.mp4").exists()
    _no_partials(out)
    s = run_batch(read_manifest(media / "hang.csv", out, defaults), out,
                  BatchOptions(workers=1, threads=1, scores=False, quiet=True, row_timeout="40s"))
    assert (s.ok, s.skipped) == (1, 1) and probe_frames(out / "r0.mp4") == FRAMES


def probe_frames(path):
    from echomimic_lib.io.video_io import probe

    return probe(path)["frames"]
