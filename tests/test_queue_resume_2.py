"""``echomimic queue``'s state, round 2: two runs sharing a folder keep each other's entries (the file is re-read and
merged under an OS lock) and a second run on the same jobs is refused naming the live one (a killed one's entry is
not); ``--resume`` over several ``--server`` asks each server about its own prompts and queues a dead server's jobs on
the others, a line each; a damaged or foreign state file is a clear error, never overwritten."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from tests.test_batch_hunt_5 import WORKFLOW, _comfy_handler, _queue, comfy, media  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]


def _saved(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------- runs sharing a folder
def test_two_state_objects_keep_each_others_entries(tmp_path):
    """Each run read the file once and wrote its whole copy: the second run's write dropped the first run's entries."""
    from echomimic_lib.jobs.queue_state import QueueState

    path = tmp_path / ".echomimic_queue.json"
    one, two = QueueState(path), QueueState(path)
    one.record("http://a", "x/anna__hello", "f1", "p1")
    two.record("http://a", "y/anna__hello", "f2", "p2")
    one.record("http://a", "x/anna__hello", "f1", "p1", ["x/p1.mp4"])
    saved = _saved(path)["servers"]["http://a"]
    assert saved == {"x/anna__hello": {"prompt_id": "p1", "fingerprint": "f1", "attempts": 1, "files": ["x/p1.mp4"]},
                     "y/anna__hello": {"prompt_id": "p2", "fingerprint": "f2", "attempts": 1}}


def test_threads_recording_at_once_lose_nothing(tmp_path):
    from echomimic_lib.jobs.queue_state import QueueState

    path = tmp_path / "state.json"

    def run(n):
        book = QueueState(path)
        for i in range(10):
            book.record(f"http://s{n % 2}", f"r{n}/job{i}", "f", f"p{n}-{i}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    saved = _saved(path)["servers"]
    assert sum(len(jobs) for jobs in saved.values()) == 60


def _gated_comfy(state: dict, gate: str, arrived: threading.Event, release: threading.Event):
    """A stand-in ComfyUI whose first /prompt answer for a prefix starting with ``gate`` waits for ``release``."""
    from tests._http_stub import JsonHandler

    lock = threading.Lock()

    class Gated(JsonHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/upload/image":
                name = body.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
                return self._reply(200, {"name": name, "subfolder": "", "type": "input"})
            prompt = json.loads(body)["prompt"]
            prefix = next(v["inputs"]["filename_prefix"] for v in prompt.values() if v["class_type"] == "SaveVideo")
            if prefix.startswith(gate) and not arrived.is_set():  # (the first such prompt only: no run waits twice)
                arrived.set()
                release.wait()
            with lock:
                state["prompts"].append(prefix)
                pid = f"p{len(state['prompts'])}"
            return self._reply(200, {"prompt_id": pid, "number": 1, "node_errors": {}})

        def do_GET(self):
            self._reply(200, {})

    return Gated


def _cli(media, url, *extra) -> list[str]:
    return [sys.executable, "-m", "echomimic_lib.jobs.queue_client", str(WORKFLOW), "--portraits", str(media[0]),
            "--audios", str(media[1]), "--server", url, "--timeout", "600", *extra]


def test_two_processes_on_one_folder_merge_and_a_third_on_the_same_jobs_is_refused(media):
    """Run A is held in its first POST /prompt; run B (another --prefix) runs from start to end meanwhile; run C (A's
    jobs) is refused naming A's pid; then A finishes. The state keeps A's and B's jobs, and no run is left named."""
    from tests._http_stub import start

    state, arrived, release = {"prompts": []}, threading.Event(), threading.Event()
    url, stop = start(_gated_comfy(state, "first/", arrived, release))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen(_cli(media, url, "--prefix", "first"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert arrived.wait(300), first.communicate()
        second = subprocess.run(_cli(media, url, "--prefix", "second"), env=env, capture_output=True, text=True)
        third = subprocess.run(_cli(media, url, "--prefix", "first"), env=env, capture_output=True, text=True)
    finally:
        release.set()
        out, err = first.communicate()
        stop()
    assert first.returncode == 0 and second.returncode == 0, (err, second.stderr)
    assert third.returncode == 2 and f"pid {first.pid} on host" in third.stderr, third.stderr
    assert "--resume" in third.stderr and "another --prefix" in third.stderr and "Traceback" not in third.stderr
    saved = _saved(media[0] / ".echomimic_queue.json")
    assert sorted(saved["servers"][url]) == ["first/anna__hello", "first/bob__hello", "second/anna__hello",
                                             "second/bob__hello"]
    assert saved["runs"] == {}
    assert sorted(state["prompts"]) == sorted(saved["servers"][url])  # the refused run queued nothing


def test_a_killed_runs_entry_does_not_block_the_next_run(comfy, media, capsys):
    url, state = comfy
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    from echomimic_lib.jobs.queue_lock import host

    path = media[0] / ".echomimic_queue.json"
    path.write_text(json.dumps({"version": 2, "servers": {}, "runs": {"old": {
        "pid": gone.pid, "host": host(), "started": "yesterday", "prefixes": ["echomimic/anna__hello"]}}}))
    assert _queue(url, media) == 0 and state["prompts"] == ["p1", "p2"]
    assert _saved(path)["runs"] == {}
    capsys.readouterr()


# ------------------------------------------------------------------------------------------- several servers
def _two(states):
    from tests._http_stub import start

    return [start(_comfy_handler(st)) for st in states]


def _interrupted_spread(media, tmp_path, servers, monkeypatch):
    from echomimic_lib.jobs.batch import comfy_servers

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(comfy_servers.time, "sleep", interrupt)
    return _queue(servers[0][0], media, "--server", servers[1][0], "--results", str(tmp_path))


def test_resume_over_several_servers_asks_each_server_about_its_own_prompts(media, tmp_path, capsys, monkeypatch):
    from echomimic_lib.jobs.batch import comfy_servers

    states = [{"prompts": [], "how": {"p1": "pending"}}, {"prompts": [], "how": {"p1": "pending"}}]
    servers = _two(states)
    try:
        assert _interrupted_spread(media, tmp_path, servers, monkeypatch) == 130
        assert "--resume" in capsys.readouterr().err
        saved = _saved(media[0] / ".echomimic_queue.json")["servers"]
        assert {u: {k: r["prompt_id"] for k, r in saved[u].items()} for u, _ in servers} == {
            servers[0][0]: {"echomimic/anna__hello": "p1"}, servers[1][0]: {"echomimic/bob__hello": "p1"}}
        states[0]["how"] = {}  # anna's p1 finished on A meanwhile; bob's p1 on B is still running, then finishes
        monkeypatch.setattr(comfy_servers.time, "sleep", lambda s: states[1]["how"].clear())
        rc = _queue(servers[0][0], media, "--server", servers[1][0], "--results", str(tmp_path), "--resume")
    finally:
        for _, stop in servers:
            stop()
    out = capsys.readouterr().out
    assert rc == 0 and [len(st["prompts"]) for st in states] == [1, 1], out  # nothing queued twice
    assert f"echomimic__anna__hello: ok on {servers[0][0]} echomimic/p1.mp4" in out
    assert f"echomimic__bob__hello: ok on {servers[1][0]} echomimic/p1.mp4" in out


def test_resume_queues_a_dead_servers_jobs_on_the_others_saying_so(media, tmp_path, capsys, monkeypatch):
    states = [{"prompts": [], "how": {"p1": "pending"}}, {"prompts": [], "how": {"p1": "pending"}}]
    servers = _two(states)
    try:
        assert _interrupted_spread(media, tmp_path, servers, monkeypatch) == 130
        capsys.readouterr()
        servers[1][1]()  # B is gone
        states[0]["how"] = {}
        monkeypatch.setattr("echomimic_lib.jobs.batch.comfy_servers.time.sleep", lambda s: None)
        rc = _queue(servers[0][0], media, "--server", servers[1][0], "--results", str(tmp_path), "--resume")
    finally:
        servers[0][1]()
    out, err = capsys.readouterr()
    said = [line for line in err.splitlines() if "queued again" in line]
    assert said == [f"bob.png x hello.wav: {servers[1][0]} does not answer; its prompt p1 is queued again on the other "
                    "servers."], err
    assert rc == 0 and states[0]["prompts"] == ["p1", "p2"], out  # anna's p1 collected, bob's queued again on A
    assert f"echomimic__bob__hello: ok on {servers[0][0]} echomimic/p2.mp4" in out
    saved = _saved(media[0] / ".echomimic_queue.json")["servers"]
    assert list(saved) == [servers[0][0]] and saved[servers[0][0]]["echomimic/bob__hello"]["prompt_id"] == "p2"


def test_resume_on_another_single_server_says_the_job_is_queued_again(comfy, media, capsys):
    url, state = comfy
    path = media[0] / ".echomimic_queue.json"
    path.write_text(json.dumps({"version": 1, "servers": {"http://127.0.0.1:9": {
        "echomimic/anna__hello": {"prompt_id": "x1", "fingerprint": "f"}}}}))
    assert _queue(url, media, "--resume") == 0 and state["prompts"] == ["p1", "p2"]
    err = capsys.readouterr().err
    assert "anna.png x hello.wav: its prompt x1 went to http://127.0.0.1:9, which is not among --server now" in err
    assert list(_saved(path)["servers"]) == [url]


# --------------------------------------------------------------------------------------- damaged / foreign files
def test_a_damaged_state_file_is_a_clear_error_before_anything_is_queued(comfy, media, capsys):
    url, state = comfy
    path = media[0] / ".echomimic_queue.json"
    path.write_text('{"version": 2, "servers": {')  # cut off
    assert _queue(url, media, "--resume") == 2
    err = capsys.readouterr().err
    assert str(path) in err and "cannot be read" in err and "delete it or move it away" in err and "Traceback" not in err
    assert state["prompts"] == [] and path.read_text() == '{"version": 2, "servers": {'


def test_a_foreign_json_given_as_state_is_never_overwritten(comfy, media, capsys, tmp_path):
    url, state = comfy
    other = tmp_path / "workflow_copy.json"
    other.write_text(WORKFLOW.read_text())
    assert _queue(url, media, "--state", str(other)) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "is not an `echomimic queue` state file" in err and "--state a file of its own" in err
    assert other.read_text() == WORKFLOW.read_text() and state["prompts"] == []
