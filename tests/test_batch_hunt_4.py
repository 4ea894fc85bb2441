"""``echomimic batch`` at studio scale: two batches on one folder, the --device list, colliding row names, thousands of
rows (inputs hashed once, the error list capped), Ctrl-C. No weights load here: the rows stop before the workers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.cli import main as cli
from echomimic_lib.errors import EchoMimicError
from tests._media import write_wav

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path, shared_data):
    (tmp_path / "anna.png").write_bytes((shared_data / "images" / "portrait_a.png").read_bytes())
    (tmp_path / "bob.png").write_bytes((shared_data / "images" / "portrait_b.png").read_bytes())
    t = np.arange(8000) / 16000
    write_wav(tmp_path / "en.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    write_wav(tmp_path / "de.wav", (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32))
    return tmp_path


def _manifest(folder: Path, rows: list[dict], name="jobs.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(n):
    return [{"name": f"r{i}", "reference": ("anna.png", "bob.png")[i % 2], "audio": ("en.wav", "de.wav")[i % 2 == 0]}
            for i in range(n)]


def _args(manifest, out, *extra):
    return ["batch", str(manifest), "-o", str(out), "--smoke", "--offline", "-q", "--no-scores", "--threads", "1",
            "--device", "cpu", "--models", str(Path(manifest).parent / "models"), *extra]


def _nothing_checked(monkeypatch):
    import echomimic_lib.jobs.batch.runner as runner

    monkeypatch.setattr(runner, "check_jobs", lambda jobs: pytest.fail("a row was checked"))


# ------------------------------------------------------------------------------------------- two batches, one folder
def _hold_lock(out: Path) -> subprocess.Popen:
    code = ("import sys; from echomimic_lib.jobs.batch.lock import BatchLock; lock = BatchLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); sys.stdin.read()")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_second_batch_on_the_same_folder_is_refused_naming_the_first_and_a_crashed_ones_lock_is_taken_over(
        folder, tmp_path, capsys, monkeypatch):
    """Two ``echomimic batch`` on one -o (a second terminal, cron firing twice) both rendered every row and rewrote
    results.jsonl over each other."""
    from echomimic_lib.jobs.batch.lock import LOCK_NAME, BatchLock

    out = tmp_path / "out"
    out.mkdir()
    first = _hold_lock(out)
    try:
        _nothing_checked(monkeypatch)
        assert cli(_args(_manifest(folder, _rows(2)), out)) == 2
        err = capsys.readouterr().err
        assert f"another `echomimic batch` is writing into {out} (pid {first.pid} on host" in err, err
        assert "choose another -o folder" in err and not (out / "results.jsonl").exists()
    finally:
        first.kill()  # SIGKILL: no clean-up, the lock file stays behind
        first.wait(timeout=60)
    assert (out / LOCK_NAME).is_file()
    with BatchLock(out):  # the dead holder's lock is the OS's: gone with it, and its file taken over
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()  # released: the folder is left as the batch's own files


def test_the_lock_is_released_when_a_batch_fails_and_taken_before_any_row_is_checked(folder, tmp_path, monkeypatch):
    import echomimic_lib.jobs.batch.runner as runner
    from echomimic_lib.jobs.batch import read_manifest, run_batch
    from echomimic_lib.jobs.batch.lock import LOCK_NAME, BatchLock

    out = tmp_path / "out"
    seen = []

    def check(jobs):
        seen.append((out / LOCK_NAME).is_file())
        with pytest.raises(EchoMimicError, match="another `echomimic batch` is writing into"):
            BatchLock(out).acquire()  # held, also against this process's second try
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "check_jobs", check)
    with pytest.raises(RuntimeError, match="boom"):
        run_batch(read_manifest(_manifest(folder, _rows(1)), out), out, runner.BatchOptions(device="cpu", quiet=True))
    assert seen == [True] and not (out / LOCK_NAME).exists()
    BatchLock(out).acquire().release()


# ------------------------------------------------------------------------------------------------------ --device
@pytest.mark.parametrize("device, words", [
    ("cuda:0,cuda:0", "names cuda:0 twice; name each GPU once, and give --workers N"),
    ("cuda:1,cuda:2", "there is no cuda:2; this machine has 2 GPU(s): cuda:0 to cuda:1"),
    ("cuda:0,cpu", "not both in one batch"),
    ("cpu,cuda:1", "not both in one batch"),
    ("cuda:first", "'cuda:first' is not a GPU; write each as cuda:N"),
])
def test_a_wrong_device_list_is_refused_before_any_row_is_checked(device, words, folder, tmp_path, capsys, monkeypatch):
    """``--device cuda:0,cuda:0`` put two workers on one GPU without a word, ``cuda:2`` on a 2-GPU machine failed in
    every worker after every row had been checked, ``cuda:0,cpu`` handed the string 'cpu' to CUDA."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _nothing_checked(monkeypatch)
    assert cli(_args(_manifest(folder, _rows(1)), tmp_path / "out", "--device", device)) == 2
    assert words in capsys.readouterr().err


