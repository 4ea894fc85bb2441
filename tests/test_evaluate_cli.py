"""`echomimic evaluate` (table, --json, --compare, --plot, learned-metric files present / missing / unsafe, bad input)
and the trainer's validation hook (metrics in the JSON log and TensorBoard, with and without the MediaPipe model)."""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from echomimic_lib.cli import main

MP_MODEL = "mediapipe/face_landmarker_v2_with_blendshapes.task"
KEYS = ("av_offset_ms", "av_sync_corr", "jitter", "flicker", "face_rate", "shape_drift")


@pytest.fixture(scope="module")
def video(shared_data, tmp_path_factory):
    """A 16-frame mp4 of the driving face with 0.7 s of speech as its audio track."""
    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.io.video_io import read_video, write_video

    clip = read_video(shared_data / "video" / "driving_a.mp4", max_frames=16, with_audio=False)
    wav, sr = read_audio(shared_data / "audio" / "pose_demo_clip.wav")
    return write_video(tmp_path_factory.mktemp("eval") / "clip.mp4", clip.frames, clip.fps, wav[:, : int(0.7 * sr)], sr)


def _run(capsys, *args) -> tuple[int, list[str], str]:
    rc = main(["evaluate", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out.strip().splitlines(), out.err


def test_landmark_folder_json_has_every_key_and_near_zero_offset(capsys, shared_data, tmp_path):
    rc, lines, _ = _run(capsys, shared_data / "v1_pose_pkl", "--audio", shared_data / "audio" / "pose_demo_clip.wav",
                        "--json", "--models", tmp_path)
    doc = json.loads(lines[-1])
    assert rc == 0 and all(k in doc for k in KEYS)
    assert abs(doc["av_offset_ms"]) <= 1000 / 24 and doc["av_sync_corr"] > 0.3 and doc["frames"] == 240
    assert doc["av_sync_meaningful"] is True and doc["av_sync_p"] < 0.01 and doc["av_sync_z"] > 2
    assert "lse_c" not in doc and "csim" not in doc


def test_video_with_a_learned_metric_plot_and_table(capsys, shared_data, video, tmp_path):
    from tests.test_evaluate_learned import _arcface_onnx

    (tmp_path / "metrics").mkdir()
    arc = _arcface_onnx(tmp_path / "metrics" / "arcface.onnx")  # found in <models>/metrics without a flag
    common = ["--models", tmp_path, "--offline", "--mediapipe-model", shared_data / MP_MODEL]
    rc, lines, _ = _run(capsys, video, "--json", "--reference", shared_data / "images" / "portrait_a.png",
                        "--plot", tmp_path / "sync.png", *common)
    doc = json.loads(lines[-1])
    assert rc == 0 and all(k in doc for k in KEYS) and "csim" in doc and "lse_c" not in doc
    assert doc["face_rate"] == 1.0 and doc["flicker"] is not None and doc["reference"] == "reference image"
    assert (tmp_path / "sync.png").read_bytes()[:4] == b"\x89PNG" and lines[0].startswith("wrote ")
    # a readable table, two clips side by side
    rc, lines, _ = _run(capsys, video, "--compare", video, "--arcface", arc, *common)
    assert rc == 0 and lines[0].split()[:3] == ["metric", "clip.mp4", "clip.mp4"]
    row = next(line for line in lines if line.startswith("CSIM"))
    assert len(row.split()) == 6  # label (3 words), two values, "higher"
    assert any("LSE-C / LSE-D not computed" in line for line in lines)


def test_missing_or_unsafe_weights_are_explained_and_the_weight_free_metrics_still_run(capsys, shared_data, video, tmp_path):
    common = [video, "--json", "--models", tmp_path, "--offline", "--mediapipe-model", shared_data / MP_MODEL]
    rc, lines, err = _run(capsys, *common, "--syncnet", tmp_path / "nowhere.model", "--arcface", tmp_path / "arc.onnx")
    doc = json.loads(lines[-1])
    assert rc == 0 and doc["av_offset_ms"] is not None and doc["jitter"]["all"] > 0
    assert "lse_c" not in doc and "csim" not in doc
    assert f"SyncNet weights not found at {tmp_path / 'nowhere.model'}" in err and str(tmp_path / "metrics") in err
    assert "robots.ox.ac.uk" in err and "ArcFace model not found" in err

    class Evil:
        def __reduce__(self):
            return (os.system, (f"echo pwned > {tmp_path / 'pwned'}",))

    with open(tmp_path / "evil.model", "wb") as f:
        pickle.dump({"w": Evil()}, f, protocol=2)
    rc, lines, err = _run(capsys, *common, "--syncnet", tmp_path / "evil.model")
    doc = json.loads(lines[-1])
    assert rc == 0 and "lse_c" not in doc and doc["face_rate"] == 1.0
    assert "refused to load" in err and not (tmp_path / "pwned").exists()


def test_bad_input_fails_before_any_work(capsys, shared_data, tmp_path):
    rc, _, err = _run(capsys, tmp_path / "missing.mp4")
    assert rc == 2 and "not found" in err
    rc, _, err = _run(capsys, shared_data / "v1_pose_pkl")
    assert rc == 2 and "pass the clip's audio" in err
    rc, _, err = _run(capsys, shared_data / "v1_pose_pkl", "--audio", tmp_path / "none.wav")
    assert rc == 2 and "--audio" in err and "file not found; give a speech recording" in err
    rc, _, err = _run(capsys, shared_data / "v1_pose_pkl", "--audio", shared_data / "audio" / "pose_demo_clip.wav",
                      "--reference", tmp_path / "none.png")
    assert rc == 2 and "--reference" in err and "file not found; give a portrait" in err
    (tmp_path / "plot.png").mkdir()
    rc, _, err = _run(capsys, shared_data / "v1_pose_pkl", "--audio", shared_data / "audio" / "pose_demo_clip.wav",
                      "--plot", tmp_path / "plot.png")
    assert rc == 2 and "not a regular file" in err


# ------------------------------------------------------------------------------------------ trainer
def _driving(shared_data, n=16):
    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.io.video_io import read_video

    frames = read_video(shared_data / "video" / "driving_a.mp4", max_frames=n, with_audio=False).frames
    wav, sr = read_audio(shared_data / "audio" / "pose_demo_clip.wav")
    from echomimic_lib.evaluate.inputs import audio_16k

    return frames.astype(np.float32) / 255.0, audio_16k(wav[:, : int(n / 24 * sr)], sr)


def test_validation_logs_the_metrics_to_tensorboard_and_the_json_log(shared_data, tmp_path, monkeypatch, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainer.monitor import Monitor, read_log
    from trainer.validation import log_quality_metrics

    models = tmp_path / "echomimic_release"
    (models / "mediapipe").mkdir(parents=True)
    shutil.copy(shared_data / MP_MODEL, models / "mediapipe")
    monkeypatch.setenv("ECHOMIMIC_MODELS", str(tmp_path / "empty"))
    frames, audio = _driving(shared_data)
    mon = Monitor(tmp_path / "run", enabled=True)
    cfg = SimpleNamespace(model=SimpleNamespace(echomimic_path=str(models)), data=SimpleNamespace(condition="landmarks"))
    log_quality_metrics(cfg, mon, 5, frames, audio, SimpleNamespace(fps=24.0), (64, 64))
    # without a MediaPipe model: one log line, and the metric that needs no landmarks (outside the clip's face mask)
    boxes = np.array([[0.3, 0.2, 0.7, 0.8]] * 16)
    face_clip = SimpleNamespace(fps=24.0, array=lambda name: boxes)
    cfg_audio = SimpleNamespace(model=SimpleNamespace(echomimic_path=None), data=SimpleNamespace(condition="face_mask"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trainer.validation"):
        log_quality_metrics(cfg_audio, mon, 10, frames, audio, face_clip, (512, 512))
    mon.close()
    rows = [r for r in read_log(tmp_path / "run" / "train_log.jsonl") if r.get("event") == "validation_metrics"]
    assert [r["step"] for r in rows] == [5, 10]
    full, bare = rows
    assert {"jitter/all", "jitter/mouth", "flicker", "face_rate", "shape_drift"} <= set(full)
    assert not any(k.startswith("av_") for k in full)  # 16 frames (0.7 s): too short for lip sync to mean anything
    assert set(bare) == {"step", "event", "flicker"}
    lines = [r.message for r in caplog.records if r.name == "trainer.validation"]
    assert len(lines) == 1 and "MediaPipe" in lines[0]
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"validation_metrics/flicker", "validation_metrics/jitter/all"} <= tags
    assert [e.step for e in acc.Scalars("validation_metrics/flicker")] == [5, 10]


def test_validation_logs_lip_sync_only_for_clips_long_enough(shared_data, tmp_path, monkeypatch, caplog):
    import cv2

    from echomimic_lib.evaluate.sync import MIN_SYNC_SECONDS
    from trainer.monitor import Monitor, read_log
    from trainer.validation import log_quality_metrics

    models = tmp_path / "echomimic_release"
    (models / "mediapipe").mkdir(parents=True)
    shutil.copy(shared_data / MP_MODEL, models / "mediapipe")
    monkeypatch.setenv("ECHOMIMIC_MODELS", str(tmp_path / "empty"))
    n = int(MIN_SYNC_SECONDS * 24)
    frames, audio = _driving(shared_data, n)
    frames = np.stack([cv2.resize(f, (192, 192), interpolation=cv2.INTER_AREA) for f in frames])
    cfg = SimpleNamespace(model=SimpleNamespace(echomimic_path=str(models)), data=SimpleNamespace(condition="landmarks"))
    mon = Monitor(tmp_path / "run", enabled=True)
    with caplog.at_level(logging.INFO, logger="trainer.validation"):
        log_quality_metrics(cfg, mon, 1, frames, audio, SimpleNamespace(fps=24.0), (192, 192))        # 6 s: logged
        log_quality_metrics(cfg, mon, 2, frames[:n - 24], audio[: (n - 24) * 16000 // 24], SimpleNamespace(fps=24.0),
                            (192, 192))                                                                # 5 s: left out
    mon.close()
    long, short = [r for r in read_log(tmp_path / "run" / "train_log.jsonl") if r.get("event") == "validation_metrics"]
    assert {"av_offset_ms", "av_sync_corr", "av_sync_p", "av_sync_z", "av_sync_null_p95"} <= set(long)
    assert 0 < long["av_sync_p"] <= 1 and "jitter/all" in short and not any(k.startswith("av_") for k in short)
    lines = [r.message for r in caplog.records if r.name == "trainer.validation" and "lip sync not logged" in r.message]
    assert len(lines) == 1 and "validation.frames >= 144" in lines[0]
