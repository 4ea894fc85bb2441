"""``echomimic queue``, round 12: while a long render runs, whether the server still holds the prompt (a restart loses
it) is asked with GET /prompt's ``queue_remaining`` (a few bytes) every ``QUEUE_CHECK_S``; the whole GET /queue (every
queued workflow in full) only when that count changes or every ``QUEUE_FULL_S``. A restart (the prompt gone) is still
found, and a /queue too large to read is said once, never passed over quietly."""
from __future__ import annotations

import time

import pytest

from echomimic_lib.jobs import queue_client as qc
from tests._http_stub import JsonHandler, start


@pytest.fixture
def clock(monkeypatch):
    """time.sleep advances a clock that time.monotonic reads (a wait of minutes takes none)."""
    real, ahead = time.monotonic, [0.0]

    def sleep(s):
        ahead[0] += s

    monkeypatch.setattr(time, "monotonic", lambda: real() + ahead[0])
    monkeypatch.setattr(time, "sleep", sleep)
    return ahead


def _server(state):
    """A stand-in ComfyUI rendering ``p1`` until ``state["done_after"]`` /history questions; ``state["restart_at"]``:
    the /history question from which it has lost everything (a restart); ``state["gets"]``: every path asked."""
    class Handler(JsonHandler):
        def do_GET(self):
            state["gets"].append(self.path)
            asked = sum(p.startswith("/history/") for p in state["gets"])
            gone = state.get("restart_at") is not None and asked >= state["restart_at"]
            running = [] if gone else [[0, "p1", {}, {}, []]]
            if self.path == "/prompt":
                return self._reply(200, {"exec_info": {"queue_remaining": len(running)}})
            if self.path == "/queue":
                if state.get("huge"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(qc.MAX_REPLY_BYTES + 1))
                    self.end_headers()
                    return None
                return self._reply(200, {"queue_running": running, "queue_pending": []})
            if self.path == "/history/p1":
                if not gone and asked >= state["done_after"]:
                    return self._reply(200, {"p1": {"status": {"status_str": "success"}, "outputs": {}}})
                return self._reply(200, {})
            return self._reply(404, {})
    url, stop = start(Handler)
    return url, stop


@pytest.fixture
def comfy():
    made = []

    def make(**how):
        state = {"gets": [], "done_after": 10**9, **how}
        url, stop = _server(state)
        made.append(stop)
        return url, state

    yield make
    for stop in made:
        stop()


def test_a_long_render_asks_the_whole_queue_rarely(comfy, clock):
    url, state = comfy(done_after=300)  # ~10 minutes of 2 s polls
    assert qc.wait_for(url, "p1", timeout=3600, poll=2.0)["status"]["status_str"] == "success"
    full = state["gets"].count("/queue")
    # before: every QUEUE_CHECK_S (10 s) -> ~60 whole /queue answers in 10 minutes; now at most one each QUEUE_FULL_S
    assert full < 600 / qc.QUEUE_CHECK_S / 4, full
    assert state["gets"].count("/prompt") >= 600 / qc.QUEUE_CHECK_S - 2  # (the cheap count is what is asked)


def test_a_restart_during_a_long_render_is_still_found(comfy, clock):
    url, state = comfy(restart_at=100)
    with pytest.raises(qc.PromptFailed, match="restarted"):
        qc.wait_for(url, "p1", timeout=3600, poll=2.0)
    asked = sum(p.startswith("/history/") for p in state["gets"])
    assert asked <= 100 + qc.QUEUE_CHECK_S / 2 + 2  # found at the next cheap check, not at the timeout


def test_a_queue_too_large_to_read_is_said_not_passed_over(comfy, clock, capsys):
    url, state = comfy(huge=True, restart_at=100)
    with pytest.raises(qc.PromptFailed, match="restarted"):  # (the count still finds the restart)
        qc.wait_for(url, "p1", timeout=3600, poll=2.0)
    err = capsys.readouterr().err
    assert err.count("/queue") == 1 and "larger than 64 MiB" in err and "GET /prompt" in err, err


# ------------------------------------------------------------------------------------- several servers: the same look
from tests.test_batch_hunt_5 import _comfy_handler, _queue, media  # noqa: E402,F401  (fixtures)
from tests.test_queue_state_5 import _records, servers  # noqa: E402,F401  (fixtures)


def _slow(renders: int, restart_at: int | None = None):
    """The stand-in where each prompt renders for ``renders`` /history questions (queued until then); from the
    ``restart_at``-th /history question on, the prompts sent so far are gone (a restart)."""

    def handler(state):
        base = _comfy_handler(state)
        state["gets"], state["asked"], state["gone"] = [], {}, set()

        class Slow(base):
            def do_GET(self):
                state["gets"].append(self.path)
                histories = sum(p.startswith("/history/") for p in state["gets"])
                if restart_at is not None and histories == restart_at:
                    state["gone"].update(state["prompts"])
                live = [p for p in state["prompts"] if p not in state["gone"] and state["asked"].get(p, 0) < renders]
                if self.path in ("/queue", "/prompt"):
                    items = [[n, pid, {}, {}, []] for n, pid in enumerate(live)]
                    if self.path == "/prompt":
                        return self._reply(200, {"exec_info": {"queue_remaining": len(items)}})
                    return self._reply(200, {"queue_running": items[:1], "queue_pending": items[1:]})
                pid = self.path.rsplit("/", 1)[-1]
                state["asked"][pid] = state["asked"].get(pid, 0) + 1
                if pid in state["gone"] or pid in live:
                    return self._reply(200, {})
                return super().do_GET()

        return Slow

    return handler