def test_a_good_device_list_gives_one_worker_per_gpu(monkeypatch):
    import torch

    from echomimic_lib.jobs.batch.runner import BatchOptions, worker_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_devices(BatchOptions(device=" cuda:1, cuda:0")) == ["cuda:1", "cuda:0"]
    assert worker_devices(BatchOptions(device="cuda:0", workers=2)) == ["cuda:0", "cuda:0"]
    assert worker_devices(BatchOptions(device="cuda")) == ["cuda:0", "cuda:1"]


# ------------------------------------------------------------------------------------------------ colliding names
@pytest.mark.parametrize("names, shown", [
    (["a/b", "a_b"], "name 'a_b' is file a_b.mp4, as is line 1's 'a/b'"),
    (["Анна/1", "Анна_1"], "name 'Анна_1' is file Анна_1.mp4, as is line 1's 'Анна/1'"),  # letters kept: hunt_5
    (["take 1", "take:1"], "name 'take:1' is file take_1.mp4, as is line 1's 'take 1'"),
])
def test_names_that_become_one_file_name_are_refused_naming_both_as_written(names, shown, folder):
    """'a/b' and 'a_b' (or 'Анна/1' and 'Анна_1') are one file: the error said "name 'job' is also used
    on line 1", a name no row had."""
    from echomimic_lib.jobs.batch.manifest import ManifestError, read_manifest

    rows = [{"name": n, "reference": "anna.png", "audio": "en.wav"} for n in names]
    with pytest.raises(ManifestError) as exc:
        read_manifest(_manifest(folder, rows), folder / "out")
    assert f"line 2: {shown}" in str(exc.value) and "other characters become _" in str(exc.value)


def test_unicode_names_in_nfc_and_nfd_never_share_a_file(folder):
    import unicodedata

    from echomimic_lib.jobs.batch.manifest import ManifestError, read_manifest

    rows = [{"name": unicodedata.normalize(form, "José"), "reference": "anna.png", "audio": "en.wav"} for form in ("NFC", "NFD")]
    try:
        jobs = read_manifest(_manifest(folder, rows), folder / "out")
    except ManifestError as exc:  # refused is fine too, naming both rows
        assert "line 2: name 'José'" in str(exc)
        return
    assert len({j.output.name.casefold() for j in jobs}) == 2 and all(j.output.name.isascii() for j in jobs)


# ----------------------------------------------------------------------------------------------- thousands of rows
def test_a_manifest_of_many_bad_rows_lists_the_first_fifty_and_counts_the_rest(folder):
    from echomimic_lib.jobs.batch.manifest import ManifestError, read_manifest

    rows = [{"name": f"r{i}", "reference": f"faces/missing_{i}.png", "audio": "en.wav"} for i in range(5000)]
    with pytest.raises(ManifestError) as exc:
        read_manifest(_manifest(folder, rows), folder / "out")
    text = str(exc.value)
    assert len(exc.value.problems) == 5000 and "5000 row(s) cannot be run" in text
    assert "line 50: reference:" in text and "line 51:" not in text
    assert "... and 4950 more row(s) (after line 50)" in text and len(text) < 20_000


def test_planning_hashes_each_shared_input_once_with_the_same_fingerprints(folder, monkeypatch):
    """Every row hashed its inputs again: 5,000 rows on one portrait read that file 5,000 times."""
    import echomimic_lib.jobs.batch.results as results
    from echomimic_lib.jobs.batch.manifest import check_jobs, read_manifest

    import echomimic_lib.io.image_file as image_file
    import echomimic_lib.io.audio_file as audio_file

    reads, decoded = [], []
    real = results._digest_file
    monkeypatch.setattr(results, "_digest_file", lambda path, h: (reads.append(Path(path).name), real(path, h))[1])
    for module, name in ((audio_file, "read_audio"), (image_file, "read_image_file")):
        monkeypatch.setattr(module, name, lambda p, *a, _f=getattr(module, name), **k: (decoded.append(Path(p).name),
                                                                                       _f(p, *a, **k))[1])
    jobs = check_jobs(read_manifest(_manifest(folder, _rows(40)), folder / "out", {"smoke": "true"}))
    assert sorted(reads) == ["anna.png", "bob.png", "de.wav", "en.wav"]
    assert sorted(decoded) == ["anna.png", "bob.png", "de.wav", "en.wav"]  # each decoded once for all 40 rows' checks
    assert all(not j.error for j in jobs) and {j.frames for j in jobs} == {12}
    assert [j.fingerprint for j in jobs] == [results.fingerprint(j) for j in jobs]  # as before: finished rows stay done


