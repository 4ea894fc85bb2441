"""``echomimic queue``, round 6: a job that finished (its files collected) is never rendered again on ``--resume``,
also when its server is gone (not given, unreachable, restarted); the server-independent ``plan`` mark sees an input
file replaced under the same name; a Ctrl-C during the very first upload is one line and exit code 130 under both
entry points (``echomimic queue`` and ``python -m echomimic_lib.jobs.queue_client``), and ``--resume`` then goes on."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.test_batch_hunt_5 import WORKFLOW, _comfy_handler, _queue, media  # noqa: F401  (fixtures)
from tests.test_queue_state_5 import OOM, _records, _saved, no_wait, servers  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- 1. finished jobs on a server now gone
def _finished_on_a(servers, media, tmp_path, capsys, how=None):
    """Run 1 over A and B: both jobs go to A (the shorter queue, named first) and finish there."""
    a_url, a_state, stop_a = servers(how)
    b_url, b_state, _ = servers()
    _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r"))
    assert a_state["prompts"] == ["p1", "p2"] and b_state["prompts"] == []
    capsys.readouterr()
    return a_url, a_state, stop_a, b_url, b_state


@pytest.mark.parametrize("retry", [False, True])
@pytest.mark.parametrize("gone", ["not given", "unreachable", "restarted"])
def test_resume_never_renders_again_a_job_that_finished_on_a_server_now_gone(servers, media, tmp_path, capsys,
                                                                             no_wait, gone, retry):
    a_url, a_state, stop_a, b_url, b_state = _finished_on_a(servers, media, tmp_path, capsys)
    before = _saved(media[0] / ".echomimic_queue.json")["servers"]
    c_url, c_state, _ = servers()
    extra = ["--retry-failed"] if retry else []
    if gone == "not given":
        code = _queue(b_url, media, "--server", c_url, "--results", str(tmp_path / "r"), "--resume", *extra)
    else:
        if gone == "unreachable":
            stop_a()
        else:  # its queue and history are empty (ComfyUI keeps them in memory)
            a_state["prompts"].clear()
        code = _queue(a_url, media, "--server", b_url, "--server", c_url, "--results", str(tmp_path / "r"), "--resume",
                      *extra)
    assert code == 0
    assert b_state["prompts"] == [] and c_state["prompts"] == []  # (before: both jobs rendered again on B / C)
    recs = _records(tmp_path / "r")
    assert [(r["status"], r["server"], r["prompt_id"], r["output"]) for r in recs] == [
        ("ok", a_url, "p1", "echomimic/p1.mp4"), ("ok", a_url, "p2", "echomimic/p2.mp4")], recs
    assert _saved(media[0] / ".echomimic_queue.json")["servers"] == before  # the records stay as they were


@pytest.mark.parametrize("retry", [False, True])
def test_resume_on_another_single_server_lists_a_finished_job_and_renders_nothing(servers, media, capsys, no_wait,
                                                                                 retry):
    a_url, a_state, _ = servers()
    b_url, b_state, _ = servers()
    assert _queue(a_url, media, "--wait") == 0
    capsys.readouterr()
    assert _queue(b_url, media, "--resume", *(["--retry-failed"] if retry else [])) == 0
    out, err = capsys.readouterr()
    assert b_state["prompts"] == []  # (before: both queued again on B)
    assert "anna.png x hello.wav -> echomimic/anna__hello [p1] echomimic/p1.mp4" in out
    assert "bob.png x hello.wav -> echomimic/bob__hello [p2] echomimic/p2.mp4" in out
    assert err.count(f"finished on {a_url}") == 2, err  # where its files are, said
    assert _saved(media[0] / ".echomimic_queue.json")["servers"][a_url]["echomimic/anna__hello"]["files"]


def test_a_finished_job_that_changed_is_rendered_anew_and_without_resume_every_job_is(servers, media, capsys, no_wait):
    """Finished means "same job, files collected": another seed is another job (queued), and a rerun without --resume
    renders every job again (the way to render a finished job again, e.g. after its files were deleted)."""
    a_url, _, _ = servers()
    b_url, b_state, _ = servers()
    assert _queue(a_url, media, "--wait") == 0
    assert _queue(b_url, media, "--resume", "--seed", "7") == 0
    assert b_state["prompts"] == ["p1", "p2"]
    c_url, c_state, _ = servers()
    assert _queue(c_url, media, "--wait") == 0
    assert c_state["prompts"] == ["p1", "p2"]


# ------------------------------------------------------------------------------- 2. an input replaced under its name
def _replace(path: Path, data: bytes, same_size: bool = False) -> None:
    old = path.stat()
    if same_size:
        data = data[:old.st_size].ljust(old.st_size, b"!")
    path.write_bytes(data)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000_000_000))  # (a later mtime, whatever the clock's tick)


@pytest.mark.parametrize("same_size", [False, True])
def test_resume_queues_a_job_whose_input_was_replaced_while_its_failed_prompts_server_is_gone(servers, media, tmp_path,
                                                                                              capsys, no_wait,
                                                                                              same_size):
    a_url, _, _ = servers({"p1": "error", "p2": "error"})
    b_url, b_state, _ = servers()
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r")) == 1
    _replace(media[0] / "anna.png", b"another picture of anna", same_size)
    c_url, c_state, _ = servers()
    capsys.readouterr()
    assert _queue(b_url, media, "--server", c_url, "--results", str(tmp_path / "r"), "--resume") == 1  # bob: failed
    assert len(b_state["prompts"] + c_state["prompts"]) == 1  # anna's changed job (before: reported failed, not queued)
    recs = {r["name"]: r for r in _records(tmp_path / "r")}
    assert recs["echomimic__anna__hello"]["status"] == "ok"
    assert recs["echomimic__bob__hello"]["status"] == "error" and OOM in recs["echomimic__bob__hello"]["error"]


def test_resume_on_another_single_server_renders_a_finished_job_whose_input_was_replaced(servers, media, capsys,
                                                                                        no_wait):
    a_url, _, _ = servers()
    b_url, b_state, _ = servers()
    assert _queue(a_url, media, "--wait") == 0
    _replace(media[1] / "hello.wav", b"other speech")  # every job's audio
    capsys.readouterr()
    assert _queue(b_url, media, "--resume") == 0
    assert b_state["prompts"] == ["p1", "p2"]  # both changed: rendered with the new audio


def test_a_record_kept_before_the_content_mark_is_still_the_same_job(servers, media, tmp_path, capsys, no_wait):
    """A state file written before the plan mark held the inputs' size and time: its jobs are taken as the same (as a
    record with no plan at all), not as all changed."""
    a_url, _, _ = servers({"p1": "error", "p2": "error"})
    b_url, b_state, _ = servers()
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r")) == 1
    path = media[0] / ".echomimic_queue.json"
    data = _saved(path)
    for rec in data["servers"][a_url].values():
        rec["plan"] = rec["plan"].split(".")[0]  # (the prompt part only, as written before)
    path.write_text(json.dumps(data), encoding="utf-8")
    c_url, c_state, _ = servers()
    assert _queue(b_url, media, "--server", c_url, "--results", str(tmp_path / "r"), "--resume") == 1
    assert b_state["prompts"] + c_state["prompts"] == []  # both reported failed, as before


def test_the_plan_mark_follows_the_inputs_size_and_time_not_their_folder(tmp_path):
    from echomimic_lib.jobs.queue_plan import load_workflow, plan_jobs
    from echomimic_lib.jobs.queue_state import plan_mark, same_plan

    template = load_workflow(WORKFLOW)
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        for name in ("anna.png", "hello.wav"):
            (tmp_path / folder / name).write_bytes(b"x" * 10)
            os.utime(tmp_path / folder / name, ns=(10**18, 10**18))

    def mark(folder):
        job = plan_jobs(tmp_path / folder, tmp_path / folder)[0]
        return plan_mark(template, job)

    assert mark("one") == mark("two")  # the same files elsewhere: the same job
    os.utime(tmp_path / "two" / "hello.wav", ns=(10**18, 10**18 + 1))
    assert mark("one") != mark("two") and not same_plan({"plan": mark("one")}, mark("two"))
    assert same_plan({}, mark("two")) and same_plan({"plan": mark("one").split(".")[0]}, mark("two"))


# ------------------------------------------------------------------------------- 3. Ctrl-C during the first upload
def _stalled_upload(state: dict, uploading: threading.Event, release: threading.Event):
    """A stand-in ComfyUI whose first upload is held (``uploading`` set) until ``release``."""
    base = _comfy_handler(state)

    class Stalled(base):
        def do_POST(self):
            if self.path == "/upload/image" and not uploading.is_set():
                self.rfile.read(int(self.headers["Content-Length"]))
                uploading.set()
                release.wait(60)  # (then the connection is closed unanswered: the client is gone)
                self.close_connection = True
                return None
            return super().do_POST()

    return Stalled


@pytest.mark.parametrize("entry", [["echomimic_lib.cli", "queue"], ["echomimic_lib.jobs.queue_client"]])
def test_ctrl_c_during_the_first_upload_is_one_line_and_130_under_both_entry_points(media, capsys, no_wait, entry):
    from tests._http_stub import start

    state, uploading, release = {"prompts": []}, threading.Event(), threading.Event()
    url, stop = start(_stalled_upload(state, uploading, release))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONFAULTHANDLER": "1"}  # (a hang is shown with every thread's stack: SIGABRT below)
    try:
        proc = subprocess.Popen([sys.executable, "-m", *entry, str(WORKFLOW), "--portraits", str(media[0]), "--audios",
                                 str(media[1]), "--server", url, "--wait"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert uploading.wait(60), proc.communicate(timeout=60)
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # (once on a CI machine: where it hung, to be read in the report)
                proc.send_signal(signal.SIGABRT)
                pytest.fail("no exit 60 s after Ctrl-C; the process's threads:\n" + proc.communicate(timeout=30)[1])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        release.set()
        assert proc.returncode == 130, (proc.returncode, err)  # (before, python -m: a traceback, killed by SIGINT)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "interrupted" in err.lower() and out == ""
        saved = _saved(media[0] / ".echomimic_queue.json")
        assert saved["servers"] == {} and saved["runs"] == {}  # nothing recorded, the run's name gone
        assert _queue(url, media, "--resume") == 0  # goes on: each job queued once
        assert state["prompts"] == ["p1", "p2"]
    finally:
        release.set()
        stop()
