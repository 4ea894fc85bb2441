"""Landmarks without running MediaPipe: parts, drawing, files, V1 preprocessing, motion sync,
face geometry, model resolution/download (network monkeypatched)."""
from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError, MissingWeightsError, UnsafeFileError
from echomimic_lib.landmarks import parts as P
from echomimic_lib.landmarks.drawing import draw_landmark_sequence, draw_landmarks
from echomimic_lib.landmarks.io import load_pkl_folder, load_pkl_frame, load_sequence, save_sequence
from echomimic_lib.landmarks.motion_sync import apply_affine, estimate_affine, motion_sync, project_points
from echomimic_lib.landmarks.preprocess import select_face_box, v1_face_mask_and_crop
from echomimic_lib.landmarks.sequence import LandmarkSequence

PARITY = Path(os.environ.get("ECHOMIMIC_PARITY_DIR", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parity"))
SYNC_INPUTS = PARITY / "motion_sync" / "inputs.safetensors"


@pytest.fixture(scope="module")
def demo_frame(shared_data) -> np.ndarray:
    return load_pkl_frame(shared_data / "v1_pose_pkl" / "0.pkl")


@pytest.fixture(scope="module")
def sync_inputs():
    if not SYNC_INPUTS.is_file():
        pytest.skip(f"motion_sync fixture not found at {SYNC_INPUTS}")
    from safetensors.numpy import load_file

    return load_file(str(SYNC_INPUTS))


def _colour_pixels(img: np.ndarray, colour) -> int:
    return int(np.all(img == np.array(colour, np.uint8), axis=-1).sum())


# ---------------- parts ----------------

def test_edge_lists_match_mediapipe_connections():
    fl = pytest.importorskip("mediapipe.tasks.python.vision.face_landmarker")
    c = fl.FaceLandmarksConnections
    for ours, theirs in [(P.LEFT_EYE, c.FACE_LANDMARKS_LEFT_EYE), (P.RIGHT_EYE, c.FACE_LANDMARKS_RIGHT_EYE),
                         (P.LEFT_EYEBROW, c.FACE_LANDMARKS_LEFT_EYEBROW), (P.RIGHT_EYEBROW, c.FACE_LANDMARKS_RIGHT_EYEBROW),
                         (P.LEFT_IRIS, c.FACE_LANDMARKS_LEFT_IRIS), (P.RIGHT_IRIS, c.FACE_LANDMARKS_RIGHT_IRIS),
                         (P.FACE_OVAL, c.FACE_LANDMARKS_FACE_OVAL)]:
        assert set(ours) == {(e.start, e.end) for e in theirs}


def test_part_selection():
    assert P.normalize_parts("pose") == {"eyes", "brows", "pupils", "nose"}
    assert P.normalize_parts("landmarks") == {"eyes", "brows", "pupils", "nose", "mouth"}
    assert P.normalize_parts("eyes, lips,eyebrows") == {"eyes", "mouth", "brows"}
    assert P.normalize_parts(["face_oval", "iris"]) == {"face_oval", "iris"}
    with pytest.raises(ValueError, match="unknown landmark part 'ears'"):
        P.normalize_parts(["eyes", "ears"])
    assert len(P.LIP_CHAINS) == 8 and all(len(c) == 5 for c in P.LIP_CHAINS)
    assert P.MOTION_PARTS["left_eye"][-1] == 473 and P.MOTION_PARTS["right_eye"][-1] == 468


# ---------------- drawing ----------------

def test_selected_landmarks_default_has_no_mouth(demo_frame):
    pose = draw_landmarks(demo_frame, (512, 512))  # V1 audio + selected landmarks default
    full = draw_landmarks(demo_frame, (512, 512), parts="landmarks")
    for colour in P.LIP_COLORS:
        assert _colour_pixels(pose, colour) == 0
    assert sum(_colour_pixels(full, c) for c in P.LIP_COLORS) > 50
    for colour in (P.COLOR_LEFT_EYE, P.COLOR_RIGHT_EYE, P.COLOR_LEFT_EYEBROW, P.COLOR_RIGHT_EYEBROW):
        assert _colour_pixels(pose, colour) > 20
    # pupils and nose tip: 6x6 squares at the right place
    x, y = int(demo_frame[4, 0]), int(demo_frame[4, 1])
    assert (pose[y - 3:y + 3, x - 3:x + 3] == np.array(P.COLOR_NOSE, np.uint8)).all()


def test_each_part_alone_draws_only_its_colours(demo_frame):
    oval = draw_landmarks(demo_frame, parts=["face_oval"])
    assert _colour_pixels(oval, P.COLOR_HEAD) > 100 and _colour_pixels(oval, P.COLOR_LEFT_EYE) == 0
    iris = draw_landmarks(demo_frame, parts=["iris"])
    assert _colour_pixels(iris, P.COLOR_LEFT_IRIS) > 10 and _colour_pixels(iris, P.COLOR_NOSE) == 0
    assert not draw_landmarks(demo_frame, parts=[]).any()
    assert not draw_landmarks(None, (96, 64)).any() and draw_landmarks(None, (96, 64)).shape == (64, 96, 3)


def test_edges_with_an_endpoint_outside_are_skipped(demo_frame):
    base = draw_landmarks(demo_frame, parts=["eyes"])
    moved = demo_frame.copy()
    moved[33, 0] = -5.0  # right-eye corner outside the image: its two edges disappear
    out = draw_landmarks(moved, parts=["eyes"])
    assert _colour_pixels(out, P.COLOR_RIGHT_EYE) < _colour_pixels(base, P.COLOR_RIGHT_EYE)
    assert _colour_pixels(out, P.COLOR_LEFT_EYE) == _colour_pixels(base, P.COLOR_LEFT_EYE)
    far = demo_frame.copy()
    far[:, 0] += 10_000  # everything outside: nothing drawn, no error
    assert not draw_landmarks(far, parts="all").any()


def test_non_square_output_and_coordinate_frames(demo_frame):
    img = draw_landmarks(demo_frame, (96, 64), coord_size=(512, 512))
    assert img.shape == (64, 96, 3) and img.any()
    normed = draw_landmarks(demo_frame / 512.0, (96, 64), normed=True)
    assert np.array_equal(img, normed)
    seq = draw_landmark_sequence(np.stack([demo_frame, demo_frame]), (128, 256), coord_size=(512, 512))
    assert seq.shape == (2, 256, 128, 3) and seq.dtype == np.uint8
    with pytest.raises(EchoMimicError, match="need landmark"):
        draw_landmarks(demo_frame[:468], parts="pose")
    with pytest.raises(EchoMimicError):
        draw_landmarks(demo_frame, (0, 64))


# ---------------- files ----------------

def test_demo_pkl_frames_load(shared_data):
    seq = load_pkl_folder(shared_data / "v1_pose_pkl")
    n = len(list((shared_data / "v1_pose_pkl").glob("*.pkl")))
    assert len(seq) == n and seq.lmks.shape == (n, 478, 3)
    px = seq.pixels((512, 512))
    direct = load_pkl_frame(shared_data / "v1_pose_pkl" / "57.pkl")
    assert np.allclose(px[57], direct[:, :2])  # numeric, not lexicographic, order
    assert 100 < px[0, :, 0].min() < px[0, :, 0].max() < 400 and 100 < px[0, :, 1].min() < px[0, :, 1].max() < 480


def test_pkl_folder_numeric_order_and_dict_frames(tmp_path):
    for i in range(12):
        arr = np.full((478, 3), float(i))
        obj = {"lmks": arr[:, :2]} if i % 2 else arr[:, :2]
        (tmp_path / f"{i}.pkl").write_bytes(pickle.dumps(obj))
    seq = load_pkl_folder(tmp_path)
    assert [int(round(v)) for v in seq.pixels()[:, 0, 0]] == list(range(12))
    with pytest.raises(EchoMimicError, match="not found"):
        load_pkl_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EchoMimicError, match="no .pkl"):
        load_pkl_folder(tmp_path / "empty")
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(np.zeros((478, 3))))
    with pytest.raises(EchoMimicError, match="named by frame number"):
        load_pkl_folder(tmp_path)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_malicious_pkl_is_refused(tmp_path):
    marker = tmp_path / "pwned.txt"
    folder = tmp_path / "poses"
    folder.mkdir()
    (folder / "0.pkl").write_bytes(pickle.dumps(np.zeros((478, 3))))
    (folder / "1.pkl").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(UnsafeFileError, match="system"):
        load_pkl_folder(folder)
    assert not marker.exists()


