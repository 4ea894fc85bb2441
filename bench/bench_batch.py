"""Benchmark (issue 25): ``echomimic batch`` with 1 and 2 CPU workers side by side, and its per-job cost against
``echomimic animate`` called once per clip in a shell loop (every call loads the models again).

    .venv/bin/python bench/bench_batch.py              # 6 jobs, tiny random weights, 64 px, 1 step, 12 frames
    .venv/bin/python bench/bench_batch.py --jobs 4 --frames 6 --quick-loop 2   # a check of the script

Every figure is wall time of a fresh ``python -m echomimic_lib.cli`` process (start-up, imports, model load,
rendering, encoding), as a user would see it. ``jobs_per_min`` = jobs / wall minutes. The shell loop runs
``--quick-loop`` calls (default: all jobs) and its per-job cost is their mean. Prints one JSON object; no
timed assertions: the figures go to the README.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("ECHOMIMIC_SHARED_DIR", ROOT.parent / "shared")).resolve() / "data"


def _cli(args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "echomimic_lib.cli", *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--quick-loop", type=int, default=0, help="animate calls in the shell loop (default: --jobs)")
    a = ap.parse_args()
    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.tiny import make_tiny
    from tests._media import write_wav

    work = Path(tempfile.mkdtemp(prefix="bench_batch."))
    models = work / "models"
    make_tiny(models, version="v1")
    wav, sr = read_audio(SHARED / "audio" / "echomimic_en.wav")
    speech = write_wav(work / "speech.wav", wav[0, : int((a.frames / 24 + 0.2) * sr)], sr)
    refs = [SHARED / "images" / n for n in ("portrait_a.png", "portrait_b.png")]
    rows = [{"name": f"j{i}", "reference": str(refs[i % 2]), "audio": str(speech), "seed": i} for i in range(a.jobs)]
    manifest = work / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--models", str(models), "--offline", "-q"]
    settings = ["steps=1", "width=64", "height=64", f"length={a.frames}", "no_face_crop=true"]
    out = {"jobs": a.jobs, "frames_per_job": a.frames, "cpus": os.cpu_count(), "batch": {}}
    for workers in (1, 2):
        wall = _cli(["batch", str(manifest), "-o", str(work / f"w{workers}"), "--workers", str(workers), "--threads", "1",
                     "--no-scores", *common, *sum((["--set", s] for s in settings), [])])
        out["batch"][f"{workers}_worker"] = {"wall_s": round(wall, 2), "jobs_per_min": round(a.jobs / wall * 60, 2),
                                             "s_per_job": round(wall / a.jobs, 2)}
    loop = a.quick_loop or a.jobs
    walls = []
    for r in rows[:loop]:
        walls.append(_cli(["animate", "--reference", r["reference"], "--audio", r["audio"], "--seed", str(r["seed"]),
                           "-o", str(work / "loop" / f"{r['name']}.mp4"), "--steps", "1", "--width", "64", "--height", "64",
                           "--length", str(a.frames), "--no-face-crop", *common]))
    out["animate_loop"] = {"calls": loop, "s_per_job": round(sum(walls) / loop, 2),
                           "jobs_per_min": round(loop / sum(walls) * 60, 2)}
    out["batch_vs_loop_per_job"] = round(out["batch"]["1_worker"]["s_per_job"] / out["animate_loop"]["s_per_job"], 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
