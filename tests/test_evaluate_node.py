"""The EchoMimic Evaluate node (ComfyUI stubbed by the bridge's stand-ins): frames + audio + reference -> report STRING
and plot IMAGE, learned-metric files listed from and resolved inside models/echomimic/metrics, and the shipped
render-and-score workflow queued through the batch client."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tests._pack import load_pack, sub

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ECHOMIMIC_SHARED_DIR", ROOT.parent / "shared")).resolve() / "data"
WORKFLOW = ROOT / "workflows" / "api" / "v1_audio_evaluate.json"
N = load_pack().NODE_CLASS_MAPPINGS
C = sub("nodes.comfy_bridge")
EchoMimicError = sub("echomimic_lib.errors").EchoMimicError


@pytest.fixture
def models(tmp_path, monkeypatch):
    root = tmp_path / "models"
    (root / "echomimic" / "metrics").mkdir(parents=True)
    (root / "echomimic" / "mediapipe").symlink_to(DATA / "mediapipe", target_is_directory=True)
    monkeypatch.setattr(C, "MODELS_DIR", root)
    monkeypatch.setattr(C, "INPUT_DIR", tmp_path / "input")
    return root / "echomimic" / "metrics"


@pytest.fixture(scope="module")
def rendered():
    """What a sampler hands on: 16 frames of a face (IMAGE), their audio (AUDIO) and the reference (IMAGE)."""
    import cv2

    video_io = sub("echomimic_lib.io.video_io")
    clip = video_io.read_video(DATA / "video" / "driving_a.mp4", max_frames=16, with_audio=False)
    wav, sr = sub("echomimic_lib.io.audio_file").read_audio(DATA / "audio" / "pose_demo_clip.wav")
    audio = {"waveform": torch.from_numpy(np.ascontiguousarray(wav[:, : int(16 / 24 * sr)])).unsqueeze(0), "sample_rate": sr}
    ref = cv2.cvtColor(cv2.imread(str(DATA / "images" / "portrait_a.png")), cv2.COLOR_BGR2RGB)
    return (torch.from_numpy(clip.frames).float().div(255), audio, torch.from_numpy(ref).float().div(255).unsqueeze(0))


def test_the_node_scores_frames_and_draws_the_plot(models, rendered):
    from tests.test_evaluate_learned import _arcface_onnx

    _arcface_onnx(models / "arcface.onnx")
    spec = N["EchoMimicEvaluate"].INPUT_TYPES()["required"]
    assert spec["arcface"][0] == ["none", "arcface.onnx"] and spec["syncnet"][0] == ["none"]
    frames, audio, ref = rendered
    report, plot = N["EchoMimicEvaluate"]().execute(frames, audio, 24.0, "none", "arcface.onnx", False, reference=ref)
    doc = json.loads(report.strip().splitlines()[-1])
    assert {"av_offset_ms", "av_sync_corr", "jitter", "flicker", "face_rate", "shape_drift", "csim"} <= set(doc)
    assert doc["frames"] == 16 and doc["face_rate"] == 1.0 and doc["reference"] == "reference image"
    assert "A/V offset" in report and "CSIM" in report and "lse_c" not in doc
    # 16 frames: the lip-sync score comes with its confidence and is flagged as too short to mean much
    assert doc["av_sync_meaningful"] is False and 0 < doc["av_sync_p"] <= 1 and doc["av_sync_null_p95"] is not None
    assert "p-value vs unrelated audio" in report and "!" in report.split("sync strength")[1].splitlines()[0]
    assert any("below 6 s" in n for n in doc["notes"])
    assert plot.shape == (1, 520, 960, 3) and plot.dtype == torch.float32 and 0.0 <= float(plot.min()) < float(plot.max()) <= 1.0


def test_the_node_explains_missing_files_and_refuses_names_outside_its_folder(models, rendered, monkeypatch):
    frames, audio, _ = rendered
    report, plot = N["EchoMimicEvaluate"]().execute(frames[:10], audio, 24.0, "gone.model", "none", False)
    doc = json.loads(report.strip().splitlines()[-1])
    assert "lse_c" not in doc and doc["av_offset_ms"] is not None
    assert any("SyncNet weights not found" in n and str(models) in n for n in doc["notes"])
    with pytest.raises(EchoMimicError, match="'..' are refused"):
        N["EchoMimicEvaluate"]().execute(frames, audio, 24.0, "../../secret.model", "none", False)
    with pytest.raises(EchoMimicError, match="audio: takes a link from a node that gives AUDIO"):
        N["EchoMimicEvaluate"]().execute(frames, None, 24.0, "none", "none", False)
    # no MediaPipe model: the report says so and the plot says why there is no curve
    detectors = sub("nodes.detectors")

    def missing(download=False):
        raise sub("echomimic_lib.errors").MissingWeightsError("MediaPipe face_landmarker model not found")

    monkeypatch.setattr(detectors, "face_landmarker", missing)
    report, plot = N["EchoMimicEvaluate"]().execute(frames, audio, 24.0, "none", "none", False)
    doc = json.loads(report.strip().splitlines()[-1])
    assert doc["av_offset_ms"] is None and doc["flicker"] is not None
    assert any("auto_download" in n for n in doc["notes"]) and plot.shape == (1, 520, 960, 3)
    assert not any("--mediapipe-model" in n for n in doc["notes"]), doc["notes"]  # (a command-line option: none here)


def test_the_render_and_score_workflow_queues_with_the_evaluation_fed_by_the_sampler(tmp_path):
    qc = sub("echomimic_lib.jobs.queue_client")
    faces, speech = tmp_path / "faces", tmp_path / "speech"
    faces.mkdir()
    speech.mkdir()
    (faces / "anna.png").write_bytes(b"img")
    (speech / "hello.wav").write_bytes(b"aud")
    [job] = qc.queue_folder(WORKFLOW, faces, speech, dry_run=True)
    prompt = job["prompt"]
    by_type = {v["class_type"]: (k, v["inputs"]) for k, v in prompt.items()}
    sampler = by_type["EchoMimicSampler"][0]
    ev_id, ev = by_type["EchoMimicEvaluate"]
    assert ev["frames"] == [sampler, 0] and ev["fps"] == [sampler, 1] and ev["audio"] == [sampler, 2]
    assert ev["reference"] == [by_type["EchoMimicReferencePrep"][0], 0]
    assert by_type["PreviewAny"][1]["source"] == [ev_id, 0] and by_type["PreviewImage"][1]["images"] == [ev_id, 1]
    assert by_type["LoadImage"][1]["image"] == "anna.png" and by_type["SaveVideo"][1]["filename_prefix"] == "echomimic/anna__hello"