def test_sequence_save_reload_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    seq = LandmarkSequence(lmks=rng.random((5, 478, 3)), lmks3d=rng.random((5, 468, 3)), trans_mat=rng.random((5, 4, 4)),
                           blendshapes=rng.random((5, 52)).astype(np.float32), blendshape_names=[f"b{i}" for i in range(52)],
                           image_size=(640, 480), valid=np.array([1, 0, 1, 1, 1], bool), face_counts=np.array([1, 0, 1, 1, 1]),
                           policy="hold", fps=25.0)
    for name in ("seq.npz", "seq.json"):
        back = load_sequence(save_sequence(tmp_path / name, seq))
        for k in ("lmks", "lmks3d", "trans_mat", "blendshapes", "valid", "face_counts"):
            assert np.array_equal(getattr(back, k), getattr(seq, k)), (name, k)
        assert back.image_size == (640, 480) and back.policy == "hold" and back.fps == 25.0 and back.bad_frames == [1]
        assert back.blendshape_names == seq.blendshape_names
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(EchoMimicError):
        load_sequence(tmp_path / "other.npz")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    shutil.move(tmp_path / "obj.npy", tmp_path / "obj.npz")
    with pytest.raises(EchoMimicError):
        load_sequence(tmp_path / "obj.npz")
    with pytest.raises(EchoMimicError, match=".npz or .json"):
        save_sequence(tmp_path / "seq.pkl", seq)