def test_planning_many_rows_keeps_no_samples_and_says_a_shared_bad_input_on_every_row(folder):
    import tracemalloc

    from echomimic_lib.jobs.animate_checks import preflight
    from echomimic_lib.jobs.batch.manifest import check_jobs, read_manifest

    t = np.arange(16000 * 20) / 16000
    write_wav(folder / "long.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))  # 20 s: 1.3 MB of samples
    write_wav(folder / "silent.wav", np.zeros(8000, np.float32))
    rows = [{"name": f"r{i}", "reference": "anna.png", "audio": ("long.wav", "silent.wav")[i % 2]} for i in range(30)]
    jobs = read_manifest(_manifest(folder, rows), folder / "out", {"smoke": "true"})
    tracemalloc.start()
    try:
        checked = check_jobs(jobs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 60e6  # one recording and one portrait decoded at a time, never all rows' samples
    errors = [j.error for j in checked if j.error]
    assert len(errors) == 15 and all("no audible sound" in e for e in errors)  # the cached error, said on every row
    frames = {j.frames for j in checked if not j.error}
    assert frames == {preflight(checked[0].request).settings.num_frames}  # the same plan as a row checked alone


# ------------------------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_keeps_the_finished_rows_removes_the_one_in_flight_and_says_how_to_resume(folder, tmp_path, capsys,
                                                                                         monkeypatch):
    import echomimic_lib.jobs.batch.runner as runner
    from echomimic_lib.jobs.batch.lock import LOCK_NAME

    out = tmp_path / "out"

    def dispatch(todo, opts, on_event):
        todo[0].output.write_bytes(b"video")
        on_event("done", None, todo[0], {"status": "ok", "seconds": 1.0, "frames": 3})
        (out / ".r1.x1y2z3.partial.mp4").write_bytes(b"half")  # the row in flight
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_dispatch", dispatch)
    monkeypatch.setattr(runner, "_prepare_weights", lambda jobs: None)
    assert cli(_args(_manifest(folder, _rows(3)), out)) == 130
    err = capsys.readouterr().err
    assert "run the same command again to resume (finished rows are skipped)" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["r0.mp4", "results.jsonl"]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["name"], r["status"]) for r in records] == [("r0", "ok")] and not (out / LOCK_NAME).exists()


def test_a_warning_every_row_repeats_is_said_once_with_a_count(folder, capsys):
    """A smoke batch of 40 rows printed "smoke run: no MediaPipe face model ..." 40 times (5,000 rows: 5,000 lines)
    before the first frame."""
    import logging

    from echomimic_lib.cli.common import setup_logging
    from echomimic_lib.jobs.batch.manifest import check_jobs, read_manifest

    setup_logging()
    jobs = read_manifest(_manifest(folder, _rows(40)), folder / "out", {"smoke": "true"})
    check_jobs(jobs)
    err = capsys.readouterr().err
    assert err.count("smoke run: no MediaPipe face model") == 1, err
    assert "--length" not in err  # (--smoke's own 1 s with 0.5 s recordings: no --length was given, tests/test_smoke_length.py)
    assert "(39 repeated warning(s) of the rows' checks not shown again)" in err
    logging.getLogger("echomimic_lib.jobs.batch").warning("after the plan")  # the filter is gone with it
    logging.getLogger("echomimic_lib.jobs.batch").warning("after the plan")
    assert capsys.readouterr().err.count("after the plan") == 2


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl")
def test_a_file_system_without_locks_is_said_and_the_batch_goes_on(tmp_path, monkeypatch, caplog):
    """Some network mounts answer flock with ENOLCK: that is no other batch, and must not be said as one."""
    import errno
    import fcntl

    from echomimic_lib.jobs.batch.lock import LOCK_NAME, BatchLock

    def no_locks(fd, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with BatchLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "cannot lock files (No locks available)" in caplog.text and "start only one" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


def _fake_render(monkeypatch, rendered: list):
    import echomimic_lib.jobs.batch.runner as runner

    def dispatch(todo, opts, on_event):
        for job in todo:
            rendered.append(job.name)
            job.output.write_bytes(b"video")
            on_event("done", None, job, {"status": "ok", "seconds": 1.0, "frames": 3})

    monkeypatch.setattr(runner, "_dispatch", dispatch)
    monkeypatch.setattr(runner, "_prepare_weights", lambda jobs: None)


def test_a_manifest_split_in_parts_into_one_folder_keeps_every_parts_records(folder, tmp_path, monkeypatch):
    """The README says to split a huge manifest and run each part: run into one -o, each part rewrote results.jsonl
    with its own rows only, so the other parts' records were lost and their rerun rendered every row again."""
    rendered = []
    _fake_render(monkeypatch, rendered)
    out = tmp_path / "out"
    rows = _rows(4)
    part_a, part_b = _manifest(folder, rows[:2], "a.jsonl"), _manifest(folder, rows[2:], "b.jsonl")
    assert cli(_args(part_a, out)) == 0 and cli(_args(part_b, out)) == 0
    names = [json.loads(line)["name"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(names) == ["r0", "r1", "r2", "r3"] and names[:2] == ["r2", "r3"]  # this run's rows first
    assert cli(_args(part_a, out)) == 0 and cli(_args(part_b, out)) == 0
    assert rendered == ["r0", "r1", "r2", "r3"]  # the reruns skipped every row
