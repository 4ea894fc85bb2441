"""``echomimic batch`` as a studio runs it (many rows, edits between runs): OUTDIR/stale/ said with its size and how to
clear it; a dry run that writes nothing (not even a probe file); --smoke said in the plan; every row's weight-set
problem listed at once; downloads listed only for the rows that would render; inputs that are not regular files said
for what they are. No weights load: the workers are tests/test_studio_user.py's stand-in."""
from __future__ import annotations

import json
import os

import pytest

from echomimic_lib.cli import main as cli
from tests.test_batch_dry_run_2 import _plain_args, no_network  # noqa: F401 (fixture)
from tests.test_studio_user import _args, _manifest, _rows, folder, models, rendered  # noqa: F401 (fixtures)

OPTS = ("--device", "cpu")


# ------------------------------------------------------------------------------------------------ 1. stale/ said
def test_the_stale_folder_is_said_with_its_size_and_how_to_clear_it(folder, models, tmp_path, monkeypatch, capsys):
    """Every edit of a row moves its earlier video to OUTDIR/stale/, which grew without a word: the run's end and a dry
    run now say how many videos it holds, their size, and how to clear it (nothing is deleted by the batch)."""
    rendered(monkeypatch)
    rows, out = _rows(3, no_face_crop="true"), tmp_path / "out"
    opts = (*OPTS, "--models", str(models))
    assert cli(_args(_manifest(folder, rows), out, *opts)) == 0
    for r in rows:
        r["seed"] += 100  # every row edited: three earlier videos moved aside
    manifest = _manifest(folder, rows)
    capsys.readouterr()
    assert cli(_args(manifest, out, *opts, "--dry-run")) == 0  # what the run would add to stale/
    assert "before rendering (never deleted; 15 bytes more there)" in capsys.readouterr().out
    assert cli([a for a in _args(manifest, out, *opts) if a != "-q"]) == 0
    said = capsys.readouterr().out
    assert len(list((out / "stale").iterdir())) == 3
    assert f"{out / 'stale'} holds 3 earlier video(s) (15 bytes)" in said, said
    assert f"rm -r {out / 'stale'}" in said
    assert cli(_args(manifest, out, *opts, "--dry-run")) == 0
    said = capsys.readouterr().out
    assert f"{out / 'stale'} holds 3 earlier video(s) (15 bytes)" in said, said
    assert len(list((out / "stale").iterdir())) == 3  # said, never deleted


# --------------------------------------------------------------------------------------- 2. a dry run writes nothing
def test_a_dry_run_makes_no_probe_file_in_the_output_folder(folder, models, tmp_path, monkeypatch):
    """The rows' output checks made (and removed) a write-test file in OUTDIR for every row: a dry run wrote there.
    Now a dry run asks the system whether the folder is writable, and creates nothing."""
    rendered(monkeypatch)
    rows, out = _rows(2, no_face_crop="true"), tmp_path / "out"
    opts = (*OPTS, "--models", str(models))
    assert cli(_args(_manifest(folder, rows), out, *opts)) == 0
    rows[0]["seed"] = 50
    manifest = _manifest(folder, rows)
    made = []
    real = os.open

    def watch(path, flags, *a, **k):
        if flags & os.O_CREAT and str(out) in os.fspath(path):
            made.append(os.fspath(path))
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", watch)
    assert cli(_args(manifest, out, *opts, "--dry-run")) == 0
    assert made == []


def test_a_dry_run_still_says_an_unwritable_output_folder(folder, models, tmp_path, monkeypatch, capsys):
    rendered(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == str(out) else True)
    assert cli(_args(_manifest(folder, _rows(1, no_face_crop="true")), out, *OPTS, "--models", str(models),
                     "--dry-run")) == 1
    assert "would fail" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ 3. --smoke said