def test_sequence_take_and_report():
    seq = LandmarkSequence(lmks=np.zeros((4, 478, 3)), valid=np.array([1, 0, 1, 0], bool),
                           face_counts=np.array([1, 0, 1, 2]), policy="hold")
    assert "no face in 1 (frames 1)" in seq.report() and "more than one face in 1 (frames 3)" in seq.report()
    assert len(seq.take([0, 0, 2, 3, 3])) == 5
    with pytest.raises(EchoMimicError):
        seq.take([4])


# ---------------- V1 audio-mode preprocessing ----------------

def test_select_face_box_rules():
    boxes = [[0, 0, 10, 10], [0, 0, 50, 50], [0, 0, 100, 100]]
    assert select_face_box(boxes, [0.9, 0.95, 0.5]).tolist() == [0, 0, 50, 50]   # prob > 0.8, then largest
    assert select_face_box(boxes, [0.8, 0.1, 0.3]) is None                     # strictly greater than 0.8
    assert select_face_box(np.zeros((0, 4)), []) is None


@pytest.mark.parametrize("hw,box,out", [((300, 1000), (430, 60, 560, 220), (512, 512)),
                                        ((2400, 1800), (700, 800, 1100, 1300), (384, 512)),
                                        ((80, 70), (20, 20, 50, 55), (256, 256))])
def test_mask_and_crop_geometry(hw, box, out):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
    r = v1_face_mask_and_crop(img, box, *out)
    assert r.image.shape == (out[1], out[0], 3) and r.mask.shape == (out[1], out[0])
    x0, y0, x1, y1 = r.square
    assert x1 - x0 == y1 - y0 > 0 and 0 <= x0 and 0 <= y0 and x1 <= hw[1] and y1 <= hw[0]
    assert r.mask.max() == 255
    assert r.mask_tensor().shape == (1, 1, 1, out[1], out[0])


