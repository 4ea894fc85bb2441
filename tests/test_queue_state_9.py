"""``echomimic queue``, round 9: with several servers, a prompt every server refused (the connection, never reaching
any) is said as NOT queued and its "sending" record goes back to what it was, as with one server; ``--wait`` says how
far the queue is, in a bounded number of stderr lines."""
from __future__ import annotations

import pytest

from tests.test_batch_hunt_5 import WORKFLOW, _comfy_handler, _queue, comfy, media  # noqa: F401  (fixtures)
from tests.test_queue_state_5 import _records, _saved, no_wait, servers  # noqa: F401  (fixtures)


def _refused_at_post(monkeypatch, stops: dict, which=None):
    """Each server named in ``stops`` (url -> stop) goes down just as a prompt is sent to it (``which``: only these)."""
    from echomimic_lib.jobs import queue_client

    real = queue_client.post_prompt

    def post(server, *args, **kw):
        if server in stops and (which is None or server in which):
            stops[server]()
        return real(server, *args, **kw)

    monkeypatch.setattr(queue_client, "post_prompt", post)


# ------------------------------------------------------------------------------- 1. every server refused: not queued
def test_every_server_refusing_the_prompt_says_not_queued_and_keeps_no_sending_record(servers, media, tmp_path,
                                                                                     monkeypatch, capsys, no_wait):
    a_url, a_state, stop_a = servers()
    b_url, b_state, stop_b = servers()
    _refused_at_post(monkeypatch, {a_url: stop_a, b_url: stop_b})
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r")) == 1
    out = capsys.readouterr().out
    assert a_state["prompts"] == [] and b_state["prompts"] == []
    recs = _records(tmp_path / "r")
    assert [r["status"] for r in recs] == ["error", "error"], recs
    first = recs[0]["error"]
    assert "NOT queued" in first and "running the same command again is safe" in first, first
    assert "may be queued" not in out, out
    saved = _saved(media[0] / ".echomimic_queue.json")["servers"]
    assert not any(r.get("sending") for jobs in saved.values() for r in jobs.values()), saved
    assert saved == {}, "nothing was queued: no record (before: the first job kept as sending)"


def test_every_server_refusing_keeps_the_earlier_runs_record_of_the_job(servers, media, tmp_path, monkeypatch, capsys,
                                                                       no_wait):
    """--resume --retry-failed after a failed prompt: the new prompt is refused everywhere; the job's record is its
    failed one again (its attempts count kept), never a "sending" one."""
    a_url, a_state, stop_a = servers({"p1": "error"})
    b_url, b_state, stop_b = servers()
    args = ("--server", b_url, "--results", str(tmp_path / "r"))
    assert _queue(a_url, media, *args) == 1
    path = media[0] / ".echomimic_queue.json"
    before = _saved(path)["servers"]
    failed = [(url, p) for url, jobs in before.items() for p, r in jobs.items() if r.get("failed")]
    assert len(failed) == 1
    _refused_at_post(monkeypatch, {a_url: stop_a, b_url: stop_b})
    capsys.readouterr()
    assert _queue(a_url, media, *args, "--resume", "--retry-failed") == 1
    after = _saved(path)["servers"]
    url, prefix = failed[0]
    assert after[url][prefix] == before[url][prefix], after
    assert not any(r.get("sending") for jobs in after.values() for r in jobs.values()), after


def test_a_prompt_that_may_have_arrived_is_still_said_so(servers, media, tmp_path, monkeypatch, capsys, no_wait):
    """A's POST times out (the prompt may be queued there), B refuses the connection: A's record stays (sending), and
    the error says it may be queued on A."""
    from echomimic_lib.jobs import queue_client

    a_url, a_state, stop_a = servers()
    b_url, b_state, stop_b = servers()
    real = queue_client.post_prompt

    def post(server, *args, **kw):
        if server == a_url:
            err = queue_client.QueueError(f"{a_url}/prompt: no answer within 60 s; is ComfyUI busy or hung?")
            err.no_answer = True
            stop_a()
            raise err
        stop_b()
        return real(server, *args, **kw)

    monkeypatch.setattr(queue_client, "post_prompt", post)
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r")) == 1
    first = _records(tmp_path / "r")[0]["error"]
    assert "may be queued" in first and a_url in first and "NOT queued" not in first.split("no ComfyUI")[-1][-300:], first
    saved = _saved(media[0] / ".echomimic_queue.json")["servers"]
    assert [r.get("sending") for r in saved[a_url].values()] == [True], saved
    assert b_url not in saved, saved


