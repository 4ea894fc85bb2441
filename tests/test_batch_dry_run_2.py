"""``echomimic batch --dry-run`` promises "nothing loaded or written" and what the run would do: it downloaded the
MediaPipe face model while checking the rows, and said "would render" where the run refuses the output folder (a
named pipe, a folder or a loop of links at results.jsonl, at -o, at stale/; another batch writing there). No weights
load here: the workers are a stand-in (tests/test_studio_user.py's)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from echomimic_lib.cli import main as cli
from tests.test_studio_user import _args, _manifest, _rows, folder, models, rendered  # noqa: F401 (fixtures)

FACE_URL = "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/latest/face_landmarker.task"


def _snapshot(root: Path, folders_touched: bool = False) -> dict:
    """Every name under ``root`` with its kind, size and modification time (links not followed); ``folders_touched``:
    a folder's time left out (the run's lock file comes and goes)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size,
                                             None if folders_touched and p.is_dir() else st.st_mtime_ns)
    return out


def _snapshot_of(snap: dict) -> dict:
    return {k: (m, n, None if stat.S_ISDIR(m) else t) for k, (m, n, t) in snap.items()}


@pytest.fixture
def no_network(monkeypatch):
    """Every download this package can start fails the test (MediaPipe's urlopen, huggingface_hub's download)."""
    import huggingface_hub

    calls = []

    def refuse(*a, **k):
        calls.append(a or k)
        raise AssertionError(f"a dry run downloaded: {a} {k}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    return calls


def _plain_args(manifest, out, *extra):  # as _args, without --offline (the run may download)
    return [a for a in _args(manifest, out, *extra) if a != "--offline"]


# ------------------------------------------------------------------------------------------------- downloads
def test_a_dry_run_never_downloads_the_face_model_and_says_the_run_would(folder, models, tmp_path, no_network,
                                                                           monkeypatch, capsys):
    """Rows that crop the face, a models folder without the MediaPipe face model, no --offline: the dry run's row
    checks downloaded it (a network call and a file written into the models folder), or, with no network, said every
    row "would fail". It now downloads nothing and lists the file, where from and where to, as what the run does first."""
    done = rendered(monkeypatch)
    assert not list(models.rglob("face_landmarker*"))
    before, out = _snapshot(models), tmp_path / "out"
    rows = _rows(3)  # (face crop on: the V1 rows need the face model)
    assert cli(_plain_args(_manifest(folder, rows), out, "--device", "cpu", "--models", str(models), "--dry-run")) == 0
    captured = capsys.readouterr()
    assert no_network == [] and _snapshot(models) == before and not out.exists() and done == []
    assert "dry run: 3 would render, 0 skipped (already done), 0 would fail of 3" in captured.out, captured
    assert "would download 1 file(s)" in captured.out
    assert f"face_landmarker.task from {FACE_URL} into {models / 'face_landmarker.task'}" in captured.out


def test_a_dry_run_lists_the_missing_weights_the_workers_would_download(folder, tmp_path, no_network, monkeypatch,
                                                                         capsys):
    """An empty models folder: the run's workers download the weight set; the dry run said nothing of it (a studio
    learns of 5 GB to fetch on the render farm). Each file is listed with its Hugging Face repository and its place;
    nothing is fetched and no folder is made."""
    done = rendered(monkeypatch)
    empty = tmp_path / "models"
    empty.mkdir()
    out = tmp_path / "out"
    assert cli(_plain_args(_manifest(folder, _rows(2, no_face_crop="true")), out, "--device", "cpu", "--models",
                           str(empty), "--dry-run")) == 0
    text = capsys.readouterr().out
    assert no_network == [] and list(empty.iterdir()) == [] and not out.exists() and done == []
    assert "dry run: 2 would render" in text
    assert "https://huggingface.co/" in text and "whisper_tiny.pt" in text and str(empty / "sd-vae-ft-mse") in text
    assert text.count("whisper_tiny.pt from") == 1  # once for the set, not once per row


def test_offline_dry_run_lists_no_download(folder, models, tmp_path, no_network, capsys):
    """--offline: the run downloads nothing (a row lacking the face model fails up front): the dry run says that."""
    rc = cli(_args(_manifest(folder, _rows(2)), tmp_path / "out", "--device", "cpu", "--models", str(models), "--dry-run"))
    captured = capsys.readouterr()
    assert rc == 1 and no_network == [] and "would download" not in captured.out
    assert "2 would fail of 2" in captured.out and "face_landmarker" in captured.err


# ------------------------------------------------------------------------------------------ the output folder
def _fifo(p: Path):
    os.mkfifo(p)


def _loop(p: Path):
    os.symlink(p.name + ".other", p)
    os.symlink(p.name, str(p) + ".other")


def _dangling(p: Path):
    os.symlink(p.parent / "nowhere", p)


def _folder(p: Path):
    p.mkdir()
    (p / "keep.txt").write_text("mine")


def _file(p: Path):
    p.write_text("mine")


CASES = [("results.jsonl", _fifo), ("results.jsonl", _folder), ("results.jsonl", _loop), ("results.jsonl", _dangling),
         ("stale", _fifo), ("stale", _file), ("stale", _loop), (".", _loop), (".", _dangling)]


@pytest.mark.parametrize("where, make", CASES, ids=[f"{w}-{m.__name__[1:]}" for w, m in CASES])
def test_the_dry_run_refuses_the_output_folder_as_the_run_does(where, make, folder, models, tmp_path, monkeypatch,
                                                                 capsys):
    """Where OUTDIR/results.jsonl, OUTDIR/stale/ or OUTDIR itself is a named pipe, a folder, a file, a loop of links or
    a link to nothing, the run refuses (or the system refused it midway: a loop at -o), and the dry run said the
    batch would render. Both now say the same refusal with the same exit code before any row is checked; neither
    writes, moves or opens anything there (the run had moved the earlier videos to stale/ before refusing a
    results.jsonl it could not write)."""
    done = rendered(monkeypatch)
    rows = _rows(2, no_face_crop="true")
    manifest, base = _manifest(folder, rows), tmp_path / "out"
    opts = ("--device", "cpu", "--models", str(models))
    if where == ".":
        make(base)
    else:
        assert cli(_args(manifest, base, *opts)) == 0 and done == ["clip000", "clip001"]
        rows[0]["seed"] = 99  # clip000 renders again: its earlier video would go to stale/
        manifest = _manifest(folder, rows)
        if where == "results.jsonl":
            (base / where).unlink()  # (what a user put there instead)
        make(base / where)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    rc_dry = cli(_args(manifest, base, *opts, "--dry-run"))
    dry = capsys.readouterr()
    assert _snapshot(tmp_path, True) == _snapshot_of(before)  # (a row's check of its -o probes the folder: nothing left)
    rc_run = cli(_args(manifest, base, *opts))
    run = capsys.readouterr()
    assert _snapshot(tmp_path, True) == _snapshot_of(before) and len(done) == (0 if where == "." else 2)
    assert rc_run == rc_dry == 2, (run, dry)
    said = [line for line in run.err.splitlines() if line.startswith("error:")]
    assert said and said == [line for line in dry.err.splitlines() if line.startswith("error:")], (run.err, dry.err)
    assert "would render" not in dry.out
    assert ("results.jsonl" if where == "results.jsonl" else "stale" if where == "stale" else "-o") in said[0]


def test_the_dry_run_says_another_batch_is_writing_into_the_folder(folder, models, tmp_path, monkeypatch, capsys):
    """Another batch holds the folder: the run is refused naming it; the dry run said the rows would render."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys\nfrom echomimic_lib.jobs.batch.lock import BatchLock\n"
                               f"BatchLock({str(out)!r}).acquire()\nprint('held', flush=True)\nsys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        rendered(monkeypatch)
        manifest = _manifest(folder, _rows(1, no_face_crop="true"))
        opts = ("--device", "cpu", "--models", str(models))
        rc_dry = cli(_args(manifest, out, *opts, "--dry-run"))
        dry = capsys.readouterr()
        rc_run = cli(_args(manifest, out, *opts))
        run = capsys.readouterr()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert rc_dry == rc_run == 2 and "another `echomimic batch` is writing into" in dry.err
    assert dry.err.splitlines()[-1] == run.err.splitlines()[-1]
    assert not (out / "results.jsonl").exists()


def test_a_dry_run_never_downloads_dwpose_and_says_the_run_would(folder, tmp_path, no_network, monkeypatch, capsys):
    """V2 rows with halfbody-crop need DWPose: the run downloads its two ONNX files while checking the rows; the dry run
    did too (here: no network, so every row "would fail"). It lists them, with the V2 set's files, and fetches none."""
    import numpy as np

    done = rendered(monkeypatch)
    np.savez(folder / "poses.npz", np.zeros((4, 8, 8, 3), np.uint8))
    empty = tmp_path / "models"
    empty.mkdir()
    rows = [{"name": f"v2_{i}", "reference": "anna.png", "audio": "en.wav", "version": "v2", "pose": "poses.npz",
             "halfbody_crop": "true", "seed": i} for i in range(2)]
    assert cli(_plain_args(_manifest(folder, rows), tmp_path / "out", "--device", "cpu", "--models", str(empty),
                           "--dry-run")) == 0
    text = capsys.readouterr().out
    assert no_network == [] and list(empty.iterdir()) == [] and done == []
    assert "dry run: 2 would render" in text
    assert f"dw-ll_ucoco_384.onnx from https://huggingface.co/yzd-v/DWPose into {empty / 'dwpose'}" in text
    assert text.count("dw-ll_ucoco_384.onnx from") == 1
