"""Landmark extraction with the real MediaPipe model on the shared test media."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError

pytest.importorskip("mediapipe")
cv2 = pytest.importorskip("cv2")

from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor  # noqa: E402
from echomimic_lib.io.video_io import read_video  # noqa: E402

PARITY = Path(os.environ.get("ECHOMIMIC_PARITY_DIR", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parity"))
IMAGES = ["portrait_a.png", "portrait_b.png", "halfbody_0035.png", "pose_demo_d.jpg"]
N_VIDEO = 24


def _rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return np.ascontiguousarray(img[:, :, ::-1])


@pytest.fixture(scope="module")
def extractor(shared_data):
    ex = FaceLandmarkExtractor(models_dir=shared_data / "mediapipe")
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def clip(shared_data):
    return read_video(shared_data / "video" / "driving_a.mp4", max_frames=N_VIDEO, with_audio=False)


@pytest.fixture(scope="module")
def portrait(shared_data):
    return _rgb(shared_data / "images" / "portrait_a.png")


def _check_face(seq, i=0):
    assert seq.lmks.shape[1:] == (478, 3) and seq.lmks3d.shape[1:] == (468, 3) and seq.trans_mat.shape[1:] == (4, 4)
    xy = seq.lmks[i, :, :2]
    assert xy.min() > -0.05 and xy.max() < 1.05
    ext = xy.max(axis=0) - xy.min(axis=0)
    assert (ext > 0.05).all()  # a real face, not a collapsed point set
    t = seq.trans_mat[i]
    assert np.allclose(t[3], [0, 0, 0, 1])
    r = t[:3, :3] / np.linalg.norm(t[:3, 0])
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-3) and np.linalg.det(r) > 0
    assert -200 < t[2, 3] < -5  # face in front of the camera (cm)
    mesh = seq.lmks3d[i]
    assert 8 < mesh[:, 0].max() - mesh[:, 0].min() < 25  # canonical metric face width, cm
    bs = seq.blendshapes[i]
    assert bs.shape == (52,) and bs.min() >= 0 and bs.max() <= 1 and seq.blendshape_names[0] == "_neutral"


@pytest.mark.parametrize("name", IMAGES)
def test_face_found_on_images(extractor, shared_data, name):
    img = _rgb(shared_data / "images" / name)
    seq = extractor.extract(img)
    assert len(seq) == 1 and seq.bad_frames == [] and seq.image_size == (img.shape[1], img.shape[0])
    _check_face(seq)


def test_mesh_is_consistent_with_the_tasks_pose(extractor, portrait):
    from echomimic_lib.landmarks.geometry import face_geometry
    from echomimic_lib.landmarks.motion_sync import project_points

    face = extractor.detect(portrait)[0]
    _, pose = face_geometry(face["lmks"], (portrait.shape[1], portrait.shape[0]), extractor._meta)
    assert np.abs(pose - face["trans_mat"]).max() < 1e-3  # our geometry == MediaPipe's matrix (float32)
    square = np.ascontiguousarray(cv2.resize(portrait, (512, 512)))
    f = extractor.detect(square)[0]
    px = project_points(f["lmks3d"], f["trans_mat"], 512)
    assert np.abs(px - f["lmks"][:468, :2] * 512).max() < 0.5  # mesh + pose re-project onto the landmarks


def test_video_extraction_and_motion_sync_match_the_reference(extractor, clip, portrait):
    seq = extractor.extract(clip)
    assert len(seq) == N_VIDEO and seq.bad_frames == [] and seq.fps == clip.fps
    _check_face(seq, N_VIDEO - 1)
    inputs = PARITY / "motion_sync" / "inputs.safetensors"
    if not inputs.is_file():
        pytest.skip("motion_sync fixture not available")
    from safetensors.numpy import load_file

    from echomimic_lib.landmarks.motion_sync import motion_sync

    x = load_file(str(inputs))
    expected = load_file(str(PARITY / "motion_sync" / "expected.safetensors"))["projected_landmarks"]
    n = min(len(seq), len(x["driver_lmks"]))
    assert np.abs(seq.lmks[:n] - x["driver_lmks"][:n]).max() < 2e-3  # same frames as the fixture's driver
    ref = extractor.extract(np.ascontiguousarray(cv2.resize(portrait, (512, 512))))
    out = motion_sync(seq.lmks[:n], seq.lmks3d[:n], seq.trans_mat[:n], ref.lmks[0], ref.lmks3d[0], ref.trans_mat[0])
    assert np.abs(out - expected[:n]).max() < 0.5  # end to end vs the reference implementation, in px


def test_blank_frames_follow_the_policy(extractor, clip):
    frames = [f for f in clip.frames[:6]]
    blank = np.zeros_like(frames[0])
    frames[0] = frames[3] = blank
    with pytest.raises(EchoMimicError, match=r"no face: \[0, 3\]"):
        extractor.extract(frames, policy="fail")
    hold = extractor.extract(frames, policy="hold")
    assert hold.bad_frames == [0, 3] and list(hold.face_counts[[0, 3]]) == [0, 0]
    assert np.array_equal(hold.lmks[3], hold.lmks[2]) and np.array_equal(hold.lmks[0], hold.lmks[1])
    interp = extractor.extract(frames, policy="interpolate")
    assert np.allclose(interp.lmks[3], 0.5 * (interp.lmks[2] + interp.lmks[4]))
    r = interp.trans_mat[3][:3, :3]
    assert np.allclose(r @ r.T / (r[:, 0] @ r[:, 0]), np.eye(3), atol=1e-9)
    assert "no face in 2 (frames 0, 3)" in interp.report()


def test_bad_inputs(extractor, portrait, tmp_path):
    with pytest.raises(EchoMimicError, match="no single face"):
        extractor.extract(np.zeros((5, 128, 128, 3), np.uint8), policy="interpolate")  # video without faces
    with pytest.raises(EchoMimicError, match="no frames"):
        extractor.extract(np.zeros((0, 128, 128, 3), np.uint8))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(EchoMimicError, match="empty.mp4"):
        extractor.extract(empty)
    with pytest.raises(EchoMimicError, match="too small"):
        extractor.extract(np.zeros((48, 48, 3), np.uint8))
    with pytest.raises(EchoMimicError, match="bad-frame policy"):
        extractor.extract(portrait, policy="skip")
    small = np.ascontiguousarray(cv2.resize(portrait, (256, 256)))
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    assert extractor.extract(gray).bad_frames == []
    rgba = np.dstack([small, np.full(small.shape[:2], 255, np.uint8)])
    assert extractor.extract(rgba).bad_frames == []
    two = np.ascontiguousarray(np.concatenate([small, small], axis=1))
    with pytest.raises(EchoMimicError, match="several faces in 1"):
        extractor.extract(two)
    one = np.ascontiguousarray(np.concatenate([small, np.zeros_like(small)], axis=1))
    mixed = extractor.extract([one, two], policy="hold")
    assert mixed.bad_frames == [1] and mixed.face_counts.tolist() == [1, 2] and "more than one face" in mixed.report()


def test_v1_reference_preprocessing_on_a_real_portrait(shared_data, portrait):
    from echomimic_lib.landmarks.preprocess import prepare_v1_reference

    for provider in ("landmarks", "detector"):
        r = prepare_v1_reference(portrait, 512, 384, box_provider=provider, models_dir=shared_data / "mediapipe")
        assert r.image.shape == (384, 512, 3) and r.mask.shape == (384, 512)
        x0, y0, x1, y1 = r.box
        h, w = portrait.shape[:2]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and (x1 - x0) > 0.2 * w
        assert 0.1 < (r.mask > 127).mean() < 0.9
    with pytest.raises(EchoMimicError, match="no face found"):
        prepare_v1_reference(np.full((300, 400, 3), 90, np.uint8), models_dir=shared_data / "mediapipe")


def test_conditions_from_driving_video(extractor, clip, portrait):
    from echomimic_lib.landmarks.conditions import conditions_from_driving_video

    frames = clip.frames[:8]
    seen = []
    imgs, drv = conditions_from_driving_video(frames, portrait, 13, size=(256, 320), sync="reference", extractor=extractor,
                                              progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 8) for i in range(1, 9)]  # the command line's "driving landmarks" bar, frame by frame
    assert imgs.shape == (13, 320, 256, 3) and imgs.dtype == np.uint8 and len(drv) == 8
    assert all(img.any() for img in imgs) and np.array_equal(imgs[8], imgs[6])  # ping-pong past the end
    paper, _ = conditions_from_driving_video(frames, portrait, 4, size=(256, 320), sync="paper", parts="all",
                                             extractor=extractor)
    ref_all, _ = conditions_from_driving_video(frames, portrait, 4, size=(256, 320), sync="reference", parts="all",
                                               extractor=extractor)
    assert not np.array_equal(paper, ref_all)
    raw, _ = conditions_from_driving_video(frames, portrait, 4, sync=None, parts="landmarks", extractor=extractor)
    assert raw.shape == (4, 512, 512, 3)
    with pytest.raises(EchoMimicError, match="reference image"):
        conditions_from_driving_video(frames, np.zeros((256, 256, 3), np.uint8), 4, extractor=extractor)
