"""``echomimic batch`` as a studio runs it, fourth round: the earlier video of a changed row is moved into
``OUTDIR/stale/`` through a handle on that folder opened without following links, so a ``stale/`` swapped for a link
between its check and the move never sends the user's video elsewhere."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.jobs.batch import outdir as outdir_mod, runner


class _Job:
    def __init__(self, out: Path, name: str = "row", line: int = 2):
        self.line, self.name, self.output = line, name, out / f"{name}.mp4"


def _swap_after_check(monkeypatch, out: Path, elsewhere: Path, existed: bool):
    """The real check of ``stale/``, then (a race won by someone else) ``stale/`` replaced by a link to ``elsewhere``."""
    real = outdir_mod.check_stale_folder

    def check_then_swap(folder):
        found = real(folder)
        if existed:
            os.rename(out / "stale", out / "stale.real")
        os.symlink(elsewhere, out / "stale")
        return found
    monkeypatch.setattr(runner, "check_stale_folder", check_then_swap)
    monkeypatch.setattr(outdir_mod, "check_stale_folder", check_then_swap)


# ------------------------------------------------------------- 1. stale/ swapped for a link between check and move
@pytest.mark.skipif(not getattr(os, "O_NOFOLLOW", 0) or os.rename not in os.supports_dir_fd,
                    reason="no folder handles on this system (the checks by path are kept there)")
@pytest.mark.parametrize("existed", [False, True], ids=["stale-made-by-the-move", "stale-already-there"])
def test_a_stale_folder_swapped_for_a_link_never_receives_the_video_through_it(tmp_path, monkeypatch, existed):
    """``stale/`` was checked (a folder, not a link), then made and renamed into by its path again: a link put at
    ``stale`` in between sent the user's earlier video wherever it pointed. Now the move goes through a handle opened
    without following links: the video lands in stale/'s real folder or the move is refused, never through the link."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    if existed:
        (out / "stale").mkdir()
    job = _Job(out)
    job.output.write_bytes(b"old video")
    _swap_after_check(monkeypatch, out, elsewhere, existed)
    try:
        moved = runner.set_aside_stale([job], out)
    except EchoMimicError as exc:
        assert "stale" in str(exc) and "not a folder" in str(exc), exc
        assert job.output.read_bytes() == b"old video"  # refused: the video stays at its name, untouched
    else:
        real = out / "stale.real" if existed else None
        assert real is not None and [p.read_bytes() for p in real.iterdir()] == [b"old video"], moved
    assert list(elsewhere.iterdir()) == []  # never through the link


@pytest.fixture(params=["by-handle", "by-path"])
def handles(request, monkeypatch):
    """Both ways of moving: through a folder handle, and (a system without ``dir_fd``) the checks by path."""
    if request.param == "by-path":
        monkeypatch.setattr(outdir_mod, "_BY_HANDLE", False)
    return request.param


def test_the_earlier_video_is_moved_into_stale_as_before(tmp_path, handles):
    """The ordinary move: ``stale/`` made, the video renamed there with its time, a second one numbered."""
    out = tmp_path / "out"
    out.mkdir()
    job = _Job(out)
    job.output.write_bytes(b"first")
    os.utime(job.output, (1e9, 1e9))
    first = Path(runner.set_aside_stale([job], out)["row"])
    job.output.write_bytes(b"second")
    os.utime(job.output, (1e9, 1e9))
    second = Path(runner.set_aside_stale([job], out)["row"])
    assert first.parent == second.parent == out / "stale" and first != second
    assert first.name == "row.rendered-2001-09-09T01-46-40Z.mp4" and second.name == "row.rendered-2001-09-09T01-46-40Z.2.mp4"
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second") and not job.output.exists()


@pytest.mark.parametrize("what", ["link", "file"])
def test_a_stale_that_is_not_a_folder_is_refused_before_anything_moves(tmp_path, what, handles):
    out = tmp_path / "out"
    out.mkdir()
    if what == "link":
        (tmp_path / "elsewhere").mkdir()
        os.symlink(tmp_path / "elsewhere", out / "stale")
    else:
        (out / "stale").write_bytes(b"x")
    job = _Job(out)
    job.output.write_bytes(b"old video")
    with pytest.raises(EchoMimicError, match="not a folder"):
        runner.set_aside_stale([job], out)
    assert job.output.read_bytes() == b"old video"
    with pytest.raises(EchoMimicError, match="not a folder"):  # the move itself refuses it too (no check before)
        outdir_mod.move_to_stale(out, job.output, "row.rendered-x", ".mp4")
    assert job.output.read_bytes() == b"old video"


# --------------------------------------------------- 2. one weight set that crashes its worker: its rows fail, not all
def _weighted(line: int, name: str, key: tuple):
    from echomimic_lib.jobs.batch.manifest_row import Job

    job = Job(line, name, "animate", None)
    job.weight_key = key
    return job


def test_a_weight_set_that_crashes_every_worker_fails_its_own_rows_and_the_others_go_on():
    """One bad weight set (a file cut short, a set too big for the machine): its first row crashed the worker on every
    attempt, used up the restarts, the next row's crash left no worker, and every remaining row, of every set, failed
    "no worker left". Now a set whose rows crashed the worker again after one of them gave up is failed as that set's
    problem (named, with the fix), and the other sets' rows keep a worker."""
    from tests.test_batch_user_3 import _pool

    bad, good = ("/m/bad", "v1_pose", "normal"), ("/m/good", "v1_pose", "normal")
    pool, events = _pool(1), []
    rows = [_weighted(n, f"bad{n}", bad) for n in (2, 3, 4, 5)] + [_weighted(n, f"good{n}", good) for n in (6, 7)]
    pending = list(rows[1:])  # bad2 is being rendered (taken from the queue)

    def die(job):  # the job taken from the queue (a retry: from its front), then its worker crashes
        if job in pending:
            pending.remove(job)
        pool.workers[0].job = job
        job.attempts += 1
        return pool._buried(pool.workers[0], pending, lambda *e: events.append((e[0], e[2].name, e[3])))

    for _ in range(3):
        die(rows[0])  # bad2: every attempt crashes; given up
    assert pool.workers  # (its own attempts: the pool has room for them)
    die(rows[1])  # bad3 crashes too: the set is the problem
    assert pool.workers, "the good set's rows were left without a worker"
    assert [job.name for job in pending] == ["good6", "good7"]  # the bad set's rows are no longer queued
    failed = {name: payload["error"] for kind, name, payload in events if kind == "done"}
    assert set(failed) == {"bad2", "bad3", "bad4", "bad5"}
    for name in ("bad3", "bad4", "bad5"):
        assert "/m/bad" in failed[name] and "crashed" in failed[name] and "echomimic doctor" in failed[name], failed[name]
    assert "/m/good" not in " ".join(failed.values())


def test_one_crashing_row_does_not_condemn_its_weight_set():
    """A row that crashes on its own (its inputs): given up after its attempts; the next row of its set renders."""
    from tests.test_batch_user_3 import _pool

    key = ("/m/set", "v1_pose", "normal")
    pool, events = _pool(1), []
    poison, fine = _weighted(2, "poison", key), _weighted(3, "fine", key)
    pending = [fine]
    for _ in range(3):
        if poison in pending:
            pending.remove(poison)
        pool.workers[0].job = poison
        poison.attempts += 1
        pool._buried(pool.workers[0], pending, lambda *e: events.append((e[0], e[2].name)))
    assert [job.name for job in pending] == ["fine"] and pool.workers
    assert [e for e in events if e[0] == "done"] == [("done", "poison")]
