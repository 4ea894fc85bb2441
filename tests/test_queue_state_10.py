"""``echomimic queue``, round 10: ``--wait`` on one long job says now and then that it is still waiting (which job, how
long, where it is on the server); ``-q/--quiet`` silences the progress lines; a job never sent (no server answered
before it) is said as not queued, with --resume to queue it."""
from __future__ import annotations

import pytest

from tests.test_batch_hunt_5 import WORKFLOW, _comfy_handler, _queue, comfy, media  # noqa: F401  (fixtures)
from tests.test_queue_state_5 import _records, _saved, no_wait, servers  # noqa: F401  (fixtures)


def _progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("queue: ")]


def _pending_for(monkeypatch, state: dict, pid: str, polls: int) -> None:
    """``pid`` stays running on the server for ``polls`` /history questions, then finishes."""
    from echomimic_lib.jobs import queue_client

    real, asked = queue_client._request, [0]
    state["how"][pid] = "pending"

    def request(url, *args, **kw):
        if url.endswith(f"/history/{pid}"):
            asked[0] += 1
            if asked[0] > polls:
                state["how"][pid] = "ok"
        return real(url, *args, **kw)

    monkeypatch.setattr(queue_client, "_request", request)


# ------------------------------------------------------------------------------- 1. a long job: still waiting, said
def test_wait_on_one_long_job_says_now_and_then_which_job_is_waited_for_and_where(servers, media, monkeypatch, capsys,
                                                                                 no_wait):
    """Before: the lines came only when a job finished: a 20-minute render said nothing for 20 minutes."""
    from echomimic_lib.jobs import queue_progress

    monkeypatch.setattr(queue_progress, "EVERY_S", 0.0)
    url, state, _ = servers()
    _pending_for(monkeypatch, state, "p1", 4)
    assert _queue(url, media, "--wait") == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["anna.png x hello.wav -> echomimic/anna__hello [p1] echomimic/p1.mp4",
                                "bob.png x hello.wav -> echomimic/bob__hello [p2] echomimic/p2.mp4"], out
    still = [line for line in _progress_lines(err) if "still waiting" in line]
    assert still, err
    assert all("anna.png x hello.wav" in line and url in line and "so far" in line for line in still), still
    assert "running" in still[0], still


def test_the_still_waiting_line_comes_at_most_every_every_s():
    from echomimic_lib.jobs.queue_progress import Progress

    now = [0.0]
    progress = Progress(2, every_s=30.0, clock=lambda: now[0])
    progress.update(0, 0, 2)
    for _ in range(120):  # a 20-minute render polled every 10 s: a line each 30 s at most
        now[0] += 10.0
        progress.waiting("anna.png x hello.wav", "http://a:8188", 0.0, "running")
    assert 39 <= progress.lines - 1 <= 40, progress.lines
    quiet = Progress(2, every_s=0.0, clock=lambda: now[0], quiet=True)
    quiet.update(0, 0, 2)
    quiet.waiting("anna.png x hello.wav", "http://a:8188", 0.0, None)
    assert quiet.lines == 0


def test_several_servers_say_which_job_they_still_wait_for(servers, media, tmp_path, monkeypatch, capsys, no_wait):
    from echomimic_lib.jobs import queue_progress

    monkeypatch.setattr(queue_progress, "EVERY_S", 0.0)
    a_url, a_state, _ = servers()
    b_url, _, _ = servers()
    _pending_for(monkeypatch, a_state, "p1", 3)
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r")) == 0
    still = [line for line in _progress_lines(capsys.readouterr().err) if "still waiting" in line]
    assert still and all("anna.png x hello.wav" in line and a_url in line for line in still), still


# ------------------------------------------------------------------------------- 2. -q / --quiet
@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_quiet_silences_the_progress_lines_and_keeps_the_results(servers, media, monkeypatch, capsys, no_wait, flag):
    from echomimic_lib.jobs import queue_progress

    monkeypatch.setattr(queue_progress, "EVERY_S", 0.0)
    url, state, _ = servers({"p2": "error"})
    _pending_for(monkeypatch, state, "p1", 2)
    assert _queue(url, media, "--wait", flag) == 1
    out, err = capsys.readouterr()
    assert _progress_lines(err) == [], err
    assert "[p1] echomimic/p1.mp4" in out and "CUDA out of memory" in out, out


def test_quiet_over_several_servers_too(servers, media, tmp_path, capsys, no_wait):
    a_url, _, _ = servers()
    b_url, _, _ = servers()
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r"), "-q") == 0
    out, err = capsys.readouterr()
    assert _progress_lines(err) == [] and out.count(": ok on ") == 2, (out, err)


