"""``echomimic queue``'s state, round 3: ``--retry-failed`` queues a prompt that failed on the server again on
``--resume`` (a line each, its attempts counted in the state file, no more than ``--attempts``; without it a failed
prompt is reported failed again, as before); a run's pid is kept with its process's start time, so a killed run whose
pid an unrelated process took over no longer looks live; the lock file is opened without following a symlink planted
after the check; and the Windows lock branch (``msvcrt.locking``) runs here against a fake ``msvcrt``."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import types

import pytest

from tests.test_batch_hunt_5 import _comfy_handler, _queue, comfy, media  # noqa: F401  (fixtures)


def _saved(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _no_sleep(monkeypatch):
    from echomimic_lib.jobs import queue_client as qc

    monkeypatch.setattr(qc.time, "sleep", lambda s: None)


# ------------------------------------------------------------------------------------------------ --retry-failed
def test_without_retry_failed_a_failed_prompt_is_reported_failed_again_on_resume(comfy, media, capsys, monkeypatch):
    url, state = comfy
    state["how"] = {"p1": "error"}
    _no_sleep(monkeypatch)
    assert _queue(url, media, "--wait") == 1
    saved = _saved(media[0] / ".echomimic_queue.json")["servers"][url]["echomimic/anna__hello"]
    assert saved["prompt_id"] == "p1" and "CUDA out of memory" in saved["failed"] and saved["attempts"] == 1
    capsys.readouterr()
    assert _queue(url, media, "--resume") == 1
    out, err = capsys.readouterr()
    assert state["prompts"] == ["p1", "p2"] and "[p1]" in out and "failed" in out  # nothing queued again
    assert "queued again" not in err


def test_retry_failed_queues_a_failed_prompt_again_on_resume_a_line_each_counting_attempts(comfy, media, capsys,
                                                                                             monkeypatch):
    url, state = comfy
    state["how"] = {"p1": "error"}
    _no_sleep(monkeypatch)
    assert _queue(url, media, "--wait") == 1
    capsys.readouterr()
    state["how"] = {"p3": "error"}  # the second try fails too
    assert _queue(url, media, "--resume", "--retry-failed") == 1
    out, err = capsys.readouterr()
    assert state["prompts"] == ["p1", "p2", "p3"], out  # bob's finished p2 is not queued again
    said = [line for line in err.splitlines() if "queued again" in line]
    assert len(said) == 1 and said[0].startswith("anna.png x hello.wav: its prompt p1 failed") and "attempt 2 of 3" in said[0]
    rec = _saved(media[0] / ".echomimic_queue.json")["servers"][url]["echomimic/anna__hello"]
    assert rec["prompt_id"] == "p3" and rec["attempts"] == 2 and "failed" in rec

    state["how"] = {}  # the third try works
    assert _queue(url, media, "--resume", "--retry-failed") == 0
    out = capsys.readouterr().out
    assert state["prompts"] == ["p1", "p2", "p3", "p4"] and "echomimic/anna__hello [p4] echomimic/p4.mp4" in out
    rec = _saved(media[0] / ".echomimic_queue.json")["servers"][url]["echomimic/anna__hello"]
    assert rec["attempts"] == 3 and "failed" not in rec and rec["files"] == ["echomimic/p4.mp4"]


def test_retry_failed_stops_at_the_attempts_cap_saying_so(comfy, media, capsys, monkeypatch):
    url, state = comfy
    state["how"] = {"p1": "error", "p3": "error"}
    _no_sleep(monkeypatch)
    assert _queue(url, media, "--wait") == 1
    assert _queue(url, media, "--resume", "--retry-failed", "--attempts", "2") == 1
    capsys.readouterr()
    assert _queue(url, media, "--resume", "--retry-failed", "--attempts", "2") == 1
    out, err = capsys.readouterr()
    assert state["prompts"] == ["p1", "p2", "p3"]  # the cap reached: not queued a third time
    assert "anna.png x hello.wav: its prompt p3 failed 2 time(s), the most --attempts 2 allows; not queued again" in err
    assert "[p3]" in out and "CUDA out of memory" in out


def test_retry_failed_also_finds_a_failure_the_interrupted_run_never_saw(comfy, media, capsys, monkeypatch):
    """Ctrl-C while waiting: the state holds no failure mark; the server's history says p1 failed meanwhile."""
    from echomimic_lib.jobs import queue_client as qc

    url, state = comfy
    state["how"] = {"p1": "pending", "p2": "pending"}

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(qc.time, "sleep", interrupt)
    assert _queue(url, media, "--wait") == 130
    state["how"] = {"p1": "error"}
    _no_sleep(monkeypatch)
    capsys.readouterr()
    assert _queue(url, media, "--resume", "--retry-failed") == 0
    out, err = capsys.readouterr()
    assert state["prompts"] == ["p1", "p2", "p3"] and "echomimic/anna__hello [p3] echomimic/p3.mp4" in out
    assert "its prompt p1 failed" in err and "attempt 2 of 3" in err


