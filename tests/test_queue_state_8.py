"""``echomimic queue``, round 8: the state file records each job's outcome by appending one journal line (not a rewrite
of the whole file), reads a torn last line, the older format and a run killed mid-journal; a refused connection while
a prompt is sent is said as not queued (it never reached the server)."""
from __future__ import annotations

import json
import os
import sys

import pytest

from tests.test_batch_hunt_5 import WORKFLOW, _comfy_handler, _queue, comfy, media  # noqa: F401  (fixtures)
from tests.test_queue_state_5 import _saved, no_wait, servers  # noqa: F401  (fixtures)

URL = "http://127.0.0.1:8188"


def _rec(pid: str, **extra) -> dict:
    return {"prompt_id": pid, "fingerprint": "f" * 16, "attempts": 1, **extra}


def _book(path):
    from echomimic_lib.jobs.queue_state import QueueState

    book = QueueState(path)
    book.claim(["job/a", "job/b", "job/c"])
    return book


# ------------------------------------------------------------------------------- 1. a journal, appended
def test_recording_a_job_appends_one_line_and_never_rewrites_the_file(tmp_path):
    path = tmp_path / "state.json"
    book = _book(path)
    before = path.read_bytes()
    inode = path.stat().st_ino
    book.record(URL, "job/a", "f" * 16, "p1")
    book.record(URL, "job/b", "f" * 16, "p2", files=["out/b.mp4"])
    after = path.read_bytes()
    assert path.stat().st_ino == inode  # (before: a new file after each prompt)
    assert after.startswith(before), "the earlier bytes are kept as they were"
    lines = after[len(before):].decode().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["job"] == "job/a" and json.loads(lines[1])["rec"]["files"] == ["out/b.mp4"]
    from echomimic_lib.jobs.queue_state import read_state

    assert read_state(path)["servers"][URL]["job/b"]["files"] == ["out/b.mp4"]
    book.release()  # the end of the run: compacted, one JSON document again (what older versions read)
    assert _saved(path)["servers"][URL] == {"job/a": _rec("p1"), "job/b": _rec("p2", files=["out/b.mp4"])}


def test_the_last_record_of_a_job_wins_and_compaction_keeps_it(tmp_path, monkeypatch):
    from echomimic_lib.jobs import queue_journal
    from echomimic_lib.jobs.queue_state import QueueState, read_state

    monkeypatch.setattr(queue_journal, "SLACK", 5)
    path = tmp_path / "state.json"
    book = _book(path)
    for i in range(40):  # far past twice the live records: compacted on the way
        book.record(URL, "job/a", "f" * 16, f"a{i}", sending=i % 2 == 0)
        book.record("http://other:8188", "job/b", "f" * 16, f"b{i}")
    book.withdraw("job/b", "b39", (URL, _rec("b38")))
    text = path.read_text()
    assert len(text.splitlines()) < 40, "compacted when the journal grew"
    state = read_state(path)["servers"]
    assert state[URL] == {"job/a": _rec("a39"), "job/b": _rec("b38")} and "http://other:8188" not in state
    assert QueueState(path).find("job/a") == (URL, _rec("a39"))


def test_a_torn_last_line_is_ignored_with_a_note_and_every_earlier_line_is_kept(tmp_path, capsys):
    from echomimic_lib.jobs.queue_state import QueueState, read_state

    path = tmp_path / "state.json"
    book = _book(path)
    book.record(URL, "job/a", "f" * 16, "p1", files=["a.mp4"])
    book.record(URL, "job/b", "f" * 16, "p2")
    with open(path, "ab") as fh:  # killed while writing job/c's line
        fh.write(b'{"job": "job/c", "server": "http://127.0.0.1:8188", "rec": {"prompt_i')
    capsys.readouterr()
    again = QueueState(path)
    err = capsys.readouterr().err
    assert "cut short" in err and str(path) in err and "ignored" in err, err
    assert again.find("job/a")[1]["files"] == ["a.mp4"] and again.find("job/b")[1]["prompt_id"] == "p2"
    assert again.find("job/c") is None
    # the run that wrote it goes on (it holds the lock now): its next line is a line of its own, not glued to the torn one
    book.record(URL, "job/c", "f" * 16, "p3")
    assert read_state(path)["servers"][URL]["job/c"]["prompt_id"] == "p3"
    assert read_state(path)["servers"][URL]["job/a"]["files"] == ["a.mp4"]