def test_a_smoke_dry_run_says_the_rows_use_tiny_random_weights(folder, tmp_path, monkeypatch, capsys):
    rendered(monkeypatch)
    models = tmp_path / "models"
    assert cli(_args(_manifest(folder, _rows(2)), tmp_path / "out", *OPTS, "--models", str(models), "--smoke",
                     "--dry-run")) == 0
    said = capsys.readouterr().out
    assert "2 row(s) are smoke runs (--smoke): tiny random weights" in said, said
    assert "not the real models" in said and str(models) in said
    assert not models.exists()  # said, not made


# ------------------------------------------------------------------------------- 4. every weight problem at once
def test_every_rows_broken_weight_set_is_listed_not_only_the_first(shared_data, tmp_path, no_network, capsys):
    """Two EchoMimicV3 rows, each on a models folder with an unreadable weight index (no --offline): the dry run
    stopped at the first with its error (exit 2), the second row unsaid. Now each row is a
    row that would fail, with its own reason, and the exit code is the run's (1)."""
    rows = []
    for n in ("a", "b"):
        idx = tmp_path / f"models_{n}" / "v3-flash" / "umt5-xxl" / "model.safetensors.index.json"
        idx.parent.mkdir(parents=True)
        idx.write_text("not json")
        rows.append({"name": n, "version": "v3-flash", "reference": str(shared_data / "images" / "portrait_a.png"),
                     "audio": str(shared_data / "audio" / "echomimic_en.wav"), "prompt": "p .", "width": 64,
                     "height": 64, "steps": 2, "length": 5, "models": str(idx.parents[2])})
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli(_plain_args(manifest, tmp_path / "out", *OPTS, "--dry-run")) == 1
    captured = capsys.readouterr()
    assert "0 would render, 0 skipped (already done), 2 would fail of 2" in captured.out, captured
    assert "line 1 (a) would fail" in captured.err and "line 2 (b) would fail" in captured.err
    assert "not a readable weight index" in captured.err


# ------------------------------------------------------------------------------ 5. downloads only of rows to render
def test_dwpose_is_listed_only_when_a_row_to_render_needs_it(folder, shared_data, tmp_path, no_network, monkeypatch,
                                                              capsys):
    """A V2 half-body row whose checks get as far as DWPose, then fail (a wrong --stabilize): the dry run still listed
    DWPose's files as a download of the run, which never makes it (the row fails up front). Downloads are now those of
    the rows that would render."""
    rendered(monkeypatch)
    pose = str(shared_data / "pose" / "01")
    row = {"name": "v2", "version": "v2", "reference": "anna.png", "audio": "en.wav", "pose": pose,
           "halfbody_crop": "true", "stabilize": "bogus"}
    models = tmp_path / "models"
    assert cli(_plain_args(_manifest(folder, [row]), tmp_path / "out", *OPTS, "--models", str(models),
                           "--dry-run")) == 1
    said = capsys.readouterr().out
    assert "1 would fail" in said and "dw-ll_ucoco" not in said and "yolox" not in said, said