def test_bad_attempts_and_retry_failed_without_resume_are_usage_errors(comfy, media, capsys):
    url, state = comfy
    assert _queue(url, media, "--resume", "--retry-failed", "--attempts", "0") == 2
    assert "--attempts 0" in capsys.readouterr().err and state["prompts"] == []
    assert _queue(url, media, "--retry-failed") == 2
    assert "give it with --resume" in capsys.readouterr().err and state["prompts"] == []


def test_retry_failed_over_several_servers(media, tmp_path, capsys, monkeypatch):
    from echomimic_lib.jobs.batch import comfy_servers
    from tests._http_stub import start

    failing = {"p1": "error", "p2": "error"}  # (both jobs go to the first server: it holds no queue when asked)
    states = [{"prompts": [], "how": dict(failing)}, {"prompts": [], "how": dict(failing)}]
    servers = [start(_comfy_handler(st)) for st in states]
    monkeypatch.setattr(comfy_servers.time, "sleep", lambda s: None)
    urls = [u for u, _ in servers]
    try:
        assert _queue(urls[0], media, "--server", urls[1], "--results", str(tmp_path)) == 1
        assert _queue(urls[0], media, "--server", urls[1], "--results", str(tmp_path), "--resume") == 1
        assert sum(len(st["prompts"]) for st in states) == 2  # no --retry-failed: nothing queued again
        capsys.readouterr()
        for st in states:
            st["how"] = {}
        assert _queue(urls[0], media, "--server", urls[1], "--results", str(tmp_path), "--resume", "--retry-failed") == 0
    finally:
        for _, stop in servers:
            stop()
    out, err = capsys.readouterr()
    assert sum(len(st["prompts"]) for st in states) == 4, out
    assert len([line for line in err.splitlines() if "failed" in line and "queued again" in line]) == 2, err
    saved = _saved(media[0] / ".echomimic_queue.json")["servers"]
    recs = [r for jobs in saved.values() for r in jobs.values()]
    assert sorted(r["attempts"] for r in recs) == [2, 2] and all("files" in r and "failed" not in r for r in recs)


# ------------------------------------------------------------------------------------------------ pid reuse
def test_a_run_is_recorded_with_its_process_start_time(tmp_path):
    from echomimic_lib.jobs.queue_state import QueueState

    book = QueueState(tmp_path / "s.json")
    book.claim(["a/x"])
    run = next(iter(_saved(tmp_path / "s.json")["runs"].values()))
    assert run["pid"] == os.getpid()
    if sys.platform.startswith("linux"):
        assert run["pid_start"] and run["pid_start"] == __import__("echomimic_lib.jobs.queue_lock",
                                                                   fromlist=["x"]).process_start(os.getpid())
    book.release()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/<pid>/stat")
def test_a_killed_runs_pid_taken_by_another_process_does_not_look_live(tmp_path):
    """The recorded pid runs (an unrelated process: this sleeper), but it started at another time: the run is gone."""
    from echomimic_lib.jobs.queue_lock import alive, host, process_start
    from echomimic_lib.jobs.queue_state import QueueState

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        now = process_start(other.pid)
        assert now is not None
        assert alive(other.pid, host(), now) is True
        assert alive(other.pid, host(), "0:1") is False  # another start: pid reused
        assert alive(other.pid, host()) is True  # an old state file (no start time): pid only, as before
        path = tmp_path / "s.json"
        path.write_text(json.dumps({"version": 2, "servers": {}, "runs": {"old": {
            "pid": other.pid, "pid_start": "0:1", "host": host(), "started": "yesterday", "prefixes": ["a/x"]}}}))
        book = QueueState(path)
        book.claim(["a/x"])  # not refused
        assert list(_saved(path)["runs"]) == [book.run_id]
        book.release()
    finally:
        other.kill()
        other.wait()