def test_a_state_file_of_the_previous_format_is_read_and_compacted_with_its_records(tmp_path):
    from echomimic_lib.jobs.queue_state import QueueState

    path = tmp_path / "state.json"
    old = ('{\n "version": 2,\n "servers": {\n  "http://127.0.0.1:8188": {\n   "job/a": {"prompt_id": "p1", '
           '"fingerprint": "ffffffffffffffff", "attempts": 2, "files": ["a.mp4"]}\n  }\n },\n "runs": {}\n}')
    path.write_text(old)
    book = QueueState(path)
    assert book.find("job/a") == (URL, _rec("p1", attempts=2, files=["a.mp4"]))
    book.claim(["job/b"])
    book.record(URL, "job/b", "f" * 16, "p2")
    book.release()
    assert _saved(path)["servers"][URL] == {"job/a": _rec("p1", attempts=2, files=["a.mp4"]), "job/b": _rec("p2")}


def test_resume_after_a_run_killed_mid_journal_waits_for_its_prompts(servers, media, monkeypatch, capsys, no_wait):
    """A run killed (kill -9, a power cut) after queueing leaves its records in the journal, and maybe a torn line:
    --resume finds every prompt it queued and queues none again."""
    from echomimic_lib.jobs import queue_state

    url, state, _ = servers()
    path = media[0] / ".echomimic_queue.json"
    with monkeypatch.context() as m:  # killed: no release (no compaction at the end)
        m.setattr(queue_state.QueueState, "release", lambda self: None)
        assert _queue(url, media) == 0
    assert state["prompts"] == ["p1", "p2"]
    with pytest.raises(json.JSONDecodeError):  # the records are in the journal after the document
        json.loads(path.read_text())
    with open(path, "ab") as fh:
        fh.write(b'{"job": "echomimic/anna__hel')
    monkeypatch.setattr(queue_state, "alive", lambda *a: False)  # (the killed run's pid is this test's)
    capsys.readouterr()
    assert _queue(url, media, "--resume") == 0
    out, err = capsys.readouterr()
    assert state["prompts"] == ["p1", "p2"], "nothing queued again"
    assert "[p1] echomimic/p1.mp4" in out and "[p2] echomimic/p2.mp4" in out, out
    assert "cut short" in err, err
    saved = _saved(path)  # compacted at the end: one document, the torn line gone
    assert {r["prompt_id"] for r in saved["servers"][url].values()} == {"p1", "p2"} and saved["runs"] == {}


def test_a_second_live_run_on_the_same_jobs_is_still_refused(tmp_path):
    from echomimic_lib.jobs.queue_state import QueueState, StateInUse

    path = tmp_path / "state.json"
    first = _book(path)
    first.record(URL, "job/a", "f" * 16, "p1")
    with pytest.raises(StateInUse, match="another `echomimic queue` run"):
        QueueState(path).claim(["job/a"])
    first.release()
    QueueState(path).claim(["job/a"])


def test_two_runs_sharing_the_file_keep_each_others_journal_lines(tmp_path):
    from echomimic_lib.jobs.queue_state import QueueState, read_state

    path = tmp_path / "state.json"
    one, two = QueueState(path), QueueState(path)
    one.claim(["job/a"])
    two.claim(["job/b"])
    one.record(URL, "job/a", "f" * 16, "p1")
    two.record(URL, "job/b", "f" * 16, "p2")
    one.record(URL, "job/a", "f" * 16, "p1", files=["a.mp4"])
    assert one.find("job/b")[1]["prompt_id"] == "p2"  # (read from the lines the other run appended)
    one.release()
    two.record(URL, "job/b", "f" * 16, "p2", files=["b.mp4"])  # after the other's compaction: a new file
    two.release()
    assert read_state(path)["servers"][URL] == {"job/a": _rec("p1", files=["a.mp4"]), "job/b": _rec("p2", files=["b.mp4"])}
    assert read_state(path)["runs"] == {}


# ------------------------------------------------------------------------------- 2. a refused connection: not queued
@pytest.mark.parametrize("at", [1, 2])
def test_a_refused_connection_while_sending_a_prompt_says_it_was_not_queued(servers, media, monkeypatch, capsys, at):
    """The server goes down (nothing listens) before the first or the second prompt is sent: before, "it may be
    queued there" (check ComfyUI's queue panel); a refused connection never reached it."""
    from echomimic_lib.jobs import queue_client

    url, state, stop = servers()
    real, calls = queue_client.post_prompt, []

    def server_gone(*args, **kw):
        calls.append(1)
        if len(calls) == at:
            stop()
        return real(*args, **kw)

    monkeypatch.setattr(queue_client, "post_prompt", server_gone)
    assert _queue(url, media) == 2
    err = capsys.readouterr().err
    assert "may be queued" not in err, err
    assert "Connection refused" in err and "was NOT queued" in err and "running the same command again is safe" in err, err
    if at == 2:
        assert "1 of 2 job(s) were queued" in err and "not queued: bob.png x hello.wav" in err, err
    assert state["prompts"] == ["p1"][:at - 1]
    saved = _saved(media[0] / ".echomimic_queue.json")["servers"]  # nothing kept as sent for the job never sent
    assert [r["prompt_id"] for r in saved.get(url, {}).values()] == ["p1"][:at - 1], saved