def test_mask_near_the_border_is_clipped_not_wrapped():
    img = np.zeros((400, 400, 3), np.uint8)
    r = v1_face_mask_and_crop(img, (5, 3, 200, 190))  # dilation goes above/left of the image
    assert r.mask[:, :].max() == 255 and r.mask[0, 0] == 255  # V1's slice would wrap to an empty mask


def test_no_face_and_bad_images():
    img = np.full((300, 200, 3), 128, np.uint8)
    with pytest.raises(EchoMimicError, match="no face found"):
        v1_face_mask_and_crop(img, None)
    whole = v1_face_mask_and_crop(img, None, 320, 256, no_face="whole_image")
    assert whole.image.shape == (256, 320, 3) and (whole.mask == 255).all()
    with pytest.raises(EchoMimicError, match="too small"):
        v1_face_mask_and_crop(np.zeros((40, 300, 3), np.uint8), (1, 1, 20, 20))
    gray = v1_face_mask_and_crop(np.full((300, 200), 77, np.uint8), (50, 50, 150, 150))
    rgba = v1_face_mask_and_crop(np.full((300, 200, 4), 77, np.uint8), (50, 50, 150, 150))
    assert gray.image.shape == rgba.image.shape == (512, 512, 3) and (gray.image == 77).all()
    with pytest.raises(EchoMimicError, match="empty"):
        v1_face_mask_and_crop(img, (50, 50, 40, 150))


# ---------------- motion sync ----------------

def test_affine_fit_recovers_a_known_transform():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(40, 3))
    m = np.eye(4)
    m[:3, :3] = rng.normal(size=(3, 3)) + 2 * np.eye(3)
    m[:3, 3] = [1.0, -2.0, 0.5]
    dst = apply_affine(m, src)
    assert np.allclose(estimate_affine(src, dst), m, atol=1e-9)
    with pytest.raises(EchoMimicError):
        estimate_affine(np.ones((10, 3)), dst[:10])


def _sync(x, mode, n=None, **kw):
    sl = slice(None) if n is None else slice(0, n)
    return motion_sync(x["driver_lmks"][sl], x["driver_lmks3d"][sl], x["driver_trans_mat"][sl],
                       x["reference_lmks"], x["reference_lmks3d"], x["reference_trans_mat"], mode=mode, **kw)


def test_motion_sync_identity_when_driver_is_reference(sync_inputs):
    x = sync_inputs
    ref_px = project_points(x["reference_lmks3d"], x["reference_trans_mat"])
    for mode in ("reference", "paper"):
        out = motion_sync(np.repeat(x["reference_lmks"][None], 4, 0), np.repeat(x["reference_lmks3d"][None], 4, 0),
                          np.repeat(x["reference_trans_mat"][None], 4, 0), x["reference_lmks"], x["reference_lmks3d"],
                          x["reference_trans_mat"], mode=mode)
        assert out.shape == (4, 478, 2)
        assert np.abs(out[:, :468] - ref_px[None]).max() < 1e-6
        # and it lands on the reference's own landmarks (pose + mesh are consistent)
        assert np.abs(out[0, :468] - x["reference_lmks"][:468, :2] * 512).max() < 0.1
        assert np.abs(out[0] - x["reference_lmks"][:, :2] * 512).max() < 1.0  # iris: lifted by an affine fit


def test_paper_mode_differs_from_reference_mode(sync_inputs):
    before = {k: v.copy() for k, v in sync_inputs.items()}
    ref = _sync(sync_inputs, "reference")
    paper = _sync(sync_inputs, "paper")
    assert all(np.array_equal(before[k], sync_inputs[k]) for k in before)  # inputs untouched
    in_parts = sorted({i for v in P.MOTION_PARTS.values() for i in v})
    others = np.setdiff1d(np.arange(468), in_parts)
    assert np.abs(paper[:, others] - ref[:, others]).max() > 1.0   # outline takes the reference shape
    assert np.abs(paper[:, in_parts] - ref[:, in_parts]).max() < 2.0  # parts agree closely
    half = _sync(sync_inputs, "paper", part_strength=0.0)
    assert not np.allclose(half, paper)
    with pytest.raises(EchoMimicError, match="unknown motion-sync mode"):
        _sync(sync_inputs, "global")


