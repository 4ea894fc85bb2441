"""``echomimic queue``, round 9: with several servers, a prompt every server refused (the connection, never reaching
any) is said as NOT queued and its "sending" record goes back to what it was, as with one server; ``--wait`` says how
far the queue is, in a bounded number of stderr lines."""
from __future__ import annotations

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