# ------------------------------------------------------------------------------- 3. what a batch queuer runs into
def test_results_with_one_server_is_refused_before_any_upload(comfy, media, tmp_path, capsys):  # noqa: F811
    """``--results DIR`` with one --server: before, accepted and ignored (every job queued, no results.jsonl)."""
    url, state = comfy
    assert _queue(url, media, "--results", str(tmp_path / "r"), "--wait") == 2
    err = capsys.readouterr().err
    assert "--results" in err and "only with several --server" in err and "leave --results out" in err, err
    assert state["prompts"] == [] and not (tmp_path / "r").exists()


def test_one_audio_file_given_as_the_audios_folder_names_the_folder_to_give(comfy, media, capsys):  # noqa: F811
    """``--audios speech/hello.wav``: before, "audio folder not found" (it is there, as a file)."""
    from echomimic_lib.jobs.queue_client import main as queue_main

    url, state = comfy
    clip = media[1] / "hello.wav"
    assert queue_main([str(WORKFLOW), "--portraits", str(media[0]), "--audios", str(clip), "--server", url]) == 2
    err = capsys.readouterr().err
    assert f"--audios {clip} is a file, not a folder" in err and f"--audios {media[1]}" in err, err
    assert "not found" not in err and state["prompts"] == []


def test_the_journal_is_read_where_the_system_has_no_pread(tmp_path, monkeypatch):
    """(Windows has no os.pread: the lines another run appended are read by seek and read.)"""
    from echomimic_lib.jobs.queue_state import QueueState

    monkeypatch.delattr("os.pread")
    path = tmp_path / "state.json"
    one, two = QueueState(path), QueueState(path)
    one.claim(["job/a"])
    two.claim(["job/b"])
    two.record(URL, "job/b", "f" * 16, "p2")
    one.record(URL, "job/a", "f" * 16, "p1")
    assert one.find("job/b")[1]["prompt_id"] == "p2" and len(path.read_text().splitlines()) > 2


def test_a_state_file_in_a_folder_that_does_not_exist_is_refused_before_any_upload(comfy, media, tmp_path, capsys):  # noqa: F811
    """``--state runs/typo/state.json --resume``: before, a warning and every job queued again, unrecorded (a 2,000-job
    queue rendered twice for a typo)."""
    url, state = comfy
    assert _queue(url, media, "--wait") == 0
    gone = tmp_path / "typo" / "state.json"
    capsys.readouterr()
    assert _queue(url, media, "--state", str(gone), "--resume") == 2
    err = capsys.readouterr().err
    assert f"--state {gone}: its folder {gone.parent} does not exist" in err and "create the folder" in err, err
    assert state["prompts"] == ["p1", "p2"] and not gone.parent.exists()


def test_attempts_without_retry_failed_is_refused_naming_the_options_it_goes_with(comfy, media, capsys):  # noqa: F811
    """``--attempts 5`` alone: before, taken and unused (a failed prompt is never queued again by itself)."""
    url, state = comfy
    assert _queue(url, media, "--attempts", "5", "--wait") == 2
    err = capsys.readouterr().err
    assert "--attempts 5" in err and "--resume --retry-failed" in err, err
    assert state["prompts"] == []
    assert _queue(url, media, "--resume", "--retry-failed", "--attempts", "5") == 0 and len(state["prompts"]) == 2


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_runs_sharing_a_state_file_wait_for_a_short_lock_without_a_line_each_time(tmp_path, monkeypatch, capsys):
    """Two runs sharing a folder take the lock once per record: before, every time the other held it (a few ms) a
    "waiting for the lock" line was said, hundreds of them in a run; it is said only when the lock stays held."""
    import fcntl
    import threading

    from echomimic_lib.jobs import queue_lock

    lock = tmp_path / "s.json.lock"
    other = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)  # another run, appending its line
    let_go = threading.Event()
    threading.Thread(target=lambda: (let_go.wait(5), fcntl.flock(other, fcntl.LOCK_UN)), daemon=True).start()
    real_sleep = queue_lock.time.sleep

    def sleep(s):  # (the other run is done with its line as soon as this one waits)
        let_go.set()
        real_sleep(0.01)

    monkeypatch.setattr(queue_lock.time, "sleep", sleep)
    with queue_lock.StateLock(lock):
        pass
    let_go.set()
    os.close(other)
    assert "waiting for the lock" not in capsys.readouterr().err
