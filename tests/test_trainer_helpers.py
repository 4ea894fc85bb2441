"""Shared builders for the trainer tests (imported by the other tests/test_trainer_*.py files).

Everything expensive (tiny weights, prepared datasets) is built once per pytest session under the
session's base temp folder and reused (a ``.done`` marker is written when a build is complete).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ECHOMIMIC_SHARED_DIR", ROOT.parent / "shared")).resolve() / "data"
MEDIAPIPE = DATA / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def shared_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.getbasetemp() / "trainer_shared"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _once(path: Path, build) -> Path:
    if not (path / ".done").is_file():
        if path.exists():
            shutil.rmtree(path)
        build(path)
        (path / ".done").write_text("ok")
    return path


def tiny_weights(base: Path, version: str) -> Path:
    from echomimic_lib.tiny import make_tiny

    return _once(base / f"tiny_{version}", lambda p: make_tiny(p, version=version))


def whisper_path(base: Path) -> Path:
    return tiny_weights(base, "v1") / "audio_processor" / "whisper_tiny.pt"


def _headshot_inputs(folder: Path) -> None:
    folder.mkdir(parents=True)
    for stem, wav in (("driving_a", "echomimic_en.wav"), ("driving_b", "echomimic_zh.wav")):
        (folder / f"{stem}.mp4").symlink_to(DATA / "video" / "driving_a.mp4")
        (folder / f"{stem}.wav").symlink_to(DATA / "audio" / wav)


def headshot_dataset(base: Path) -> Path:
    """Two 2-second headshot clips (driving_a.mp4 with two different shared wavs), 128 px."""
    from trainer.data.clean import PrepareConfig
    from trainer.data.prepare import prepare_dataset

    def build(p: Path):
        _headshot_inputs(p / "in")
        prepare_dataset(p / "in", p / "ds", PrepareConfig(size=128, max_seconds=2.0, num_shards=4), whisper_path(base),
                        landmarker_model=MEDIAPIPE, progress=False)

    return _once(base / "headshot", build) / "ds"


class FakeDWPose:
    """Stands in for DWPose (no ONNX models offline): returns the released demo poses frame by frame."""

    def __init__(self, folder=None):
        from echomimic_lib.pose import load_pose

        self.seq = load_pose(folder or DATA / "pose" / "01")
        self.i = 0

    def __call__(self, image):
        d = self.seq.frame_dict(self.i % len(self.seq))
        self.i += 1
        return d


def halfbody_video(folder: Path, frames: int = 48) -> Path:
    import cv2

    from echomimic_lib.io.video_io import write_video

    folder.mkdir(parents=True, exist_ok=True)
    img = cv2.cvtColor(cv2.imread(str(DATA / "images" / "halfbody_0035.png")), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (384, 384), interpolation=cv2.INTER_AREA)
    write_video(folder / "talk.mp4", np.stack([np.roll(img, i % 3, axis=1) for i in range(frames)]), 24.0)
    (folder / "talk.wav").symlink_to(DATA / "audio" / "echomimicv2_woman.wav")
    return folder / "talk.mp4"


def halfbody_dataset(base: Path) -> Path:
    from trainer.data.clean import PrepareConfig
    from trainer.data.prepare import prepare_dataset

    def build(p: Path):
        halfbody_video(p / "in")
        prepare_dataset(p / "in", p / "ds", PrepareConfig(kind="halfbody", size=128, min_face_px=10, num_shards=4), whisper_path(base),
                        landmarker_model=MEDIAPIPE, pose_detector=FakeDWPose(), progress=False)

    return _once(base / "halfbody", build) / "ds"


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def v1_config(base: Path, out: Path, steps: int = 10, **extra) -> dict:
    cfg = {
        "preset": "v1_stage1", "output_dir": str(out), "seed": 3, "cpu_threads": 1,
        "model": {"init": "echomimic", "echomimic_path": str(tiny_weights(base, "v1")), "weights": "v1_pose"},
        "data": {"roots": [str(headshot_dataset(base))], "width": 64, "height": 64, "num_workers": 0,
                 "audio_aug": {"noise_prob": 0.0, "gain_prob": 0.0, "shift_prob": 0.0}},
        "loss": {"spatial": {"weight": 0.1, "lpips": 0.0}},
        "optim": {"lr": 1e-3, "batch_size": 2},
        "phases": [{"name": "stage1", "steps": steps}],
        "checkpoint": {"every": max(1, steps)},
        "log": {"every": 1, "progress": False},
    }
    return _merge(cfg, extra)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train_cli(*args, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"echomimic-train {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return r


def read_log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (Path(run) / "train_log.jsonl").read_text().splitlines() if x.strip()]


def rows(run: Path) -> list[dict]:
    """Per-step rows (the latest value of each step when a resumed run logged a step twice)."""
    last = {}
    for r in read_log(run):
        if "event" not in r:
            last[r["step"]] = r
    return [last[s] for s in sorted(last)]


def events(run: Path, kind: str) -> list[dict]:
    return [r for r in read_log(run) if r.get("event") == kind]


def load_ckpt(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))
