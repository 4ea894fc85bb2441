"""A studio walking ``echomimic batch`` again: a row changed since its video and failing now, weight sets shared out
between fresh workers. No weights load here: the workers are stand-ins (see tests/test_studio_user.py)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from echomimic_lib.cli import main as cli
from tests.test_studio_user import _args, _manifest, _rows, folder, models, rendered  # noqa: F401 (fixtures)


def _records(out) -> dict:
    return {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def _failing(monkeypatch, names: list) -> None:
    from echomimic_lib.jobs.batch import runner

    def dispatch(todo, opts, on_event):
        for job in todo:
            names.append(job.name)
            on_event("done", None, job, {"status": "error", "error": "out of memory (stand-in)"})

    monkeypatch.setattr(runner, "_dispatch", dispatch)


# ------------------------------------------------------------------------------------------- stale videos
def test_a_changed_row_that_fails_leaves_no_older_video_at_its_name(folder, models, tmp_path, monkeypatch, capsys):
    """A row rendered, then its seed (or its audio) changed, and the rerun fails: its older video stayed at
    ``<name>.mp4`` with nothing saying so, and the studio shipped a video that does not match the row. Now the older
    video is moved, before anything renders, to ``OUTDIR/stale/<name>.rendered-<time>.mp4`` (never deleted), the
    record's ``stale_video`` names it, and the end of the batch names it (even with -q); --dry-run says so first."""
    (folder / "broken.wav").write_bytes(b"RIFF" + bytes(range(256)) * 8)
    done = rendered(monkeypatch)
    rows, out = _rows(3, no_face_crop="true"), tmp_path / "out"
    opts = ("--device", "cpu", "--models", str(models))
    assert cli(_args(_manifest(folder, rows), out, *opts)) == 0 and len(done) == 3
    rows[1]["seed"] = 99            # changed: rendered again, fails in its worker
    rows[2]["audio"] = "broken.wav"  # changed: an error row up front
    manifest = _manifest(folder, rows)
    capsys.readouterr()
    assert cli(_args(manifest, out, *opts, "--dry-run")) == 1
    said = capsys.readouterr().out
    assert "2 row(s) not done have an earlier video of other inputs or settings at their name (clip001, clip002)" in said
    assert (out / "clip001.mp4").exists() and not (out / "stale").exists()  # the dry run moved nothing

    failed = []
    _failing(monkeypatch, failed)
    assert cli(_args(manifest, out, *opts)) == 1 and failed == ["clip001"]
    assert not (out / "clip001.mp4").exists() and not (out / "clip002.mp4").exists()
    assert (out / "clip000.mp4").read_bytes() == b"video"  # unchanged row: skipped, kept
    stale = sorted((out / "stale").iterdir())
    assert [p.name.split(".rendered-")[0] for p in stale] == ["clip001", "clip002"]
    assert all(p.read_bytes() == b"video" and p.suffix == ".mp4" for p in stale)  # moved, nothing lost
    recs = _records(out)
    assert recs["clip001"]["stale_video"] == str(stale[0]) and recs["clip002"]["stale_video"] == str(stale[1])
    assert recs["clip000"]["status"] == "ok" and recs["clip000"].get("stale_video") is None
    err = capsys.readouterr().err
    assert "clip001: failed, and has no video now" in err and str(stale[0]) in err and str(stale[1]) in err

    rendered(monkeypatch)  # fixed: renders again; the stale copy stays where it is, nothing new to move
    rows[2]["audio"] = "en.wav"
    assert cli(_args(_manifest(folder, rows), out, *opts)) == 0
    assert (out / "clip001.mp4").exists() and sorted((out / "stale").iterdir()) == stale
    rows[1]["seed"] = 7  # changed once more and failing: a second older video of clip001, under a name of its own
    _failing(monkeypatch, failed)
    assert cli(_args(_manifest(folder, rows), out, *opts)) == 1
    again = sorted(p for p in (out / "stale").iterdir() if p.name.startswith("clip001."))
    assert len(again) == 2 and not (out / "clip001.mp4").exists()