def test_face_geometry_reproduces_mediapipe_mesh(sync_inputs, shared_data):
    from echomimic_lib.landmarks.geometry import face_geometry, load_metadata

    meta = load_metadata(str(shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"))
    assert meta.canonical.shape == (468, 3) and (meta.weights > 0).sum() > 10
    for i in (0, len(sync_inputs["driver_lmks"]) - 1):
        mesh, pose = face_geometry(sync_inputs["driver_lmks"][i], (512, 512), meta)
        assert np.abs(mesh - sync_inputs["driver_lmks3d"][i]).max() < 1e-3
        assert np.abs(pose - sync_inputs["driver_trans_mat"][i]).max() < 1e-3


# ---------------- conditions + retiming ----------------

def test_pkl_folder_conditions_follow_the_length_policy(shared_data):
    from echomimic_lib.landmarks.conditions import conditions_from_pkl_folder

    n = len(list((shared_data / "v1_pose_pkl").glob("*.pkl")))
    imgs = conditions_from_pkl_folder(shared_data / "v1_pose_pkl", n + 3, size=(128, 128))
    assert imgs.shape == (n + 3, 128, 128, 3)
    assert np.array_equal(imgs[n], imgs[n - 2]) and np.array_equal(imgs[n + 2], imgs[n - 4])  # ping-pong
    with pytest.raises(EchoMimicError, match="needed"):
        conditions_from_pkl_folder(shared_data / "v1_pose_pkl", n + 3, size=(64, 64), retime_policy="fail")


# ---------------- model files ----------------

def test_resolve_model_from_folder_and_missing(tmp_path, shared_data):
    from echomimic_lib.landmarks.mp_models import resolve_model

    assert resolve_model("face_landmarker", models_dir=shared_data).name == "face_landmarker_v2_with_blendshapes.task"
    assert resolve_model("face_detector", models_dir=[tmp_path, shared_data]).name == "blaze_face_short_range.tflite"
    with pytest.raises(MissingWeightsError, match="looked at") as err:
        resolve_model("face_landmarker", models_dir=tmp_path)
    assert err.value.missing
    (tmp_path / "face_landmarker.task").write_bytes(b"not a model" * 200)
    with pytest.raises(EchoMimicError, match="not a valid"):
        resolve_model("face_landmarker", model_path=tmp_path / "face_landmarker.task")


def test_download_is_atomic_and_offline(tmp_path, shared_data, monkeypatch):
    import urllib.request

    from echomimic_lib.landmarks import mp_models

    payload = (shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task").read_bytes()
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    dest = tmp_path / "models"
    path = mp_models.resolve_model("face_landmarker", models_dir=dest, download=True)
    assert path == dest / "face_landmarker.task" and path.read_bytes() == payload
    assert calls == [mp_models.MODELS["face_landmarker"]["url"]] and calls[0].startswith("https://storage.googleapis.com/")
    assert mp_models.resolve_model("face_landmarker", models_dir=dest, download=True) == path and len(calls) == 1
    assert [p.name for p in dest.iterdir()] == ["face_landmarker.task"]

    def broken(url, timeout=None):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", broken)
    with pytest.raises(EchoMimicError, match="download it by hand"):
        mp_models.download_model("face_detector", dest)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"<html>error</html>" * 100))
    with pytest.raises(EchoMimicError, match="not a valid"):
        mp_models.download_model("face_detector", dest)
    assert [p.name for p in dest.iterdir()] == ["face_landmarker.task"]  # no partial files left