def test_process_start_reads_field_22_even_with_spaces_and_parens_in_the_name(monkeypatch):
    from echomimic_lib.jobs import queue_lock

    fields = " ".join(str(n) for n in range(3, 30))  # field 3 (state) .. field 29: field 22 reads "22"
    stat = f"4242 (evil) name (x) {fields}\n"
    monkeypatch.setattr(queue_lock, "_read_proc", lambda path: stat if path.endswith("/stat") else "boot-id\n")
    assert queue_lock.process_start(4242) == "boot-id:22"
    monkeypatch.setattr(queue_lock, "_read_proc", lambda path: None)
    assert queue_lock.process_start(4242) is None


# ------------------------------------------------------------------------------------------------ the lock file
def test_a_symlink_planted_after_the_check_is_refused_and_its_target_never_created(tmp_path, monkeypatch):
    from echomimic_lib.jobs.queue_lock import StateLock

    lock, victim = tmp_path / "s.json.lock", tmp_path / "victim"
    real_open = os.open

    def racing_open(path, flags, *args, **kw):
        if str(path) == str(lock) and not os.path.lexists(lock):
            os.symlink(victim, lock)  # planted between the check and the open
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", racing_open)
    with pytest.raises(OSError) as info:
        with StateLock(lock):
            pass
    assert not victim.exists() and "symlink" in str(info.value) and str(lock) in str(info.value)


def test_a_lock_path_that_opens_as_no_regular_file_is_refused(tmp_path, monkeypatch):
    from echomimic_lib.jobs.queue_lock import StateLock

    lock = tmp_path / "s.json.lock"
    real_open = os.open

    def racing_open(path, flags, *args, **kw):
        if str(path) == str(lock) and not os.path.lexists(lock):
            os.mkfifo(lock)  # (a FIFO opened O_RDWR does not block)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", racing_open)
    with pytest.raises(OSError, match="not a regular file"):
        with StateLock(lock):
            pass


# ------------------------------------------------------------------------------------------------ Windows lock
def _fake_msvcrt(monkeypatch, failures):
    from echomimic_lib.jobs import queue_lock

    calls = []

    def locking(fd, mode, nbytes):
        calls.append((mode, nbytes, os.lseek(fd, 0, os.SEEK_CUR)))
        if mode == fake.LK_LOCK and failures:
            raise OSError(failures.pop(0), "Resource deadlock avoided")

    fake = types.SimpleNamespace(LK_LOCK=1, LK_UNLCK=0, locking=locking)
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    monkeypatch.setattr(queue_lock, "WINDOWS", True)
    return calls


def test_the_windows_lock_locks_retries_on_contention_and_unlocks(tmp_path, monkeypatch):
    from echomimic_lib.jobs.queue_lock import StateLock

    calls = _fake_msvcrt(monkeypatch, [errno.EDEADLK, errno.EACCES])
    lock = tmp_path / "s.json.lock"
    with StateLock(lock) as held:
        os.write(held.fd, b"x")  # (moves the file position: unlocking still unlocks byte 0)
        assert calls == [(1, 1, 0), (1, 1, 0), (1, 1, 0)]  # two refusals (another holder), then ours
    assert calls[3:] == [(0, 1, 0)] and held.fd is None


def test_the_windows_lock_raises_other_errors_and_closes_the_file(tmp_path, monkeypatch):
    from echomimic_lib.jobs.queue_lock import StateLock

    calls = _fake_msvcrt(monkeypatch, [errno.EBADF])
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **kw: opened.append(real_open(*a, **kw)) or opened[-1])
    with pytest.raises(OSError) as info:
        with StateLock(tmp_path / "s.json.lock"):
            pass
    assert info.value.errno == errno.EBADF and calls == [(1, 1, 0)]
    with pytest.raises(OSError):
        os.fstat(opened[0])  # closed


def test_the_windows_lock_on_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch, capsys):
    from echomimic_lib.jobs.queue_lock import StateLock

    calls = _fake_msvcrt(monkeypatch, [errno.ENOLCK])
    with StateLock(tmp_path / "s.json.lock") as held:
        assert held.works is False
    assert calls == [(1, 1, 0)] and "cannot lock files" in capsys.readouterr().err  # nothing to unlock
