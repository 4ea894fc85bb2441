"""Optional curation at prepare (#26): head yaw from landmarks, camera motion from background flow, SyncNet lip sync
(random weights: the plumbing), and prepare's per-filter counts."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trainer.config import ConfigError
from trainer.data.clip import ClipStatus
from trainer.data.curate import (BackgroundFlow, CurateConfig, after_write, before_write, camera_verdict, clip_sync_scores,
                                 head_yaw_degrees, load_curate, load_sync_model, profile_verdict, sync_verdict)


def _face(yaw_deg: float, frames: int = 10, seed: int = 0) -> np.ndarray:
    """A 478-point face (eye and mouth corners where the mesh has them) turned by ``yaw_deg`` about the vertical axis."""
    rng = np.random.default_rng(seed)
    pts = rng.normal(0, 0.05, (478, 3))
    pts[33], pts[263] = (-0.08, -0.03, 0.0), (0.08, -0.03, 0.0)  # outer eye corners
    pts[61], pts[291] = (-0.05, 0.07, 0.01), (0.05, 0.07, 0.01)  # mouth corners
    a = np.radians(yaw_deg)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    out = pts @ rot.T + (0.5, 0.5, 0.0)
    jitter = rng.normal(0, 0.001, (frames, 478, 3))
    return out[None] + jitter


def test_head_yaw_tells_a_frontal_face_from_a_profile():
    assert np.all(head_yaw_degrees(_face(0)) < 3)
    assert np.allclose(head_yaw_degrees(_face(30)), 30, atol=3)
    assert np.allclose(head_yaw_degrees(_face(-75)), 75, atol=3)  # either side
    c = CurateConfig(max_yaw=45)
    assert profile_verdict(c, head_yaw_degrees(_face(10)))[0].ok
    v, m = profile_verdict(c, head_yaw_degrees(_face(70)))
    assert not v.ok and v.reason == "profile_view" and m["profile_frames"] == 1.0
    mixed = np.concatenate([head_yaw_degrees(_face(0, 9)), head_yaw_degrees(_face(70, 1))])  # 10 % profile frames
    assert profile_verdict(c, mixed)[0].ok and not profile_verdict(CurateConfig(max_yaw=45, max_profile_frames=0.05), mixed)[0].ok


def _textured(h: int, w: int, seed: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (h // 4, w // 4, 3)).astype(np.float32)
    return cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def _clip(pan_px: int, frames: int = 12, h: int = 120, w: int = 160) -> list[np.ndarray]:
    """A textured background (static, or panning ``pan_px`` pixels per frame) and a talking 'face' square that
    changes every frame (its motion is the subject's, excluded by the face box)."""
    bg = _textured(h, w + frames * abs(pan_px) + 1, 1)
    out = []
    for f in range(frames):
        img = bg[:, f * pan_px : f * pan_px + w].copy() if pan_px >= 0 else bg[:, -w:].copy()
        img[40:80, 60:100] = _textured(40, 40, 100 + f)  # the face: new content every frame
        out.append(img)
    return out


def test_camera_motion_separates_a_static_background_from_a_panning_one():
    box = np.array([60 / 160, 40 / 120, 100 / 160, 80 / 120])
    scores = {}
    for name, pan in (("static", 0), ("panning", 2)):
        flow = BackgroundFlow()
        for img in _clip(pan):
            flow.add(img)
        scores[name] = flow.score(box, fps=24.0, margin=0.1)
    assert scores["static"] < 0.01  # frame widths per second
    assert scores["panning"] == pytest.approx(2 / 160 * 24, rel=0.25)  # 2 px per frame of 160 = 0.3 widths per second
    c = CurateConfig(max_camera_motion=0.05)
    assert camera_verdict(c, scores["static"])[0].ok
    v, m = camera_verdict(c, scores["panning"])
    assert not v.ok and v.reason == "camera_motion" and m["camera_motion"] > 0.2


def test_before_write_records_the_measures_and_the_reason():
    st = ClipStatus("c", "c.mp4", "dropped")
    flow = BackgroundFlow()
    for img in _clip(2):
        flow.add(img)
    box = np.array([60 / 160, 40 / 120, 100 / 160, 80 / 120])
    assert before_write(CurateConfig(max_yaw=45), st, _face(5), flow, box, 24.0)  # camera filter off: kept
    assert "yaw_median_deg" in st.curation and "camera_motion" in st.curation
    st = ClipStatus("c", "c.mp4", "dropped")
    assert not before_write(CurateConfig(max_yaw=45, max_camera_motion=0.05), st, _face(5), flow, box, 24.0, margin=0.1)
    assert st.reason == "camera_motion"


@pytest.fixture
def random_syncnet(tmp_path):
    from echomimic_lib.evaluate.syncnet import SyncNet

    torch.manual_seed(0)
    path = tmp_path / "syncnet_v2.model"
    torch.save(SyncNet().state_dict(), path)
    return path


def test_lip_sync_filter_plumbing_with_random_syncnet_weights(tmp_path, random_syncnet):
    from tests.test_trainer_latent_cache import synthetic_dataset

    root = synthetic_dataset(tmp_path / "ds", clips=1, frames=24)
    (clip_dir,) = list((root / "shard-00000").iterdir())
    net = load_sync_model(CurateConfig(syncnet=str(random_syncnet)))
    scores = clip_sync_scores(net, clip_dir)
    assert scores.frames > 0 and np.isfinite(scores.lse_c) and abs(scores.av_offset) <= 15
    assert sync_verdict(CurateConfig(syncnet="x", min_sync_confidence=-1.0, max_sync_offset=15), scores)[0].ok
    st = ClipStatus(clip_dir.name, "v.mp4", "ok", path=str(clip_dir.relative_to(root)))
    after_write(CurateConfig(syncnet=str(random_syncnet), min_sync_confidence=1e6), net, st, root)
    assert st.status == "dropped" and st.reason == "lip_sync" and not clip_dir.exists()  # removed, nothing half-written
    assert set(st.curation) == {"sync_offset", "sync_confidence", "sync_distance"}


def test_curate_file_is_checked_with_the_fix(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("curate: {max_yaw: 45, max_camera_motion: 0.05}\n")
    c = load_curate(p)
    assert c.max_yaw == 45 and c.enabled and c.syncnet is None
    p.write_text("curate: {max_yaww: 45}\n")
    with pytest.raises(ConfigError, match="curate.max_yaww: unknown key; did you mean 'max_yaw'"):
        load_curate(p)
    p.write_text("curate: {syncnet: /nope/syncnet_v2.model}\n")
    with pytest.raises(ConfigError, match="curate.syncnet /nope/syncnet_v2.model: file not found"):
        load_curate(p)
    assert not CurateConfig().enabled  # every filter off by default


def test_prepare_reports_what_each_filter_removed(tmp_path, tmp_path_factory, random_syncnet):
    from tests.test_trainer_helpers import MEDIAPIPE, _headshot_inputs, shared_dir, whisper_path
    from trainer.data.clean import PrepareConfig
    from trainer.data.prepare import prepare_dataset, summary_table

    inputs = tmp_path / "in"
    _headshot_inputs(inputs)
    cfg = PrepareConfig(size=128, max_seconds=2.0, min_face_px=10,
                        curate=CurateConfig(syncnet=str(random_syncnet), min_sync_confidence=1e6, max_yaw=60))
    summary = prepare_dataset(inputs, tmp_path / "out", cfg, whisper_path(shared_dir(tmp_path_factory)), str(MEDIAPIPE), progress=False)
    assert summary["kept"] == 0 and summary["curation"]["removed"] == {"lip_sync": 2, "profile_view": 0, "camera_motion": 0}
    record = json.loads((tmp_path / "out" / "curation.json").read_text())
    assert record["removed"]["lip_sync"] == 2 and record["thresholds"]["min_sync_confidence"] == 1e6
    assert "curation removed: lip_sync 2, profile_view 0, camera_motion 0" in summary_table(summary)
    rows = [json.loads(x) for x in (tmp_path / "out" / "report.jsonl").read_text().splitlines()]
    assert all(r["reason"] == "lip_sync" and "yaw_median_deg" in r["curation"] for r in rows)  # every measure is kept
    assert not list((tmp_path / "out").glob("shard-*/*"))  # the removed clips left nothing behind


def test_prepare_refuses_a_bad_curate_file_before_any_clip(tmp_path, capsys):
    from trainer.cli import main

    bad = tmp_path / "curate.yaml"
    bad.write_text("curate: {max_yaw: 200}\n")
    assert main(["prepare", str(tmp_path), str(tmp_path / "out"), "--whisper", "nope.pt", "--curate", str(bad)]) == 2
    assert "curate.max_yaw 200.0: an angle in degrees between 0 and 180" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_halfbody_prepare_measures_camera_shake_outside_the_person(tmp_path, tmp_path_factory):
    from tests.test_trainer_helpers import MEDIAPIPE, FakeDWPose, halfbody_video, shared_dir, whisper_path
    from trainer.data.clean import PrepareConfig
    from trainer.data.prepare import prepare_dataset

    halfbody_video(tmp_path / "in", frames=24)  # the whole picture shifts 0, 1, 2 px, 0, 1, 2 px...: a shaking camera
    cfg = PrepareConfig(kind="halfbody", size=128, min_face_px=10, num_shards=1, curate=CurateConfig(max_camera_motion=0.01, max_yaw=60))
    s = prepare_dataset(tmp_path / "in", tmp_path / "ds", cfg, whisper_path(shared_dir(tmp_path_factory)), landmarker_model=MEDIAPIPE,
                        pose_detector=FakeDWPose(), progress=False)
    (row,) = s["rows"]
    assert row["reason"] == "camera_motion" and row["curation"]["camera_motion"] > 0.01 and s["curation"]["removed"]["camera_motion"] == 1
    assert row["curation"]["yaw_median_deg"] < 60  # the face mesh of the half-body clip is measured too