def test_a_stale_path_that_is_not_a_folder_stops_the_batch_before_it_renders(folder, models, tmp_path, monkeypatch,
                                                                           capsys):
    """``OUTDIR/stale`` taken by a file: said with the fix before any row renders; the row's video stays."""
    rendered(monkeypatch)
    rows, out = _rows(1, no_face_crop="true"), tmp_path / "out"
    opts = ("--device", "cpu", "--models", str(models))
    assert cli(_args(_manifest(folder, rows), out, *opts)) == 0
    (out / "stale").write_text("mine")
    rows[0]["seed"] = 5
    failed = []
    _failing(monkeypatch, failed)
    assert cli(_args(_manifest(folder, rows), out, *opts)) == 2 and failed == []
    assert "stale is not a folder" in capsys.readouterr().err
    assert (out / "clip000.mp4").read_bytes() == b"video" and (out / "stale").read_text() == "mine"


# ----------------------------------------------------------------------------------- weight sets on workers
class _Conn:
    """A worker's pipe, answered at once: a job is done as soon as it is sent (the pool then runs in lock-step
    rounds, so the hand-out order is the same on every machine). Counts a load when the job's weight set differs
    from the one this worker holds."""

    def __init__(self, wid, loads, rows):
        self.wid, self.loads, self.rows, self.key, self.inbox = wid, loads, rows, None, [("idle", None, None)]

    def poll(self, timeout=0):
        return bool(self.inbox)

    def recv(self):
        return self.inbox.pop(0)

    def send(self, job):
        if job is None:
            return
        if job.weight_key != self.key:
            self.key = job.weight_key
            self.loads.append((self.wid, job.weight_key))
        self.rows.setdefault(self.wid, []).append(job.name)
        self.inbox += [("done", job.name, {"status": "ok"}), ("idle", None, None)]

    def close(self):
        pass


