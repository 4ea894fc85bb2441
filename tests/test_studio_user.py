"""A studio walking ``echomimic batch``: hundreds of rows from a spreadsheet, a --device list this machine lacks, a
script reading ``results.jsonl``. No weights load here: the rows stop before the workers (or a stand-in renders)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.cli import main as cli
from tests._media import write_wav


@pytest.fixture
def folder(tmp_path, shared_data):
    (tmp_path / "anna.png").write_bytes((shared_data / "images" / "portrait_a.png").read_bytes())
    t = np.arange(8000) / 16000
    write_wav(tmp_path / "en.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    return tmp_path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny V1 set: --offline rows check that their weights are there (the workers are stand-ins: nothing loads)."""
    from tests._tiny_shared import tiny_v1_copy

    return tiny_v1_copy(tmp_path_factory, tmp_path_factory.mktemp("studio") / "models")


def _manifest(folder: Path, rows: list[dict], name="jobs.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(n, **extra):
    return [{"name": f"clip{i:03d}", "reference": "anna.png", "audio": "en.wav", "seed": i, **extra} for i in range(n)]


def _args(manifest, out, *extra):
    return ["batch", str(manifest), "-o", str(out), "-q", "--no-scores", "--offline", *extra]


def rendered(monkeypatch) -> list:
    """The workers replaced by a stand-in that writes each row's video and says it is done (no weights load): the names
    of the rows it rendered, in order. (Shared with tests/test_studio_user_2.py.)"""
    from echomimic_lib.jobs.batch import runner

    done = []

    def dispatch(todo, opts, on_event):
        for job in todo:
            done.append(job.name)
            job.output.write_bytes(b"video")
            on_event("done", None, job, {"status": "ok", "output": str(job.output), "frames": 3})

    monkeypatch.setattr(runner, "_dispatch", dispatch)
    return done


# ------------------------------------------------------------------------------------------------------ --device
@pytest.mark.parametrize("extra, words", [
    (("--device", "cuda:0,cuda:1"), "--device cuda:0,cuda:1: no CUDA GPU is available"),
    (("--device", "cuda:0", "--backend", "ray"), "--device cuda:0"),
])
def test_a_device_list_this_machine_lacks_is_said_before_the_rows_are_read(extra, words, folder, tmp_path, capsys,
                                                                          monkeypatch):
    """``--device cuda:0,cuda:1`` on a machine without them: the 300 rows were read (every file looked up) and their
    mistakes listed first; fixing them only to be told then that the GPUs are not there. The README promises the
    --device list is refused before any row is checked."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rows = _rows(300)
    rows[7]["audio"] = "missing.wav"
    assert cli(_args(_manifest(folder, rows), tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    assert words in err and "cannot be run" not in err and "missing.wav" not in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ results.jsonl
def test_every_record_has_the_same_fields_for_a_script(folder, models, tmp_path, monkeypatch):
    """A studio's script reads ``results.jsonl`` into a table: an ``ok`` row had no ``error`` field and an error row
    no ``frames`` / ``seconds`` / ``scores`` (``rec["error"]`` raised KeyError on every finished row; a CSV writer
    taking its columns from the first line failed on the next kind). Every record now has the README's fields,
    null where they do not apply. (The workers are a stand-in giving a worker's payload: no weights load.)"""
    from echomimic_lib.jobs.batch import runner

    def dispatch(todo, opts, on_event):
        for job in todo:
            on_event("done", None, job, {"status": "ok", "output": str(job.output), "frames": 3, "fps": 24.0,
                                         "device": "cpu", "frames_sha256": "0" * 64, "seconds": 1.0,
                                         "loaded_models": True, "peak_rss_gb": 1.0})

    monkeypatch.setattr(runner, "_dispatch", dispatch)
    (folder / "broken.wav").write_bytes(b"RIFF" + bytes(range(256)) * 8)
    rows = _rows(2, no_face_crop="true") + [{"name": "bad", "reference": "anna.png", "audio": "broken.wav"}]
    out = tmp_path / "out"
    assert cli(_args(_manifest(folder, rows), out, "--device", "cpu", "--models", str(models))) == 1
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in recs] == ["ok", "ok", "error"]
    keys = {"name", "line", "kind", "status", "output", "error", "seconds", "frames", "peak_rss_gb", "peak_vram_gb",
            "scores", "fingerprint", "worker", "attempts", "frames_sha256"}
    for rec in recs:
        assert keys <= set(rec), (rec["name"], keys - set(rec))
    assert recs[0]["error"] is None and recs[2]["frames"] is None and recs[2]["seconds"] is None
    assert "broken.wav" in recs[2]["error"] and recs[2]["output"] is None
    assert {tuple(sorted(r)) for r in recs} == {tuple(sorted(recs[0]))}  # one set of columns


# ---------------------------------------------------------------------------------------------------- --dry-run
def test_dry_run_tells_what_would_render_skip_and_fail_and_writes_nothing(folder, models, tmp_path, monkeypatch, capsys):
    """Before hundreds of GPU-hours a studio asks what a (re)run would do: ``--dry-run`` was refused by the parser.
    It now checks every row as a run does (the manifest, the inputs, the finished rows of ``results.jsonl``), says the
    counts and each row that would fail with its reason, and renders, loads and writes nothing (not even -o)."""
    done = rendered(monkeypatch)
    (folder / "broken.wav").write_bytes(b"RIFF" + bytes(range(256)) * 8)
    rows = _rows(5, no_face_crop="true")
    out = tmp_path / "out"
    assert cli(_args(_manifest(folder, rows), out, "--device", "cpu", "--models", str(models), "--dry-run")) == 0
    assert not out.exists() and done == []
    assert "dry run: 5 would render, 0 skipped (already done), 0 would fail of 5" in capsys.readouterr().out
    assert cli(_args(_manifest(folder, rows[:3]), out, "--device", "cpu", "--models", str(models))) == 0 and len(done) == 3
    before = (out / "results.jsonl").read_bytes()
    rows[1]["seed"] = 99  # changed: redone; rows 0 and 2 unchanged: skipped; 3 and 4 added; a bad row added
    rows.append({"name": "bad", "reference": "anna.png", "audio": "broken.wav"})
    assert cli(_args(_manifest(folder, rows), out, "--device", "cpu", "--models", str(models), "--dry-run")) == 1
    captured = capsys.readouterr()
    assert "dry run: 3 would render, 2 skipped (already done), 1 would fail of 6" in captured.out
    assert "line 6 (bad)" in captured.err and "broken.wav" in captured.err
    assert (out / "results.jsonl").read_bytes() == before and len(done) == 3 and not (out / "bad.mp4").exists()
    assert cli(_args(_manifest(folder, rows), out, "--device", "cpu", "--models", str(models))) == 1  # the run does what the dry run said
    assert done[3:] == ["clip001", "clip003", "clip004"]


# ------------------------------------------------------------------------------------------------ disk full
def test_a_disk_error_in_a_row_is_said_as_the_disk_not_as_a_bug(monkeypatch):
    """A row whose render meets a full disk (or its input moved away mid-batch) outside the video writer's own wording
    was recorded as "OSError: ... (a bug in EchoMimic, not in the row; please report it ...)": the studio files a
    bug report instead of freeing space. It now says what the system said and the fix."""
    import errno

    from echomimic_lib.jobs.batch import render, workers

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "/renders/.clip007.x1.partial.mp4")

    monkeypatch.setattr(render, "run_job", full)
    payload = workers.render_payload(object(), "cpu", render.ModelCache(), None)
    assert payload["status"] == "error"
    assert "no space left on the disk" in payload["error"] and "free some space" in payload["error"]
    assert "/renders/.clip007.x1.partial.mp4" in payload["error"] and "a bug in EchoMimic" not in payload["error"]