def test_several_servers_ask_the_whole_queue_rarely(servers, media, tmp_path, clock):
    a_url, a, _ = servers(handler=_slow(300))
    b_url, b, _ = servers(handler=_slow(300))
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r")) == 0
    assert all(r["status"] == "ok" for r in _records(tmp_path / "r"))
    for state in (a, b):  # ~10 minutes each: before, a whole /queue every QUEUE_CHECK_S (~60)
        assert state["gets"].count("/queue") < 600 / qc.QUEUE_CHECK_S / 4, state["gets"].count("/queue")


def test_several_servers_still_find_a_restart(servers, media, tmp_path, clock, caplog):
    a_url, a, _ = servers(handler=_slow(300, restart_at=100))
    b_url, b, _ = servers(handler=_slow(300, restart_at=100))
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r")) == 0
    assert "restarted" in caplog.text and len(a["prompts"]) + len(b["prompts"]) > 2  # found, and queued again


def test_resume_asks_the_whole_queue_once_for_all_its_jobs(servers, media, tmp_path, clock):
    url, state, _ = servers(handler=_slow(3))
    assert _queue(url, media) == 0 and state["prompts"] == ["p1", "p2"]  # queued, not waited for
    state["gets"].clear()
    assert _queue(url, media, "--resume") == 0 and state["prompts"] == ["p1", "p2"]  # both still there: waited for
    # before: a whole /queue for each job found (p1, p2) and again as each wait began (4); now one look serves all
    assert state["gets"].count("/queue") <= 2, state["gets"]


def test_resume_still_finds_prompts_a_restart_lost(servers, media, tmp_path, clock):
    url, state, _ = servers(handler=_slow(3))
    assert _queue(url, media) == 0
    state["gone"].update(state["prompts"])
    assert _queue(url, media, "--resume") == 0 and state["prompts"] == ["p1", "p2", "p3", "p4"]  # queued again


def test_a_deadline_is_a_context_manager_as_its_docstring_says():
    from echomimic_lib.jobs.queue_deadline import Deadline

    with Deadline(30) as deadline:  # (before: __enter__ / __exit__ were dead code inside _stop_signals_held)
        deadline.start()
        timer = deadline._timer
        assert timer.is_alive()
    assert not timer.is_alive() and not deadline.expired


# ------------------------------------------------------------------------------- a server behind a login
def test_a_server_asking_for_a_login_says_so_and_the_fix(comfy):
    class Login(JsonHandler):
        def do_GET(self):
            body = b"<html><title>401 Authorization Required</title></html>"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="comfy"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    url, stop = start(Login)
    try:
        with pytest.raises(qc.QueueError) as info:
            qc._request(f"{url}/prompt")
    finally:
        stop()
    msg = str(info.value)
    assert "HTTP 401" in msg and "login" in msg and "--server" in msg and "ssh -L" in msg, msg


def test_a_password_in_server_is_refused_and_never_shown():
    with pytest.raises(qc.QueueError) as info:
        qc.check_server("http://bob:s3cret@127.0.0.1:8188")
    msg = str(info.value)
    assert "s3cret" not in msg and "user name" in msg and "ssh -L" in msg and "--server" in msg, msg


def test_one_failed_count_does_not_turn_the_cheap_look_off(comfy, clock, monkeypatch):
    url, state = comfy(done_after=300)
    real, failed = qc._request, []

    def flaky(u, *a, **k):  # (a proxy's 502 on the first GET /prompt)
        if u.endswith("/prompt") and not failed:
            failed.append(u)
            err = qc.QueueError(f"{u}: HTTP 502: Bad Gateway")
            err.code, err.retry_after = 502, None
            raise err
        return real(u, *a, **k)

    monkeypatch.setattr(qc, "_request", flaky)
    qc.wait_for(url, "p1", timeout=3600, poll=2.0)
    assert failed and state["gets"].count("/queue") < 600 / qc.QUEUE_CHECK_S / 4, state["gets"].count("/queue")


# ------------------------------------------------------------------------------- --resume after the workflow changed
def test_resume_with_a_changed_job_names_the_earlier_prompt_still_queued(servers, media, tmp_path, clock, capsys):
    url, state, _ = servers(handler=_slow(3))
    more: list = []
    assert _queue(url, media, *more, "--seed", "1") == 0
    earlier = list(state["prompts"])
    capsys.readouterr()
    assert _queue(url, media, *more, "--resume", "--seed", "2") == 0  # another seed: every job changed, queued again
    err = capsys.readouterr().err
    for pid in earlier:  # (it renders on: the old prompt's time is spent for nothing unless it is cancelled)
        assert f"its prompt {pid}" in err and "changed" in err and '"delete"' in err, err


def test_resume_with_a_changed_job_says_nothing_of_a_prompt_that_finished(servers, media, tmp_path, clock, capsys):
    url, state, _ = servers(handler=_slow(3))
    assert _queue(url, media, "--seed", "1", "--wait") == 0
    capsys.readouterr()
    assert _queue(url, media, "--resume", "--seed", "2") == 0 and len(state["prompts"]) == 4
    assert "renders on" not in capsys.readouterr().err


def test_several_servers_resume_with_a_changed_job_names_the_earlier_prompt(servers, media, tmp_path, clock, capsys):
    url, state, _ = servers(handler=_slow(10**9))  # (never done: the first run ends at its hour, the prompts queued)
    other, _, _ = servers(handler=_slow(10**9))
    more = ["--server", other, "--results", str(tmp_path / "r")]
    assert _queue(url, media, *more, "--seed", "1") == 1
    capsys.readouterr()
    _queue(url, media, *more, "--resume", "--seed", "2")
    err = capsys.readouterr().err
    assert err.count("renders on unless cancelled") == 2 and '"delete"' in err, err