# ------------------------------------------------------------------------------- 2. --wait says how far it is
def _progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("queue: ")]


@pytest.fixture
def many(tmp_path):
    """25 portraits x 20 audios: a 500-job queue."""
    faces, speech = tmp_path / "many_faces", tmp_path / "many_speech"
    faces.mkdir(), speech.mkdir()
    for i in range(25):
        (faces / f"f{i:02d}.png").write_bytes(b"img%d" % i)
    for i in range(20):
        (speech / f"a{i:02d}.wav").write_bytes(b"aud%d" % i)
    return faces, speech


def test_wait_on_a_500_job_queue_says_how_far_it_is_in_a_bounded_number_of_stderr_lines(servers, many, monkeypatch,
                                                                                         capsys, no_wait):
    """Before: silent on stderr until the end (hours for a real queue). The lines go to stderr (stdout: the results,
    as before, one line a job), about one per twentieth of the jobs (none between, however fast they finish)."""
    from echomimic_lib.jobs import queue_progress

    monkeypatch.setattr(queue_progress, "EVERY_S", 1e9)  # (the count rule alone: a run of any speed says the same)
    url, state, _ = servers({f"p{i}": "error" for i in (7, 300)})
    assert _queue(url, many, "--wait") == 1
    out, err = capsys.readouterr()
    assert len(state["prompts"]) == 500 and len(out.splitlines()) == 500, out[-500:]
    assert "queue: " not in out
    lines = _progress_lines(err)
    assert 10 <= len(lines) <= queue_progress.STEPS + 2, lines
    assert lines[0] == "queue: 0/500 done, 0 failed, 500 waiting", lines
    assert lines[-1] == "queue: 498/500 done, 2 failed, 0 waiting", lines
    over = [int(line.split("/")[0].split()[-1]) + int(line.split(", ")[1].split()[0]) for line in lines]
    assert over == sorted(set(over)), "each line says more jobs over than the one before"


def test_without_wait_no_progress_is_said_and_with_a_short_interval_each_job_over_is(servers, media, monkeypatch,
                                                                                     capsys, no_wait):
    from echomimic_lib.jobs import queue_progress

    url, _, _ = servers()
    assert _queue(url, media) == 0
    assert _progress_lines(capsys.readouterr().err) == []
    monkeypatch.setattr(queue_progress, "EVERY_S", 0.0)
    assert _queue(url, media, "--wait") == 0
    assert _progress_lines(capsys.readouterr().err) == ["queue: 0/2 done, 0 failed, 2 waiting",
                                                        "queue: 1/2 done, 0 failed, 1 waiting",
                                                        "queue: 2/2 done, 0 failed, 0 waiting"]


def test_several_servers_say_how_far_the_queue_is_and_where_the_jobs_wait(servers, media, tmp_path, capsys, no_wait):
    a_url, _, _ = servers()
    b_url, _, _ = servers()
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r")) == 0
    out, err = capsys.readouterr()
    lines = _progress_lines(err)
    assert lines == [f"queue: 0/2 done, 0 failed, 2 waiting (on {a_url}: 2)", "queue: 2/2 done, 0 failed, 0 waiting"], err
    assert "queue: " not in out


def test_progress_lines_stay_few_however_the_jobs_end_and_none_while_nothing_changes():
    from echomimic_lib.jobs.queue_progress import Progress

    now = [0.0]
    progress = Progress(500, every_s=30.0, clock=lambda: now[0])
    for over in range(501):  # one job over a second: a line each 25 jobs or 30 s
        progress.update(over, 0, 500 - over)
        now[0] += 1.0
    assert 20 <= progress.lines <= 21, progress.lines
    slow = Progress(10, every_s=30.0, clock=lambda: now[0])
    slow.update(0, 0, 10)
    for _ in range(100):  # hours with nothing over: no line
        now[0] += 600.0
        slow.update(0, 0, 10)
    assert slow.lines == 1
    slow.update(1, 0, 9)  # one over, 30 s and more since the last line: said
    assert slow.lines == 2
    nothing = Progress(3)
    nothing.update(3, 0, 0)  # nothing to wait for: the results say it all
    assert nothing.lines == 0