def test_resume_is_accepted_and_skips_the_finished_rows(folder, models, tmp_path, monkeypatch):
    """``echomimic queue --resume`` exists; ``echomimic batch ... --resume`` was refused by the parser ("unrecognized
    arguments") with no word that a rerun resumes by itself. It is accepted (what a rerun does anyway)."""
    done = rendered(monkeypatch)
    manifest, out = _manifest(folder, _rows(2, no_face_crop="true")), tmp_path / "out"
    assert cli(_args(manifest, out, "--device", "cpu", "--models", str(models))) == 0 and len(done) == 2
    assert cli(_args(manifest, out, "--device", "cpu", "--models", str(models), "--resume")) == 0 and len(done) == 2


# ------------------------------------------------------------------------------------------ --offline, weights missing
def test_offline_rows_whose_weights_are_missing_are_error_rows_up_front(folder, tmp_path, monkeypatch, capsys):
    """A V1 models folder and --offline, with V2 rows among the V1 ones: the V3 rows were error rows up front (their
    missing files listed) but the V2 rows went to the workers and failed there one by one, and ``--dry-run`` counted
    them as "would render". Now an --offline row whose weight set lacks files is an error row before any worker
    starts, naming the files (checked once per weight set, not per row)."""
    from echomimic_lib.io import model_files
    from echomimic_lib.jobs.batch import runner
    models = tmp_path / "models"  # (no V2 set in it)
    models.mkdir()
    calls = []
    real = model_files.resolve_files
    monkeypatch.setattr(model_files, "resolve_files", lambda *a, **k: calls.append(a[1:3]) or real(*a, **k))
    monkeypatch.setattr(runner, "_dispatch", lambda todo, opts, on_event: pytest.fail("no row should render"))
    rows = [{"name": f"v2_{i}", "reference": "anna.png", "audio": "en.wav", "version": "v2", "no_face_crop": "true",
             "pose": "poses.npz"} for i in range(3)]
    np.savez(folder / "poses.npz", np.zeros((4, 8, 8, 3), np.uint8))
    out = tmp_path / "out"
    assert cli(_args(_manifest(folder, rows), out, "--device", "cpu", "--models", str(models), "--dry-run")) == 1
    captured = capsys.readouterr()
    assert "0 would render, 0 skipped (already done), 3 would fail of 3" in captured.out, captured
    assert "line 1 (v2_0) would fail" in captured.err and "echomimic download" in captured.err
    assert len(set(calls)) == len(calls) == 1  # one look per weight set
    assert cli(_args(_manifest(folder, rows), out, "--device", "cpu", "--models", str(models))) == 1  # and a run
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in recs] == ["error"] * 3 and all("echomimic download" in r["error"] for r in recs)