# -------------------------------------------------------------------------- 6. not a regular file: said what it is
def test_a_manifest_that_is_a_named_pipe_is_said_as_one(tmp_path, capsys):
    fifo = tmp_path / "jobs.csv"
    os.mkfifo(fifo)
    assert cli(["batch", str(fifo), "-o", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "named pipe" in err and "not found" not in err, err


def test_a_manifest_that_is_a_device_is_said_as_one(tmp_path, capsys):
    assert cli(["batch", "/dev/null", "-o", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "is a device" in err and "not found" not in err, err


def test_an_input_cell_that_is_a_named_pipe_is_said_as_one(folder, tmp_path, capsys):
    os.mkfifo(folder / "live.wav")
    row = {"name": "x", "reference": "anna.png", "audio": "live.wav"}
    assert cli(_args(_manifest(folder, [row]), tmp_path / "out", *OPTS, "--dry-run")) != 0
    captured = capsys.readouterr()
    assert "named pipe" in captured.out + captured.err, captured


@pytest.mark.parametrize("cell", ["folder", "fifo"])
def test_a_reference_cell_that_is_no_file_is_said_for_what_it_is(cell, folder, tmp_path, capsys):
    path = folder / "ref.png"
    path.mkdir() if cell == "folder" else os.mkfifo(path)
    row = {"name": "x", "reference": "ref.png", "audio": "en.wav"}
    assert cli(_args(_manifest(folder, [row]), tmp_path / "out", *OPTS, "--dry-run")) != 0
    captured = capsys.readouterr()
    assert ("is a folder" if cell == "folder" else "named pipe") in captured.out + captured.err, captured


# ------------------------------------------------------------------------------------ studio: a full disk at the end
def _disk_full_for(monkeypatch, appends: bool) -> None:
    """results.jsonl's final rewrite (and, with ``appends``, every line appended as rows finish) meets a full disk."""
    import errno

    from echomimic_lib.jobs.batch import results

    def full(self, records):
        self._fh.close()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.ResultsFile, "rewrite", full)
    if appends:
        class Full:
            closed = False

            def write(self, data):
                raise OSError(errno.ENOSPC, "No space left on device")

            def close(self):
                self.closed = True

            def fileno(self):
                return -1

        real_init = results.ResultsFile.__init__

        def init(self, outdir):
            real_init(self, outdir)
            self._fh.close()
            self._fh = Full()

        monkeypatch.setattr(results.ResultsFile, "__init__", init)


def test_a_full_disk_at_the_final_rewrite_keeps_the_rows_as_recorded(folder, models, tmp_path, monkeypatch, capsys):
    """Every row rendered and recorded line by line, then the disk filled up before results.jsonl was rewritten in
    order: the batch ended with "error: cannot write a file" and exit 2 (as if nothing could run), naming no file.
    The lines already there hold every row: the batch now warns, naming results.jsonl, and exits as its rows did (0)."""
    rendered(monkeypatch)
    out = tmp_path / "out"
    _disk_full_for(monkeypatch, appends=False)
    assert cli(_args(_manifest(folder, _rows(2, no_face_crop="true")), out, *OPTS, "--models", str(models))) == 0
    err = capsys.readouterr().err
    assert str(out / "results.jsonl") in err and "no space" in err.lower(), err
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["name"] for r in recs] == ["clip000", "clip001"] and all(r["status"] == "ok" for r in recs)


def test_a_full_disk_that_lost_finished_rows_says_they_render_again(folder, models, tmp_path, monkeypatch, capsys):
    rendered(monkeypatch)
    out = tmp_path / "out"
    _disk_full_for(monkeypatch, appends=True)
    assert cli(_args(_manifest(folder, _rows(2, no_face_crop="true")), out, *OPTS, "--models", str(models))) != 0
    err = capsys.readouterr().err
    assert str(out / "results.jsonl") in err and "2 finished row(s)" in err and "again" in err, err


# ------------------------------------------------------------------------------ studio: crashed workers, long runs
class _Proc:
    exitcode = -9

    def join(self, timeout=None):
        pass


class _Conn:
    def close(self):
        pass


def _pool(workers: int, max_attempts: int = 3):
    """A LocalPool with stand-in processes (nothing spawned): the respawn policy alone."""
    from echomimic_lib.jobs.batch import workers as w

    pool = w.LocalPool.__new__(w.LocalPool)
    pool.devices, pool.threads, pool.scores, pool.max_attempts = ["cpu"] * workers, 1, False, max_attempts
    w.CrashRule.__init__(pool, workers, max_attempts)  # (the death rules' own init; no processes spawned)
    pool.row_timeout = None
    pool.workers, pool._next_id = [], 0

    def spawn(device):
        pool.workers.append(w._Worker(pool._next_id, device, _Proc(), _Conn()))
        pool._next_id += 1

    pool._spawn = spawn
    for d in pool.devices:
        spawn(d)
    return pool


def _die(pool, job, pending, events):
    worker = pool.workers[0]
    worker.job = job
    job.attempts += 1
    return pool._buried(worker, pending, lambda *e: events.append(e[0]))


@pytest.mark.parametrize("workers", [1, 2])
def test_one_row_that_kills_its_worker_leaves_the_batch_a_worker(workers):
    """One worker (one GPU, or the CPU), a row that crashes its worker every time (3 attempts): the third death found
    no respawn left (2 per worker), the pool was empty, and every row after it failed "no worker left". A row's own
    deaths are bounded by its attempts: the pool always has room for them."""
    from echomimic_lib.jobs.batch.manifest_row import Job

    pool, pending, events = _pool(workers), [], []
    poison = Job(1, "poison", "animate", None)
    for _ in range(3):
        _die(pool, poison, pending, events)
    assert events.count("done") == 1 and len(pool.workers) == workers


def test_deaths_spread_over_a_long_batch_never_empty_the_pool():
    """500 rows, a crashing row now and then with good rows between: every finished row gives the pool its respawns
    back, so two bad rows hours apart do not end the batch."""
    from echomimic_lib.jobs.batch.manifest_row import Job

    pool, pending, events = _pool(1), [], []
    for n in range(4):
        for _ in range(3):
            _die(pool, Job(n, f"bad{n}", "animate", None), pending, events)
        getattr(pool, "finished_one", lambda: None)()  # a good row done between the bad ones
    assert len(pool.workers) == 1


def test_a_worker_dying_at_every_start_still_ends_the_batch():
    """No success ever (a broken driver): the respawns run out and the batch ends, as before."""
    from echomimic_lib.jobs.batch.manifest_row import Job

    pool, pending, events = _pool(1), [], []
    for n in range(20):
        if not pool.workers:
            break
        _die(pool, Job(n, f"r{n}", "animate", None), pending, events)
    assert not pool.workers


# ---------------------------------------------------------------------------------- studio: the disk fills mid-batch
@pytest.mark.parametrize("exc", ["oserror", "writeerror"])
def test_a_row_failing_on_a_full_disk_is_marked_so(exc, monkeypatch):
    import errno

    from echomimic_lib.io.os_errors import WriteError
    from echomimic_lib.jobs.batch import render, workers

    def full(*a, **k):
        if exc == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise WriteError("cannot write out.mp4: no space left", errno.ENOSPC, "out.mp4")

    monkeypatch.setattr(render, "run_job", full)
    payload = workers.render_payload(None, "cpu", None, None)
    assert payload["status"] == "error" and payload.get("disk_full") is True


def test_a_full_disk_stops_the_batch_instead_of_failing_every_later_row(folder, models, tmp_path, monkeypatch,
                                                                         capsys):
    """An overnight batch of many rows, the disk fills at row 2: every later row rendered in full (minutes of GPU each)
    and then failed to write, and results.jsonl filled with the same error. The batch now stops at the first row that
    met a full disk, says so (how many rows were not rendered, what to do) and exits 1; a rerun resumes."""
    from echomimic_lib.jobs.batch import runner

    done = []

    def dispatch(todo, opts, on_event):
        for job in todo:
            done.append(job.name)
            if job.name == "clip002":
                on_event("done", None, job, {"status": "error", "error": "cannot write: no space left on the disk",
                                             "disk_full": True})
                continue
            job.output.write_bytes(b"video")
            on_event("done", None, job, {"status": "ok", "output": str(job.output), "frames": 3})

    monkeypatch.setattr(runner, "_dispatch", dispatch)
    out = tmp_path / "out"
    assert cli(_args(_manifest(folder, _rows(6, no_face_crop="true")), out, *OPTS, "--models", str(models))) == 1
    assert done == ["clip000", "clip001", "clip002"]
    err = capsys.readouterr().err
    assert "disk" in err and "3 row(s) not rendered" in err and "run the same command again" in err, err
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["name"] for r in recs] == ["clip000", "clip001", "clip002"] and "disk_full" not in recs[2]
