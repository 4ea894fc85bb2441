"""``echomimic batch`` on tiny weights: error rows, resume after SIGKILL, 1 vs 2 workers, a worker killed mid-job,
manifest errors before any load."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.cli import main as cli
from echomimic_lib.io.audio_file import read_audio
from echomimic_lib.io.video_io import probe, read_video
from tests._media import write_wav

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 3


@pytest.fixture(scope="module")
def media(tmp_path_factory, shared_data):
    from tests._tiny_shared import tiny_v1_copy

    d = tmp_path_factory.mktemp("batch_media")
    tiny_v1_copy(tmp_path_factory, d / "models")
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    write_wav(d / "speech.wav", wav[0, : int(0.5 * sr)], sr)
    write_wav(d / "other.wav", wav[0, sr: int(1.5 * sr)], sr)
    write_wav(d / "long.wav", wav[0, : 4 * sr], sr)
    (d / "broken.wav").write_bytes(b"RIFF" + bytes(range(256)) * 8)  # not decodable
    import cv2

    cv2.imwrite(str(d / "blank.png"), np.full((96, 96, 3), 127, np.uint8))  # no face in it
    for name in ("portrait_a.png", "portrait_b.png"):
        (d / name).write_bytes((shared_data / "images" / name).read_bytes())
    return d


def _options(media, *extra):
    return ["--models", str(media / "models"), "--offline", "-q", "--set", "steps=1", "--set", "width=64", "--set",
            "height=64", "--set", f"length={FRAMES}", "--threads", "1", "--no-scores", *extra]


def _manifest(path: Path, rows: list[dict]) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    path.write_text(",".join(keys) + "\n" + "".join(",".join(str(r.get(k, "")) for k in keys) + "\n" for r in rows))
    return path


def _results(outdir: Path) -> dict:
    return {r["name"]: r for r in map(json.loads, (outdir / "results.jsonl").read_text().splitlines())}


def _no_partials(outdir: Path) -> None:
    assert not list(outdir.glob("*partial*")), list(outdir.glob("*partial*"))


def _good_rows(n):
    refs = ["portrait_a.png", "portrait_b.png"]
    return [{"name": f"r{i}", "reference": refs[i % 2], "audio": "speech.wav" if i % 3 else "other.wav", "seed": 10 + i,
             "no_face_crop": "true"} for i in range(n)]


@pytest.mark.slow
def test_six_rows_two_bad_give_two_error_rows_and_four_videos(media, shared_data, tmp_path):
    face_model = shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"
    rows = _good_rows(4)
    rows.insert(1, {"name": "corrupt_audio", "reference": "portrait_a.png", "audio": "broken.wav", "seed": 1})
    rows.insert(4, {"name": "no_face", "reference": "blank.png", "audio": "speech.wav", "seed": 2,
                    "mediapipe_model": str(face_model), "no_face_crop": "false"})
    out = tmp_path / "out"
    rc = cli(["batch", str(_manifest(media / "six.csv", rows)), "-o", str(out)] + _options(media))
    assert rc == 1  # some rows failed
    res = _results(out)
    assert [r["name"] for r in res.values()] == [r["name"] for r in rows]  # one line per row, manifest order
    assert res["corrupt_audio"]["status"] == "error" and "cannot be opened as a media file" in res["corrupt_audio"]["error"]
    assert res["corrupt_audio"]["line"] == 3
    assert res["no_face"]["status"] == "error" and "no face found" in res["no_face"]["error"]
    ok = [r for r in res.values() if r["status"] == "ok"]
    assert len(ok) == 4 and sorted(p.name for p in out.glob("*.mp4")) == sorted(f"r{i}.mp4" for i in range(4))
    for r in ok:
        assert probe(r["output"])["frames"] == FRAMES and r["seconds"] > 0 and r["peak_rss_gb"] > 0
    # one worker, one weight set: the models were loaded for the first job only
    assert sum(r["loaded_models"] for r in ok) == 1
    _no_partials(out)


def _run_cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "echomimic_lib.cli"] + args, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


@pytest.mark.slow
def test_resume_after_sigkill_skips_finished_rows_and_redoes_the_killed_one(media, tmp_path):
    out = tmp_path / "out"
    rows = _good_rows(4)
    rows[2].update(audio="long.wav", length=96)  # long enough to be killed while its frames are being written
    manifest = _manifest(media / "resume.csv", rows)
    args = ["batch", str(manifest), "-o", str(out)] + _options(media, "--workers", "1")
    proc = _run_cli(args)
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None and not list(out.glob(".r2.*.partial.mp4")):
            time.sleep(0.01)
        assert proc.poll() is None, f"the batch ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)  # the batch and its worker, mid-write, no clean-up
    finally:
        proc.wait(timeout=60)
    assert list(out.glob(".r2.*.partial.mp4"))  # what the killed render left behind
    first = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert len(first) == 2 and all(r["status"] == "ok" for r in first.values())
    assert not (out / "r2.mp4").exists()
    mtimes = {n: os.stat(out / f"{n}.mp4").st_mtime_ns for n in first}
    assert cli(args) == 0
    res = _results(out)
    assert all(r["status"] == "ok" for r in res.values()) and len(res) == 4
    for name in first:  # finished rows skipped: their record and file untouched
        assert res[name] == first[name] and os.stat(out / f"{name}.mp4").st_mtime_ns == mtimes[name]
    assert probe(out / "r2.mp4")["frames"] == 96
    _no_partials(out)
    # a changed setting changes the fingerprint: that row runs again, the others stay skipped
    rows[0]["seed"] = 99
    _manifest(manifest, rows)
    assert cli(args) == 0
    again = _results(out)
    assert again["r0"]["fingerprint"] != res["r0"]["fingerprint"]
    assert all(again[n] == res[n] for n in ("r1", "r2", "r3"))


def _frames(path):
    return read_video(path).frames


@pytest.mark.slow
def test_two_cpu_workers_give_the_same_outputs_as_one(media, tmp_path):
    manifest = _manifest(media / "same.csv", _good_rows(3))
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"w{n}"
        assert cli(["batch", str(manifest), "-o", str(outs[n])] + _options(media, "--workers", str(n))) == 0
    one, two = _results(outs[1]), _results(outs[2])
    assert {r["worker"] for r in two.values()} == {0, 1}  # both workers rendered
    for name in ("r0", "r1", "r2"):  # the rendered frames are identical (the H.264 encoder alone is not bit-stable)
        assert one[name]["frames_sha256"] == two[name]["frames_sha256"], name
        a, b = _frames(outs[1] / f"{name}.mp4"), _frames(outs[2] / f"{name}.mp4")
        assert a.shape == b.shape == (FRAMES, 64, 64, 3)
    assert len({r["frames_sha256"] for r in one.values()}) == 3  # and the rows differ


@pytest.mark.slow
def test_a_worker_killed_mid_job_has_its_job_redone(media, tmp_path):
    from echomimic_lib.jobs.batch import BatchOptions, read_manifest, run_batch

    out = tmp_path / "out"
    killed, events = [], []

    def on_event(kind, worker, job, payload):
        events.append((kind, job.name, getattr(worker, "wid", None)))
        if kind == "start" and job.name == "r1" and not killed:
            killed.append(worker.wid)
            os.kill(worker.proc.pid, signal.SIGKILL)

    defaults = {"models": str(media / "models"), "offline": "true", "steps": 1, "width": 64, "height": 64, "length": FRAMES}
    jobs = read_manifest(_manifest(media / "kill.csv", _good_rows(3)), out, defaults)
    s = run_batch(jobs, out, BatchOptions(workers=1, threads=1, scores=False, quiet=True, on_event=on_event))
    assert s.exit_code == 0 and s.ok == 3
    assert ("died", "r1", killed[0]) in events
    res = _results(out)
    assert res["r1"]["status"] == "ok" and res["r1"]["attempts"] == 2 and res["r1"]["worker"] != killed[0]
    assert probe(out / "r1.mp4")["frames"] == FRAMES
    _no_partials(out)


@pytest.mark.slow
def test_a_row_that_kills_every_worker_becomes_an_error_row(media, tmp_path):
    from echomimic_lib.jobs.batch import BatchOptions, read_manifest, run_batch

    out = tmp_path / "out"

    def on_event(kind, worker, job, payload):
        if kind == "start" and job.name == "r0":
            os.kill(worker.proc.pid, signal.SIGKILL)

    defaults = {"models": str(media / "models"), "offline": "true", "steps": 1, "width": 64, "height": 64, "length": FRAMES}
    jobs = read_manifest(_manifest(media / "poison.csv", _good_rows(2)), out, defaults)
    s = run_batch(jobs, out, BatchOptions(workers=1, threads=1, scores=False, quiet=True, on_event=on_event, max_attempts=2))
    res = _results(out)
    assert s.exit_code == 1 and res["r0"]["status"] == "error" and "died" in res["r0"]["error"] and res["r0"]["attempts"] == 2
    assert res["r1"]["status"] == "ok" and (out / "r1.mp4").is_file() and not (out / "r0.mp4").exists()


def test_manifest_errors_are_all_listed_before_any_load(media, tmp_path, capsys, monkeypatch):
    import echomimic_lib.jobs.batch.workers as workers
    import echomimic_lib.model_set as model_set

    def refuse(*a, **k):
        raise AssertionError("nothing may load or start before the manifest is valid")

    monkeypatch.setattr(model_set, "load_models", refuse)
    monkeypatch.setattr(workers.LocalPool, "__init__", refuse)
    lines = ['{"reference": "portrait_a.png", "audio": "speech.wav"}',
             '{"reference": "portrait_a.png", "audio": "speech.wav", "seed": "abc"}',
             '',
             '{"reference": "missing.png", "audio": "speech.wav"}',
             '{"kind": "morph", "reference": "portrait_a.png"}',
             '{"reference": "portrait_a.png", "audio": "speech.wav", "colour": 3}',
             'not json',
             '{"reference": "portrait_b.png", "audio": "speech.wav", "output": "x.mp4"}']
    manifest = media / "bad.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert cli(["batch", str(manifest), "-o", str(out), "--models", str(media / "models")]) == 2
    err = capsys.readouterr().err
    for n, text in ((2, "seed: 'abc' is not a whole number"), (4, "reference:"), (5, "kind: unknown kind 'morph'"),
                    (6, "unknown column 'colour'"), (7, "not valid JSON"), (8, "column 'output' is not allowed")):
        assert f"line {n}: {text}" in err, (n, err)
    assert "line 1:" not in err and "6 row(s) cannot be run" in err
    assert not out.exists()


def test_folders_crossed_and_default_names(media, tmp_path):
    from echomimic_lib.jobs.batch import crossed, read_manifest

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("portrait_a.png", "portrait_b.png"):
        (imgs / name).write_bytes((media / name).read_bytes())
    auds = tmp_path / "auds"
    auds.mkdir()
    for name in ("speech.wav", "other.wav"):
        (auds / name).write_bytes((media / name).read_bytes())
    jobs = crossed(tmp_path / "out", auds, images=imgs, defaults={"steps": "2", "version": "v1"})
    assert [j.name for j in jobs] == ["portrait_a__other", "portrait_a__speech", "portrait_b__other", "portrait_b__speech"]
    assert all(j.kind == "animate" and j.request.steps == 2 and j.request.mode == "v1-audio" for j in jobs)
    assert jobs[0].request.output == str(tmp_path / "out" / "portrait_a__other.mp4")
    # the same pair twice: the default name gets the line
    m = _manifest(media / "names.csv", [{"reference": "portrait_a.png", "audio": "speech.wav"},
                                        {"reference": "portrait_a.png", "audio": "speech.wav", "seed": 3}])
    jobs = read_manifest(m, tmp_path / "out")
    assert [j.name for j in jobs] == ["portrait_a__speech", "portrait_a__speech-3"]
    assert [j.line for j in jobs] == [2, 3] and jobs[1].request.seed == 3


def test_ray_backend_without_ray_says_how_to_get_it(media, tmp_path, capsys):
    try:
        import ray  # noqa: F401
        pytest.skip("Ray is installed here; the message is for machines without it")
    except ImportError:
        pass
    m = _manifest(media / "ray.csv", _good_rows(1))
    assert cli(["batch", str(m), "-o", str(tmp_path / "out"), "--backend", "ray", "--models", str(media / "models")]) == 2
    err = capsys.readouterr().err
    assert "Ray, which is not installed" in err and 'pip install "ray[default]"' in err
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.slow
def test_dub_rows_from_videos_crossed_with_audios(media, shared_data, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "person.mp4").write_bytes((shared_data / "video" / "driving_a.mp4").read_bytes())
    audios = tmp_path / "audios"
    audios.mkdir()
    (audios / "speech.wav").write_bytes((media / "speech.wav").read_bytes())
    out = tmp_path / "out"
    face_model = shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"
    rc = cli(["batch", "--videos", str(videos), "--audios", str(audios), "-o", str(out), "--models", str(media / "models"),
              "--offline", "-q", "--threads", "1", "--set", "steps=1", "--set", "cfg=1", "--set", "width=64", "--set",
              "height=64", "--set", "context_frames=24", "--set", "context_overlap=0", "--set", f"mediapipe_model={face_model}"])
    assert rc == 0
    rec = _results(out)["person__speech"]
    assert rec["kind"] == "dub" and rec["status"] == "ok"
    info = probe(out / "person__speech.mp4")
    assert (info["width"], info["height"]) == (512, 512) and info["frames"] == 12  # the source's size, the audio's length
    assert "flicker" in rec["scores"] and "face_rate" in rec["scores"]  # weight-free scores, with MediaPipe landmarks
    _no_partials(out)


@pytest.mark.slow
def test_jobs_are_grouped_by_weight_set_so_each_set_loads_once(media, tmp_path):
    rows = _good_rows(4)
    for i, r in enumerate(rows):
        r["acc"] = "true" if i % 2 else "false"  # normal, acc, normal, acc: two weight sets, interleaved
    out = tmp_path / "out"
    assert cli(["batch", str(_manifest(media / "groups.csv", rows)), "-o", str(out)] + _options(media, "--workers", "1")) == 0
    res = _results(out)
    assert sum(r["loaded_models"] for r in res.values()) == 2  # one load per weight set, not per switch
    assert all(r["status"] == "ok" for r in res.values())
