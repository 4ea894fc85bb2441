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
