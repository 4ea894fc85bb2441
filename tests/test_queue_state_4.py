"""``echomimic queue``, round 4, against stand-in servers: ``--timeout`` is honoured with several ``--server`` as with
one; every HTTP exchange has an overall deadline (a server trickling its answer no longer holds a request open); an
uploaded file's name is written into the multipart header as browsers write it (``"``, CR, LF and ``\\`` encoded) and
the workflow refers to the name the server keeps; a prompt's attempts go with it to another server; and a run that finds
the state's lock held says who holds it, and whether that process is stopped (Ctrl-Z)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.test_batch_hunt_5 import WORKFLOW, _comfy_handler, _queue, comfy, media  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]


def _saved(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def held():
    """``held(make)``: a stand-in server of the handler ``make(release)`` (its URL), whose answers wait for or trickle
    until the ``release`` event; at the end every one is released and stopped."""
    from tests._http_stub import start

    release, stops = threading.Event(), []

    def serve(make) -> str:
        url, stop = start(make(release))
        stops.append(stop)
        return url

    yield serve
    release.set()
    for stop in stops:
        stop()


def _stalling_handler(release: threading.Event):
    """A server that accepts connections but answers nothing until ``release`` (a hung ComfyUI)."""
    from tests._http_stub import JsonHandler

    class Stall(JsonHandler):
        def do_GET(self):
            release.wait(30)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            release.wait(30)

    return Stall


# ------------------------------------------------------------------------------------------------ 1. --timeout, several servers
def test_several_servers_honour_timeout_and_say_it_ran_out(media, tmp_path, capsys, held):
    servers = [held(_stalling_handler) for _ in range(2)]
    code = _queue(servers[0], media, "--server", servers[1], "--results", str(tmp_path), "--timeout", "0.3")
    assert code == 1
    recs = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in recs] == ["error", "error"]
    for rec in recs:  # the same words as with one server: the timeout given, and the fix
        assert "no ComfyUI server answers any more" in rec["error"]
        # (a silent server: each read's timeout runs out first; the overall deadline, twice it, would say so too)
        assert "no answer within 0.3 s" in rec["error"] or "within 0.6 s (twice --timeout" in rec["error"], rec["error"]
        assert "--timeout" in rec["error"] and all(u in rec["error"] for u in servers)


# ------------------------------------------------------------------------------------------------ 2. overall deadline
def _trickling_handler(where: str, release: threading.Event):
    """A server that sends its answer a byte at a time (every 50 ms, 120 bytes in all: 6 s), in the headers or the
    body: each read gets a byte well within any per-read timeout."""
    from tests._http_stub import JsonHandler

    class Trickle(JsonHandler):
        def _drip(self, data: bytes):
            for i in range(len(data)):
                if release.wait(0.05):
                    return
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()

        def do_POST(self):  # (an upload: answered the same way)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.do_GET(b'{"name": "anna.png", "subfolder": "", "type": "input"}')

        def do_GET(self, reply=b'{"queue_running": [], "queue_pending": []}'):
            body = b" " * 80 + reply
            if where == "headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self._drip(b"X-Pad: " + b"a" * 100 + b"\r\n")
                self.wfile.write(b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self._drip(body)

    return Trickle


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_server_trickling_its_answer_runs_into_an_overall_deadline(where, held):
    from echomimic_lib.jobs import queue_client as qc

    url = held(lambda release: _trickling_handler(where, release))
    with pytest.raises(qc.QueueError) as info:
        qc._request(f"{url}/queue", timeout=0.5)
    msg = str(info.value)
    assert f"{url}/queue" in msg and "did not come whole within 1 s (twice --timeout" in msg
    assert "--timeout" in msg and "--server" in msg


def test_a_trickling_server_stops_a_one_server_run_naming_timeout(media, capsys, held):
    url = held(lambda release: _trickling_handler("body", release))
    assert _queue(url, media, "--timeout", "0.5") == 2
    err = capsys.readouterr().err
    assert "did not come whole within 1 s" in err and "--timeout" in err


# ------------------------------------------------------------------------------------------------ 3. file names in the header
def _uploads_as(state: dict, keep):
    """The stand-in ComfyUI of ``_comfy_handler(state)`` whose /upload/image answers ``keep(headers, body)``: the name
    it keeps the file as, or (code, reply) to refuse it."""
    base = _comfy_handler(state)

    class Upload(base):
        def do_POST(self):
            if self.path != "/upload/image":
                return super().do_POST()
            kept = keep(self.headers, self.rfile.read(int(self.headers["Content-Length"])))
            if isinstance(kept, tuple):
                return self._reply(*kept)
            return self._reply(200, {"name": kept, "subfolder": "", "type": "input"})

    return Upload


def _one_pair(tmp_path, portrait: str = "anna.png") -> tuple[Path, Path]:
    """faces/<portrait> and speech/hello.wav: one job."""
    faces, speech = tmp_path / "faces", tmp_path / "speech"
    faces.mkdir(), speech.mkdir()
    (faces / portrait).write_bytes(b"img")
    (speech / "hello.wav").write_bytes(b"aud")
    return faces, speech


def _aiohttp_like_handler(state: dict):
    """A stand-in whose /upload/image reads the part's Content-Disposition as aiohttp (ComfyUI's) does: one header
    line, ``filename`` a quoted string whose ``\\x`` is read as ``x``; a malformed part is a 400. It keeps the name."""
    def keep(headers, body):
        boundary = headers["Content-Type"].split("boundary=", 1)[1].encode()
        part = body.split(b"--" + boundary + b"\r\n", 1)[1]
        head = part.split(b"\r\n\r\n", 1)[0].decode()
        lines = head.split("\r\n")
        found = re.fullmatch(r'Content-Disposition: form-data; name="image"; filename="((?:[^"\\\r\n]|\\.)*)"',
                             lines[0])
        if not found or len(lines) != 2 or not lines[1].startswith("Content-Type: "):
            return 400, {"error": f"malformed part {head!r}"}
        name = re.sub(r"\\(.)", r"\1", found.group(1))
        state.setdefault("stored", []).append(name)
        return name

    return _uploads_as(state, keep)


@pytest.mark.parametrize("name, kept", [
    ('say "hi".png', "say %22hi%22.png"),
    ("two\r\nlines.png", "two%0D%0Alines.png"),
    ("back\\slash.png", "back%5Cslash.png"),
    (os.fsdecode(b"not-utf8-\xff.png"), "not-utf8-%FF.png"),  # (a Linux name of other bytes: a traceback before)
])
def test_an_uploaded_name_is_encoded_as_browsers_do_and_the_workflow_refers_to_the_kept_name(tmp_path, name, kept):
    from echomimic_lib.jobs import queue_client as qc
    from tests._http_stub import start

    faces, speech = _one_pair(tmp_path, name)
    state = {"prompts": []}
    url, stop = start(_aiohttp_like_handler(state))
    sent = []
    real = qc.post_prompt
    try:
        qc.post_prompt = lambda server, prompt, *a, **k: sent.append(prompt) or real(server, prompt, *a, **k)
        results = qc.queue_folder(WORKFLOW, faces, speech, url)
    finally:
        qc.post_prompt = real
        stop()
    assert state["stored"] == [kept, "hello.wav"] and results[0]["prompt_id"] == "p1"
    images = [n["inputs"]["image"] for n in sent[0].values() if n.get("class_type") == "LoadImage"]
    assert images == [kept]


# ------------------------------------------------------------------------------------------------ 4. attempts across servers
def _renaming_handler(state: dict):
    """A server that keeps every upload as ``name (1).ext`` (it has another file of that name): its prompts differ."""
    def keep(headers, body):
        stem, dot, ext = body.split(b'filename="', 1)[1].split(b'"', 1)[0].decode().rpartition(".")
        return f"{stem} (1){dot}{ext}"

    return _uploads_as(state, keep)


def test_a_retried_prompt_moved_to_another_server_keeps_its_attempts(tmp_path, capsys, monkeypatch):
    from echomimic_lib.jobs.batch import comfy_servers
    from tests._http_stub import start

    media1, results = _one_pair(tmp_path), tmp_path / "results"
    faces = media1[0]
    a_state, b_state = {"prompts": [], "how": {"p1": "error", "p2": "pending"}}, {"prompts": [], "how": {"p1": "error"}}
    (a_url, stop_a), (b_url, stop_b) = start(_comfy_handler(a_state)), start(_renaming_handler(b_state))
    stopped = []

    def sleep(seconds):  # the first poll of the second run: server A goes away with the retried prompt p2
        if len(a_state["prompts"]) == 2 and not stopped:
            stopped.append(stop_a())

    monkeypatch.setattr(comfy_servers.time, "sleep", sleep)
    try:
        assert _queue(a_url, media1, "--server", b_url, "--results", str(results)) == 1  # p1 fails on A
        assert _queue(a_url, media1, "--server", b_url, "--results", str(results), "--resume", "--retry-failed",
                      "--attempts", "2") == 1  # attempt 2 (p2 on A); A goes; on B it fails
        assert stopped and b_state["prompts"] == ["p1"]
        rec = _saved(faces / ".echomimic_queue.json")["servers"][b_url]["echomimic/anna__hello"]
        assert rec["attempts"] == 2 and "failed" in rec  # the second prompt of the job, wherever it ran
        capsys.readouterr()
        assert _queue(a_url, media1, "--server", b_url, "--results", str(results), "--resume", "--retry-failed",
                      "--attempts", "2") == 1
    finally:
        if not stopped:
            stop_a()
        stop_b()
    err = capsys.readouterr().err
    assert b_state["prompts"] == ["p1"], err  # not queued a third time
    assert "failed 2 time(s), the most --attempts 2 allows; not queued again" in err


# ------------------------------------------------------------------------------------------------ 5. who holds the lock
HOLDER = """
import os, signal, sys
from echomimic_lib.jobs.queue_lock import StateLock
with StateLock(sys.argv[1]):
    print("locked", flush=True)
    if sys.argv[2] == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)  # Ctrl-Z while holding the lock
    else:
        sys.stdin.readline()
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists() or os.name == "nt", reason="Linux: /proc and SIGSTOP")
@pytest.mark.parametrize("how", ["stop", "busy"])
def test_a_run_that_finds_the_lock_held_says_who_holds_it_and_whether_it_is_stopped(tmp_path, capsys, how):
    from echomimic_lib.jobs.queue_lock import StateLock

    def process_state(pid):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    lock = tmp_path / "s.json.lock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), how], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env, text=True)
    got, said = [], []
    try:
        assert holder.stdout.readline().strip() == "locked"
        for _ in range(400):  # until the holder has stopped itself
            if how != "stop" or process_state(holder.pid) == "T":
                break
            time.sleep(0.025)

        def second():
            with StateLock(lock):
                got.append(True)

        waiter = threading.Thread(target=second, daemon=True)
        waiter.start()
        for _ in range(400):  # the second run says so at once (before the fix: silence, then we let the holder go)
            said.append(capsys.readouterr().err)
            if "waiting for the lock" in "".join(said):
                break
            time.sleep(0.025)
        assert not got  # it still waits: the lock is held
    finally:
        if how == "stop":
            os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)
    waiter.join(timeout=30)
    message = "".join(said) + capsys.readouterr().err
    assert got == [True]  # then it got the lock, as before
    assert f"waiting for the lock on {lock}" in message and f"pid {holder.pid}" in message
    if how == "stop":
        assert "stopped" in message and f"kill -CONT {holder.pid}" in message and "`fg`" in message
    else:
        assert "stopped" not in message