@pytest.mark.parametrize("keys, want_loads", [
    ("ABABAB", 2),  # two sets on two fresh workers: one each (both loaded A, then both B: 4 loads)
    ("AAAABB", 3),  # the B worker, done first, takes the last A row rather than wait
    ("AABBCC", 4),  # three sets on two workers: one set is shared so that neither worker waits
    ("AAAA", 2),    # one set: both workers take it (balance first)
])
def test_fresh_workers_take_different_weight_sets(keys, want_loads, monkeypatch):
    """Two fresh workers each took the first pending row, of the same weight set, and each then loaded the next set
    too: every worker loaded every set ("ABABAB": 4 loads of a multi-GB set on a 2-GPU box instead of 2). A worker
    now takes its own set first, then a set no other worker holds, then (rather than wait) the set with the most rows
    per worker holding it; the rows stay balanced."""
    from echomimic_lib.jobs.batch import workers

    loads, rows = [], {}

    def spawn(self, device):
        wid, self._next_id = self._next_id, self._next_id + 1
        proc = SimpleNamespace(is_alive=lambda: True, sentinel=object(), join=lambda timeout=None: None,
                               kill=lambda: None, exitcode=None)
        self.workers.append(workers._Worker(wid, device, proc, _Conn(wid, loads, rows)))

    monkeypatch.setattr(workers.LocalPool, "_spawn", spawn)
    monkeypatch.setattr(workers, "wait", lambda objs, timeout=None: [o for o in objs if isinstance(o, _Conn) and o.inbox])
    jobs = [SimpleNamespace(name=f"r{i}", line=i + 1, weight_key=("models", k), attempts=0) for i, k in enumerate(keys)]
    done = []
    pool = workers.LocalPool(["cuda:0", "cuda:1"])
    pool.run(jobs, lambda kind, w, job, payload: done.append(job.name) if kind == "done" else None)
    pool.close()
    assert sorted(done) == sorted(j.name for j in jobs)  # every row once
    assert len(loads) == want_loads, loads
    assert sorted(len(r) for r in rows.values()) == [len(keys) // 2] * 2  # balanced: half the rows each
    if keys == "ABABAB":
        assert {tuple(r) for r in rows.values()} == {("r0", "r2", "r4"), ("r1", "r3", "r5")}


# ------------------------------------------------------------------------------------------------------ --set
@pytest.mark.parametrize("item, words", [
    ("stepz=3", "--set stepz: no manifest column is called 'stepz'; did you mean --set steps=...?"),
    ("output=x.mp4", "--set output: not a column: rows are written to OUTDIR/<name>.mp4"),
])
def test_a_set_key_no_row_has_is_said_once_before_the_rows_are_read(item, words, folder, tmp_path, monkeypatch,
                                                                    capsys):
    """``--set stepz=3`` (a typo) on 300 rows: every row was checked and listed with the same "unknown column 'stepz'"
    (the first 50, then a count), with nothing saying the mistake is in --set, not in the manifest. It is now one
    error naming --set (and the column meant), before any row is read."""
    from echomimic_lib.jobs.batch import manifest

    monkeypatch.setattr(manifest, "build_job", lambda *a, **k: pytest.fail("no row should be read"))
    out = tmp_path / "out"
    assert cli(_args(_manifest(folder, _rows(300)), out, "--device", "cpu", "--set", item, "--dry-run")) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("stepz") <= 2 and "line " not in err


def test_images_without_audios_says_what_is_missing(folder, tmp_path, capsys):
    """``--images faces/`` without ``--audios``: "nothing to do: give a manifest (JOBS) or --images DIR ..." although
    --images was given. It now says that --images needs --audios."""
    assert cli(["batch", "--images", str(folder), "-o", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "--images needs --audios DIR" in capsys.readouterr().err


def test_a_set_value_goes_to_the_rows_whose_kind_has_that_column(folder, tmp_path, monkeypatch, capsys):
    """A studio's manifest mixes animate, dub and EchoMimicV3 rows; ``--set mask=hull`` (a dub option) made every
    animate row a manifest error ("unknown column 'mask' for animate"), ``--set prompt=...`` every V1 row, ``--set
    acc=true`` every V3 row: the batch stopped with exit 2 although the README says --set gives every row a value. A
    --set value now goes to the rows whose kind has the column (the others are as without it); one no row here has
    is said once."""
    import echomimic_lib.jobs.batch as batch
    from echomimic_lib.jobs.batch.runner import BatchSummary

    (folder / "talk.mp4").write_bytes(b"video")  # (read_manifest only checks that inputs exist)
    rows = [{"name": "a", "reference": "anna.png", "audio": "en.wav"},
            {"name": "d", "video": "talk.mp4", "audio": "en.wav"},
            {"name": "v3", "version": "v3-flash", "reference": "anna.png", "audio": "en.wav"}]
    got = {}

    def run_batch(jobs, outdir, opts):
        got.update({j.name: j.request for j in jobs})
        return BatchSummary(total=len(jobs))

    monkeypatch.setattr(batch, "run_batch", run_batch)
    manifest, out = _manifest(folder, rows), tmp_path / "out"
    assert cli(_args(manifest, out, "--dry-run")) == 0
    plain = dict(got)
    sets = ("--set", "mask=hull", "--set", "prompt=A man is speaking.", "--set", "acc=true")
    assert cli(_args(manifest, out, *sets, "--dry-run")) == 0, capsys.readouterr().err
    assert got["d"].region == "hull" and got["v3"].prompt == "A man is speaking." and got["a"].acc is True
    assert got["a"] != plain["a"] and got["a"].__class__(**{**vars(got["a"]), "acc": plain["a"].acc}) == plain["a"]
    assert got["v3"].__class__(**{**vars(got["v3"]), "prompt": plain["v3"].prompt}) == plain["v3"]  # acc: not a V3 column
    capsys.readouterr()
    assert cli(_args(_manifest(folder, rows[:1]), out, "--set", "mask=hull", "--dry-run")) == 2  # no dub row here
    err = capsys.readouterr().err
    assert "--set mask=hull: no row here has that column" in err and "line " not in err