# ------------------------------------------------------------------------------- 3. never sent: not queued
def test_a_job_never_sent_is_said_not_queued_with_resume_to_queue_it(media, tmp_path, capsys):
    """Before: ``echomimic__anna__hello: error on None no ComfyUI server answers any more: ... This job's prompt was not
    sent.`` (a server None, nothing about how to queue it)."""
    assert _queue("http://127.0.0.1:9", media, "--server", "http://127.0.0.1:11", "--results", str(tmp_path / "r")) == 1
    out = capsys.readouterr().out
    assert "None" not in out, out
    lines = out.splitlines()
    assert len(lines) == 2 and all(": not queued: " in line and "--resume" in line for line in lines), out
    for rec in _records(tmp_path / "r"):
        assert rec["status"] == "error" and rec["queued"] is False and "server" not in rec, rec
        assert rec["error"].startswith("not queued: ") and "--resume" in rec["error"], rec


# ------------------------------------------------------------------------------- 4. a flaky network while waiting
def _flaky_history(monkeypatch, pid: str, failures: int | None, code: int = 502):
    """The first ``failures`` /history/<pid> questions (None: every one) fail as a proxy's ``code`` answer does."""
    from echomimic_lib.jobs import queue_client

    real, asked = queue_client._request, [0]

    def request(url, *args, **kw):
        if url.endswith(f"/history/{pid}"):
            asked[0] += 1
            if failures is None or asked[0] <= failures:
                err = queue_client.QueueError(f"{url}: HTTP {code}: Bad Gateway")
                err.code, err.retry_after = code, None
                raise err
        return real(url, *args, **kw)

    monkeypatch.setattr(queue_client, "_request", request)
    return asked


def test_one_failed_poll_while_waiting_is_asked_again_not_the_end_of_the_run(servers, media, monkeypatch, capsys,
                                                                             no_wait):
    """Before: one 502 of a proxy (or a reset, a timeout) while polling ended a run of hours with exit code 2, every
    prompt left on the server."""
    url, state, _ = servers()
    _flaky_history(monkeypatch, "p1", 2)
    assert _queue(url, media, "--wait") == 0
    out, err = capsys.readouterr()
    assert "[p1] echomimic/p1.mp4" in out and "[p2] echomimic/p2.mp4" in out, (out, err)
    assert state["prompts"] == ["p1", "p2"]
    assert "asked again" in err and "HTTP 502" in err, err


def test_a_poll_that_keeps_failing_still_stops_the_run_after_a_few_tries(servers, media, monkeypatch, capsys, no_wait):
    from echomimic_lib.jobs import queue_client

    url, state, _ = servers()
    asked = _flaky_history(monkeypatch, "p1", None)
    assert _queue(url, media, "--wait") == 2
    err = capsys.readouterr().err
    assert asked[0] == queue_client.POLL_TRIES, asked
    assert "HTTP 502" in err and "--resume" in err, err


def test_a_failed_poll_of_one_of_several_servers_is_asked_again_before_its_jobs_move(servers, media, tmp_path,
                                                                                    monkeypatch, capsys, no_wait):
    """Before: one failed /history answer dropped the server, and its jobs were rendered again on the others while
    it still rendered them (twice the GPU time)."""
    a_url, a_state, _ = servers()
    b_url, b_state, _ = servers()
    _flaky_history(monkeypatch, "p1", 1)
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r")) == 0
    assert a_state["prompts"] == ["p1", "p2"] and b_state["prompts"] == [], (a_state, b_state)
    assert [r["server"] for r in _records(tmp_path / "r")] == [a_url, a_url]


def test_a_server_that_refuses_the_connection_while_waiting_is_not_asked_again(servers, media, monkeypatch, capsys,
                                                                               no_wait):
    """Down (nothing listens), not flaky: the run stops at once as before, naming --resume."""
    url, state, stop = servers({"p1": "pending"})
    from echomimic_lib.jobs import queue_client

    real = queue_client._request

    def request(u, *args, **kw):
        if u.endswith("/history/p1"):
            stop()
        return real(u, *args, **kw)

    monkeypatch.setattr(queue_client, "_request", request)
    assert _queue(url, media, "--wait") == 2
    err = capsys.readouterr().err
    assert "asked again" not in err and "--resume" in err, err


