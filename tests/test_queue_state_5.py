"""``echomimic queue``, round 5: a prompt that failed is queued again only with ``--retry-failed``, also when its
record is on a server that is gone (not given, unreachable, restarted) or on another server than the one given now;
the state lock's holder line on Windows; no thread is left behind by the requests' deadlines; odd answers of a server
(an HTML error page, a 502 with a body, a redirect, an empty 200, a huge answer) are said clearly; a run interrupted
mid-upload and resumed queues every job once."""
from __future__ import annotations

import json
import threading

import pytest

from tests.test_batch_hunt_5 import WORKFLOW, _comfy_handler, _queue, comfy, media  # noqa: F401  (fixtures)

OOM = "CUDA out of memory"


def _saved(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _records(results) -> list[dict]:
    return [json.loads(line) for line in (results / "results.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def servers():
    """Stand-in ComfyUI servers started on demand (``servers(how, handler)``: (url, state, stop)); all stopped at the
    end."""
    from tests._http_stub import start

    made = []

    def make(how=None, handler=_comfy_handler):
        state = {"prompts": [], "how": dict(how or {})}
        url, stop = start(handler(state))
        stopped = []

        def stop_once():
            if not stopped:
                stopped.append(stop())

        made.append(stop_once)
        return url, state, stop_once

    yield make
    for stop in made:
        stop()


@pytest.fixture
def no_wait(monkeypatch):
    from echomimic_lib.jobs import queue_client as qc
    from echomimic_lib.jobs.batch import comfy_servers

    monkeypatch.setattr(comfy_servers.time, "sleep", lambda s: None)
    monkeypatch.setattr(qc.time, "sleep", lambda s: None)


# ------------------------------------------------------------------------------- 1. failed prompts on a server now gone
def _failed_on_a(servers, media, tmp_path, capsys):
    """Run 1 over A and B: both jobs go to A (the shorter queue, named first) and fail there."""
    a_url, a_state, stop_a = servers({"p1": "error", "p2": "error"})
    b_url, b_state, _ = servers()
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r")) == 1
    assert a_state["prompts"] == ["p1", "p2"] and b_state["prompts"] == []
    capsys.readouterr()
    return a_url, a_state, stop_a, b_url, b_state


def _reported_failed_on(url, tmp_path, capsys, *others):
    out = capsys.readouterr()
    recs = _records(tmp_path / "r")
    assert [r["status"] for r in recs] == ["error", "error"], recs
    for rec in recs:
        assert rec["server"] == url and rec["prompt_id"] in ("p1", "p2") and OOM in rec["error"], rec
        assert "--retry-failed" in rec["error"]
    assert OOM in out.out and url in out.out
    for state in others:
        assert state["prompts"] == []  # queued nowhere again


@pytest.mark.parametrize("gone", ["not given", "unreachable", "restarted"])
def test_resume_does_not_queue_again_a_prompt_that_failed_on_a_server_now_gone(servers, media, tmp_path, capsys,
                                                                                no_wait, gone):
    a_url, a_state, stop_a, b_url, b_state = _failed_on_a(servers, media, tmp_path, capsys)
    c_url, c_state, _ = servers()
    if gone == "not given":
        code = _queue(b_url, media, "--server", c_url, "--results", str(tmp_path / "r"), "--resume")
    else:
        if gone == "unreachable":
            stop_a()
        else:  # its queue and history are empty (ComfyUI keeps them in memory)
            a_state["prompts"].clear()
        code = _queue(a_url, media, "--server", b_url, "--server", c_url, "--results", str(tmp_path / "r"), "--resume")
    assert code == 1  # failures remain
    _reported_failed_on(a_url, tmp_path, capsys, b_state, c_state, *([a_state] if gone == "restarted" else []))
    state = _saved(media[0] / ".echomimic_queue.json")["servers"]
    assert set(state) == {a_url} and all(OOM in r["failed"] for r in state[a_url].values())  # the records stay


def test_resume_with_retry_failed_queues_them_again_on_the_servers_given(servers, media, tmp_path, capsys, no_wait):
    a_url, _, _, b_url, b_state = _failed_on_a(servers, media, tmp_path, capsys)
    c_url, c_state, _ = servers()
    assert _queue(b_url, media, "--server", c_url, "--results", str(tmp_path / "r"), "--resume", "--retry-failed") == 0
    assert len(b_state["prompts"] + c_state["prompts"]) == 2  # each job once more
    state = _saved(media[0] / ".echomimic_queue.json")["servers"]
    assert a_url not in state and {r["attempts"] for s in state.values() for r in s.values()} == {2}
    assert "queued again (attempt 2 of 3)" in capsys.readouterr().err


def test_resume_queues_a_changed_job_anew_even_when_its_failed_prompt_was_on_a_server_now_gone(servers, media,
                                                                                                tmp_path, capsys,
                                                                                                no_wait):
    a_url, _, _, b_url, b_state = _failed_on_a(servers, media, tmp_path, capsys)
    c_url, c_state, _ = servers()
    assert _queue(b_url, media, "--server", c_url, "--results", str(tmp_path / "r"), "--resume", "--seed", "7") == 0
    assert len(b_state["prompts"] + c_state["prompts"]) == 2  # another seed: new prompts, as on a server still there
    assert {r["status"] for r in _records(tmp_path / "r")} == {"ok"}


def test_resume_on_another_single_server_reports_a_failed_prompt_failed(servers, media, tmp_path, capsys, no_wait):
    a_url, a_state, _ = servers({"p1": "error", "p2": "error"})
    b_url, b_state, _ = servers()
    assert _queue(a_url, media, "--wait") == 1
    capsys.readouterr()
    assert _queue(b_url, media, "--resume") == 1  # failures remain
    out = capsys.readouterr()
    assert b_state["prompts"] == []  # not queued again without --retry-failed
    lines = out.out.splitlines()
    assert len(lines) == 2 and all(OOM in line and a_url in line and "--retry-failed" in line for line in lines), out
    assert _queue(b_url, media, "--resume", "--retry-failed") == 0  # with it: queued on B, attempt 2
    assert b_state["prompts"] == ["p1", "p2"]
    rec = _saved(media[0] / ".echomimic_queue.json")["servers"][b_url]
    assert {r["attempts"] for r in rec.values()} == {2}


def test_resume_on_a_single_server_since_restarted_reports_a_failed_prompt_failed(servers, media, capsys, no_wait):
    url, state, _ = servers({"p1": "error"})
    assert _queue(url, media, "--wait") == 1
    state["prompts"].clear()  # restarted: its queue and history are gone
    capsys.readouterr()
    assert _queue(url, media, "--resume") == 1
    out = capsys.readouterr().out
    assert state["prompts"] == [] and "its prompt p1 failed on" in out and OOM in out  # (before: queued again)
    assert "bob.png x hello.wav -> echomimic/bob__hello [p2] echomimic/p2.mp4" in out  # (its files: listed)


# ------------------------------------------------------------------------------- 2. the lock's holder line on Windows
def _as_windows(monkeypatch, running: dict, failures: list):
    """queue_lock's Windows branches, here: no os.pread / os.pwrite, a fake msvcrt (``failures``: the errnos its
    LK_LOCK raises first) and a fake kernel32 whose processes are ``running`` ({pid: exit code, 259: still active})."""
    import ctypes
    import os
    import sys
    import types

    from echomimic_lib.jobs import queue_lock

    def locking(fd, mode, nbytes):
        if mode == 1 and failures:
            raise OSError(failures.pop(0), "Resource deadlock avoided")

    def exit_code(handle, ref):
        ref._obj.value = running[handle]
        return 1

    kernel32 = types.SimpleNamespace(OpenProcess=lambda access, inherit, pid: pid if pid in running else 0,
                                     GetExitCodeProcess=exit_code, CloseHandle=lambda handle: 1)
    monkeypatch.setitem(sys.modules, "msvcrt", types.SimpleNamespace(LK_LOCK=1, LK_UNLCK=0, locking=locking))
    monkeypatch.setattr(queue_lock, "WINDOWS", True)
    monkeypatch.setattr(ctypes, "windll", types.SimpleNamespace(kernel32=kernel32), raising=False)
    monkeypatch.setattr(ctypes, "GetLastError", lambda: 87, raising=False)  # (invalid parameter: no such process)
    monkeypatch.delattr(os, "pread", raising=False)
    monkeypatch.delattr(os, "pwrite", raising=False)
    monkeypatch.setattr(queue_lock, "process_state", lambda pid: "T")  # (what a /proc would say: never asked there)


def test_on_windows_a_run_that_finds_the_lock_held_says_so_once_without_posix_advice(tmp_path, monkeypatch, capsys):
    import errno

    from echomimic_lib.jobs.queue_lock import StateLock

    _as_windows(monkeypatch, {}, [errno.EDEADLK, errno.EACCES])  # two 10 s tries refused, then ours
    lock = tmp_path / "s.json.lock"
    with StateLock(lock):
        pass
    err = capsys.readouterr().err
    assert err.count(f"waiting for the lock on {lock}") == 1, err  # (before: nothing said on Windows)
    assert "another `echomimic queue` run holds it" in err and "console window" in err
    assert "Ctrl-Z" not in err and "`fg`" not in err and "stopped" not in err
    assert lock.read_bytes() == b""  # (no mark written on Windows, where os.pwrite is missing: no crash)


@pytest.mark.parametrize("code", [259, 0])  # the holder runs / has ended
def test_on_windows_the_holder_line_never_says_stopped(tmp_path, monkeypatch, code):
    import os
    import socket
    import time

    from echomimic_lib.jobs import queue_lock

    lock = tmp_path / "s.json.lock"
    lock.write_text(json.dumps({"pid": 4242, "host": socket.gethostname(), "since": time.time()}))
    _as_windows(monkeypatch, {4242: code}, [])
    fd = os.open(lock, os.O_RDWR)
    try:
        said = queue_lock.held_by(fd, lock)  # (before: os.pread missing on Windows, an AttributeError)
    finally:
        os.close(fd)
    assert "stopped" not in said and "kill -CONT" not in said and "Ctrl-Z" not in said, said
    assert ("pid 4242" in said) == (code == 259)
    assert queue_lock.alive(4242, socket.gethostname()) == (code == 259)


# ------------------------------------------------------------------------------- 3. the requests' deadlines
def test_no_deadline_thread_is_left_behind_after_many_exchanges(comfy):
    """Each exchange's deadline is a timer thread; once the answer is read it is stopped and gone, not left to end
    some time later (50 polls: none alive after any of them)."""
    from echomimic_lib.jobs import queue_client as qc

    url, _ = comfy
    left = []
    for _ in range(50):
        assert qc._request(f"{url}/queue", timeout=5) == {"queue_running": [], "queue_pending": []}
        left.append(sum(isinstance(t, threading.Timer) for t in threading.enumerate()))
    assert left == [0] * 50


# ------------------------------------------------------------------------------- 5. odd answers
PAGE = (b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title><style>body{color:red}</style></head>"
        b"<body><h1>502 Bad Gateway</h1><hr>nginx/1.18 &amp; friends</body></html>")


def _odd(kind: str, on: str):
    """A stand-in ComfyUI (one job's upload, prompt p1, its history) whose answers to paths starting with ``on`` are
    ``kind``: an HTML page (200), a 502 with an HTML body, a redirect (302 / 307) or an empty 200."""
    from tests._http_stub import JsonHandler

    class Odd(JsonHandler):
        def _odd(self):
            code, body, headers = {"page": (200, PAGE, [("Content-Type", "text/html")]),
                                   "502": (502, PAGE, [("Content-Type", "text/html")]),
                                   "302": (302, b"", [("Location", "https://comfy.example/login")]),
                                   "307": (307, b"", [("Location", "https://comfy.example" + self.path)]),
                                   "empty": (200, b"", [])}[kind]
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith(on):
                return self._odd()
            if self.path == "/upload/image":
                return self._reply(200, {"name": body.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()})
            return self._reply(200, {"prompt_id": "p1", "number": 1, "node_errors": {}})

        def do_GET(self):
            if self.path.startswith(on) or self.path == "/login":
                return self._odd() if self.path.startswith(on) else self._reply(200, {"p1": {}})  # (a login "page")
            if self.path == "/queue":
                return self._reply(200, {"queue_running": [], "queue_pending": []})
            return self._reply(200, {"p1": {"status": {"status_str": "success"}, "outputs": {}}})

    return Odd


@pytest.mark.parametrize("kind", ["page", "502", "302", "307", "empty"])
@pytest.mark.parametrize("on", ["/upload/image", "/prompt", "/history"])
def test_odd_answers_are_said_plainly_never_raw_html_nor_a_false_restart(tmp_path, capsys, kind, on, no_wait):
    from tests._http_stub import start

    faces, speech = tmp_path / "faces", tmp_path / "speech"
    faces.mkdir(), speech.mkdir()
    (faces / "anna.png").write_bytes(b"img")
    (speech / "hello.wav").write_bytes(b"aud")
    url, stop = start(_odd(kind, on))
    try:
        code = _queue(url, (faces, speech), "--wait", "--timeout", "5")
    finally:
        stop()
    said = "".join(capsys.readouterr())
    assert code == 2, said  # an error naming the request, not a job that "failed" or was "lost"
    assert f"{url}{on}" in said
    assert "<" not in said.split("error:", 1)[1].split("\n")[0], said  # no markup shown
    assert "restarted" not in said and "neither queued" not in said
    if kind in ("page", "502"):
        assert "502 Bad Gateway" in said and "HTML page" in said
    if kind in ("302", "307"):
        assert "redirect" in said and "https://comfy.example" in said and "--server" in said
    if kind == "empty":
        assert "empty" in said


# ------------------------------------------------------------------------------- 5. interrupted, then --resume
def _keeping_ids(state: dict):
    """A stand-in ComfyUI that, as ComfyUI does (server.py post_prompt), keeps the prompt_id the client sends."""
    base = _comfy_handler(state)

    class Keeping(base):
        def do_POST(self):
            if self.path != "/prompt":
                return super().do_POST()
            sent = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            pid = str(sent.get("prompt_id") or f"p{len(state['prompts']) + 1}")
            state["prompts"].append(pid)
            return self._reply(200, {"prompt_id": pid, "number": len(state["prompts"]), "node_errors": {}})

    return Keeping


@pytest.mark.parametrize("several", [False, True])
def test_ctrl_c_while_the_server_answers_a_prompt_then_resume_queues_it_once(servers, media, tmp_path, monkeypatch,
                                                                              no_wait, capsys, several):
    """Ctrl-C after the server accepted a prompt but before its answer was read: the prompt runs, and --resume used
    to queue it again (two renders of one job). Its id is chosen and kept before it is sent, so --resume finds it."""
    from echomimic_lib.jobs import queue_client as qc

    (a_url, a_state, _), (b_url, b_state, _) = servers(handler=_keeping_ids), servers(handler=_keeping_ids)
    real = qc._request

    def interrupted(url, data=None, *a, **k):
        reply = real(url, data, *a, **k)
        if data is not None and url.endswith("/prompt"):  # (the POST; GET /prompt: the queue's depth)
            raise KeyboardInterrupt  # (the answer came, but the run stopped before it was read)
        return reply

    extra = ["--server", b_url, "--results", str(tmp_path / "r")] if several else []
    monkeypatch.setattr(qc, "_request", interrupted)
    capsys.readouterr()
    assert _queue(a_url, media, *extra) == 130
    err = capsys.readouterr().err
    assert "Every queued prompt had finished" not in err  # (before: said so, with the prompt running on A)
    assert f"anna.png x hello.wav was being sent to {a_url}" in err and "may be queued there" in err, err
    assert "--resume" in err
    monkeypatch.setattr(qc, "_request", real)
    assert _queue(a_url, media, *extra, "--resume") == 0
    sent = a_state["prompts"] + b_state["prompts"]
    assert len(sent) == 2 and len(set(sent)) == 2, sent  # one prompt a job (before: anna's twice)


@pytest.mark.parametrize("several", [False, True])
def test_a_prompt_the_server_refuses_leaves_the_jobs_earlier_record_as_it_was(servers, media, tmp_path, no_wait,
                                                                               capsys, several):
    """The id kept before sending is withdrawn when the server refuses the prompt (HTTP 400: nothing was queued): the
    job's earlier, finished record stays, and --resume lists its files instead of rendering it again."""
    url, state, _ = servers()
    other_url, other, _ = servers()
    extra = ["--server", other_url, "--results", str(tmp_path / "r")] if several else ["--wait"]
    assert _queue(url, media, *extra) == 0
    path = media[0] / ".echomimic_queue.json"
    before = _saved(path)["servers"]
    state["answers"] = [(400, {"error": {"message": "Prompt outputs failed validation"}, "node_errors": {}})] * 2
    other["answers"] = list(state["answers"])
    assert _queue(url, media, *extra, "--seed", "7") != 0
    assert _saved(path)["servers"] == before  # (before: the refused prompts' ids in place of the finished ones)
    capsys.readouterr()
    assert _queue(url, media, *extra, "--resume") == 0
    assert state["prompts"] + other["prompts"] == ["p1", "p2"]  # nothing rendered again
