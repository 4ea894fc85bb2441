"""``echomimic-train prepare`` records the face landmarker and DWPose files its landmarks and poses come from (by content,
as it records ``--whisper``) and refuses to go on with a dataset in another model's landmarks or poses: the earlier
clips would be skipped as done and mixed with clips of the new model."""
from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import DATA
from tests.test_trainer_mistakes_3 import _train, no_weights  # noqa: F401 - no_weights: a fixture

TASK = DATA / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"


def _other_task(path):
    """The same landmarker bundle with one more member: another file, still a valid model."""
    shutil.copy(TASK, path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("note.txt", "another build")
    return path


def test_the_landmarker_and_dwpose_files_are_recorded_by_content(tmp_path):
    from trainer.data.clean import PrepareConfig
    from trainer.data.prepare_settings import model_identities

    copy = tmp_path / "elsewhere" / "renamed.task"
    copy.parent.mkdir()
    shutil.copy(TASK, copy)
    head = model_identities(PrepareConfig(kind="headshot"), TASK, None)
    assert head["mediapipe_model"]["file"] == TASK.name and head["dwpose"] is None
    assert model_identities(PrepareConfig(kind="headshot"), copy, None)["mediapipe_model"]["sha256"] == \
        head["mediapipe_model"]["sha256"]
    other = model_identities(PrepareConfig(kind="headshot"), _other_task(tmp_path / "b.task"), None)
    assert other["mediapipe_model"]["sha256"] != head["mediapipe_model"]["sha256"]
    assert model_identities(PrepareConfig(kind="full"), TASK, None) == {"mediapipe_model": None, "dwpose": None}
    det, pose = tmp_path / "yolox_l.onnx", tmp_path / "dw-ll_ucoco_384.onnx"
    det.write_bytes(b"detector")
    pose.write_bytes(b"pose model")
    body = model_identities(PrepareConfig(kind="pose"), None, SimpleNamespace(det_path=det, pose_path=pose))
    assert body["dwpose"]["file"] == "yolox_l.onnx+dw-ll_ucoco_384.onnx" and body["mediapipe_model"] is None
    pose.write_bytes(b"another pose model")
    again = model_identities(PrepareConfig(kind="pose"), None, SimpleNamespace(det_path=det, pose_path=pose))
    assert again["dwpose"]["sha256"] != body["dwpose"]["sha256"]


def test_another_model_into_the_same_dataset_is_refused_one_not_known_is_not_compared(tmp_path):
    from trainer.config import ConfigError
    from trainer.data.clean import PrepareConfig
    from trainer.data.prepare_settings import check_same_settings, model_identities

    cfg = PrepareConfig(kind="headshot", size=64)
    ds = tmp_path / "ds"
    ds.mkdir()
    a = model_identities(cfg, TASK, None)
    (ds / "prepare_config.json").write_text(json.dumps({**asdict(cfg), "whisper": None, **a}))
    check_same_settings(ds, cfg, None, a)
    check_same_settings(ds, cfg, None, {"mediapipe_model": None, "dwpose": None})  # not found yet: not compared
    b = model_identities(cfg, _other_task(tmp_path / "b.task"), None)
    with pytest.raises(ConfigError, match=rf"prepared with --mediapipe-model {TASK.name} \(sha256 "
                                          rf"{a['mediapipe_model']['sha256'][:12]}\).*asks for --mediapipe-model b.task"):
        check_same_settings(ds, cfg, None, b)
    old = tmp_path / "old"  # a dataset prepared before models were recorded: goes on
    old.mkdir()
    (old / "prepare_config.json").write_text(json.dumps({**asdict(cfg), "whisper": None}))
    check_same_settings(old, cfg, None, b)
    body = PrepareConfig(kind="pose", size=64)
    pd = tmp_path / "pose_ds"
    pd.mkdir()
    (pd / "prepare_config.json").write_text(json.dumps({**asdict(body), "whisper": None, "mediapipe_model": None,
                                                        "dwpose": {"file": "yolox_l.onnx+dw-ll_ucoco_384.onnx",
                                                                   "sha256": "0" * 64}}))
    with pytest.raises(ConfigError, match=r"prepared with --dwpose-dir yolox_l.onnx\+dw-ll_ucoco_384.onnx"):
        check_same_settings(pd, body, None, {"mediapipe_model": None, "dwpose": {"file": "x+y", "sha256": "1" * 64}})


def test_the_command_refuses_another_landmarker_before_any_clip_and_changes_nothing(tmp_path, capsys):
    from echomimic_lib.io.video_io import write_video
    from trainer.data.clean import PrepareConfig
    from trainer.data.prepare_settings import model_identities

    videos, ds = tmp_path / "videos", tmp_path / "ds"
    videos.mkdir()
    ds.mkdir()
    t = np.arange(32000, dtype=np.float32) / 16000
    frames = np.zeros((50, 48, 96, 3), np.uint8)
    write_video(videos / "talk.mp4", frames, 25.0, (0.3 * np.sin(2 * np.pi * 220 * t))[None], 16000)
    cfg = PrepareConfig(kind="headshot", size=64)
    (ds / "prepare_config.json").write_text(json.dumps({**asdict(cfg), "whisper": None,
                                                        **model_identities(cfg, TASK, None)}))
    before = {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()}
    other = _other_task(tmp_path / "b.task")
    rc, err = _train(["prepare", videos, ds, "--kind", "headshot", "--size", "64", "-q", "--mediapipe-model", other],
                     capsys)
    assert rc == 2 and "this run asks for --mediapipe-model b.task" in err, err
    assert {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()} == before