# ------------------------------------------------------------------------------- 5. every server gone while waiting
def test_a_job_whose_server_went_away_with_no_other_left_is_not_said_never_queued(servers, media, tmp_path, monkeypatch,
                                                                                  capsys, no_wait):
    """Its prompt went to A, which stopped answering, and B is gone too: the record names A and the prompt (it may still
    run there) and --resume, never "not queued" (nor, before, "error on None ... This job's prompt was not sent")."""
    from echomimic_lib.jobs import queue_client

    a_url, a_state, stop_a = servers({"p1": "pending", "p2": "pending"})
    b_url, b_state, stop_b = servers({"p1": "pending", "p2": "pending"})
    real = queue_client._request

    def request(u, *args, **kw):
        if "/history/" in u:
            stop_a(), stop_b()
        return real(u, *args, **kw)

    monkeypatch.setattr(queue_client, "_request", request)
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r")) == 1
    out = capsys.readouterr().out
    assert "None" not in out and "not queued" not in out, out
    recs = _records(tmp_path / "r")
    assert len(recs) == 2, recs
    for rec in recs:
        assert rec.get("queued") is not False and rec["server"] in (a_url, b_url) and rec["prompt_id"] == "p1", rec
        assert "may still" in rec["error"] and "--resume" in rec["error"], rec


# ------------------------------------------------------------------------------- 6. a flaky upload
@pytest.mark.parametrize("code", [502, 503])
def test_an_upload_answered_by_a_passing_error_is_sent_again(servers, media, monkeypatch, capsys, no_wait, code):
    """Before: one 502 of a proxy (or a 503, busy) on an upload ended the run before the rest were queued. Sending a
    file again is harmless (ComfyUI keeps an identical file under its name)."""
    from echomimic_lib.jobs import queue_client

    url, state, _ = servers()
    real, failed = queue_client._request, []

    def request(u, *args, **kw):
        if u.endswith("/upload/image") and not failed:
            failed.append(u)
            err = queue_client.QueueError(f"{u}: HTTP {code}: Bad Gateway")
            err.code, err.retry_after = code, None
            raise err
        return real(u, *args, **kw)

    monkeypatch.setattr(queue_client, "_request", request)
    assert _queue(url, media, "--wait") == 0
    out, err = capsys.readouterr()
    assert state["prompts"] == ["p1", "p2"] and "[p2] echomimic/p2.mp4" in out, (out, err)
    assert f"HTTP {code}" in err and "sent again" in err, err


def test_which_failures_are_asked_again():
    from echomimic_lib.jobs import queue_client as qc

    def err(**attrs):
        e = qc.QueueError("x")
        for k, v in attrs.items():
            setattr(e, k, v)
        return e

    assert [qc.passing(err(code=c)) for c in (429, 500, 502, 503, 504, 400, 404)] == [True, False, True, True, True,
                                                                                     False, False]
    assert qc.passing(err(no_answer=True)) and qc.passing(err(broken=True))
    assert not qc.passing(err(no_answer=True, never_sent=True)), "refused: the server is down"
    assert not qc.passing(qc._too_slow("http://s/history/p1", 1.0)), "trickling: hung, or not ComfyUI"
    assert not qc.passing(err()), "an answer that is not ComfyUI's"


def test_resume_asks_again_when_its_first_question_about_a_prompt_fails_in_passing(servers, media, monkeypatch, capsys,
                                                                                   no_wait):
    """Before: one 502 while --resume asked whether the server still has a prompt ended the resume (exit code 2)."""
    url, state, _ = servers({"p1": "pending", "p2": "pending"})
    assert _queue(url, media) == 0  # queued, not waited for
    state["how"] = {}
    capsys.readouterr()
    _flaky_history(monkeypatch, "p1", 1)
    assert _queue(url, media, "--resume") == 0
    out, err = capsys.readouterr()
    assert state["prompts"] == ["p1", "p2"], "nothing queued again"
    assert "[p1] echomimic/p1.mp4" in out and "[p2] echomimic/p2.mp4" in out, (out, err)


# ------------------------------------------------------------------------------- 7. Ctrl-C over several servers
def test_ctrl_c_over_several_servers_lists_the_jobs_that_finished_as_one_server_does(servers, media, tmp_path,
                                                                                   monkeypatch, capsys):
    """Before: stdout said nothing of the jobs finished before the Ctrl-C (one server's run lists them)."""
    from echomimic_lib.jobs.batch import comfy_servers

    a_url, _, _ = servers({"p2": "pending"})
    b_url, _, _ = servers()
    naps = []

    def sleep(s):
        naps.append(s)
        if len(naps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(comfy_servers.time, "sleep", sleep)
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r")) == 130
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"echomimic__anna__hello: ok on {a_url} echomimic/p1.mp4"], (out, err)
    assert "Interrupted" in err and "p2" in err, err
