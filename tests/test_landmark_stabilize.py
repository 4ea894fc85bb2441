"""``--stabilize`` for the V1 driving landmarks (echomimic_lib.landmarks.stabilize): the shake goes, lip sync and
blinks stay; wired into animate's landmark modes, ``echomimic landmarks`` and the Landmark Extractor node.
Real MediaPipe model on a cut of the shared driving video (speech in its first half, a blink near its end)."""
import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.evaluate.face import face_scale
from echomimic_lib.evaluate.stability import landmark_jitter
from echomimic_lib.evaluate.sync import mouth_opening
from echomimic_lib.landmarks.stabilize import point_groups, stabilize_landmarks
from echomimic_lib.temporal import STABILIZE_LEVELS
from echomimic_lib.temporal.keypoints import shake

MP = "face_landmarker_v2_with_blendshapes.task"
CUT = slice(40, 240)  # 200 frames at 24 fps: speech (about 48..160) and a blink (223)
LEVELS = [lv for lv in STABILIZE_LEVELS if lv != "off"]


@pytest.fixture(scope="module")
def video(shared_data):
    from echomimic_lib.io.video_io import read_video

    return read_video(shared_data / "video" / "driving_a.mp4", with_audio=False)


@pytest.fixture(scope="module")
def raw(video, shared_data):
    from echomimic_lib.landmarks import extract_driving_landmarks

    seq = extract_driving_landmarks(video.frames[CUT], src_fps=video.fps, model_path=shared_data / "mediapipe" / MP)
    assert seq.valid.all() and seq.fps == 24
    return seq


@pytest.fixture(scope="module")
def steadied(raw):
    return {lv: stabilize_landmarks(raw, lv) for lv in LEVELS}


def _px(seq):
    return seq.pixels((512, 512))


def _eye_opening(px):
    gap = np.mean([np.linalg.norm(px[:, a] - px[:, b], axis=-1) for a, b in ((159, 145), (386, 374))], axis=0)
    return gap / face_scale(px)


def _lag(a, b, max_lag=5):
    a, b = a - a.mean(), b - b.mean()
    return max(range(-max_lag, max_lag + 1), key=lambda k: float(np.dot(a[max(0, k):len(a) + min(0, k)],
                                                                        b[max(0, -k):len(b) - max(0, k)])))


def test_off_is_the_input_itself_and_unknown_levels_are_named(raw):
    assert stabilize_landmarks(raw, "off") is raw
    with pytest.raises(EchoMimicError, match="use one of off, light, medium, strong"):
        stabilize_landmarks(raw, "max")


def test_every_point_is_in_one_group_with_lips_and_eyes_responsive():
    groups = point_groups(478)
    every = np.concatenate(list(groups.values()))
    assert sorted(every) == list(range(478))
    assert {13, 14, 61, 291} <= set(groups["mouth"]) and {159, 145, 468, 473} <= set(groups["eyes"])
    assert {152, 234, 4} <= set(groups["rigid"])  # chin, face outline, nose tip


def test_the_shake_drops_and_more_with_each_level(raw, steadied):
    jr, sr = landmark_jitter(_px(raw)), shake(_px(raw))
    js = {lv: landmark_jitter(_px(s)) for lv, s in steadied.items()}
    for part in ("face_oval", "nose"):
        assert js["medium"][part] < 0.5 * jr[part] and js["strong"][part] < 0.3 * jr[part], (part, jr, js)
    assert js["strong"]["all"] < js["medium"]["all"] < js["light"]["all"] < 0.7 * jr["all"]
    assert shake(_px(steadied["light"])) > shake(_px(steadied["medium"])) > shake(_px(steadied["strong"]))
    assert shake(_px(steadied["strong"])) < 0.3 * sr  # head motion included: what the drawing shows
    assert js["strong"]["mouth"] < jr["mouth"] and js["strong"]["left_eye"] < jr["left_eye"]


def test_lip_sync_and_blinks_are_kept_at_every_level(raw, steadied):
    mr, er = mouth_opening(_px(raw)), _eye_opening(_px(raw))
    assert mr.max() > 10 * np.median(mr[-40:])  # the cut does have speech
    blink = int(np.argmin(er[150:])) + 150
    assert er[blink] < 0.5 * np.median(er)  # and a blink
    for lv, s in steadied.items():
        ms, es = mouth_opening(_px(s)), _eye_opening(_px(s))
        corr = np.corrcoef(mr, ms)[0, 1]
        assert corr >= (0.99 if lv == "light" else 0.95), (lv, corr)
        assert _lag(mr, ms) == 0 and 0.95 < ms.std() / mr.std() <= 1.01, lv
        depth = (np.median(es) - es[blink - 1:blink + 2].min()) / (np.median(er) - er[blink])
        assert depth > 0.9, (lv, depth)


def test_shapes_and_fields_kept_mesh_and_pose_steadied_too(raw, steadied):
    s = steadied["strong"]
    for k in ("lmks", "lmks3d", "trans_mat", "blendshapes", "valid", "face_counts"):
        assert getattr(s, k).shape == getattr(raw, k).shape, k
    np.testing.assert_array_equal(s.blendshapes, raw.blendshapes)
    assert (s.fps, s.policy, s.image_size, s.blendshape_names) == (raw.fps, raw.policy, raw.image_size, raw.blendshape_names)
    assert shake(s.lmks3d) < 0.7 * shake(raw.lmks3d)
    assert shake(s.trans_mat[:, :3, 3][:, None]) < 0.5 * shake(raw.trans_mat[:, :3, 3][:, None])
    np.testing.assert_array_equal(s.trans_mat[:, 3], raw.trans_mat[:, 3])
    rot = s.trans_mat[:, :3, :3]  # still (nearly) a scaled rotation
    gram = rot @ rot.transpose(0, 2, 1) / (np.linalg.det(rot) ** (2 / 3))[:, None, None]
    assert np.abs(gram - np.eye(3)).max() < 1e-3
    disp = np.linalg.norm(_px(s) - _px(raw), axis=-1)
    assert 0.2 < disp.mean() < 3 and np.percentile(disp, 95) < 8  # px at 512: steadier, not elsewhere


def test_frames_without_a_face_are_left_as_the_policy_filled_them(raw):
    from dataclasses import replace

    valid = raw.valid.copy()
    valid[[20, 21, 90]] = False
    valid[120:140] = False  # a long gap: the filter restarts after it
    seq = replace(raw, valid=valid)
    s = stabilize_landmarks(seq, "strong")
    for k in ("lmks", "lmks3d", "trans_mat"):
        np.testing.assert_array_equal(getattr(s, k)[~valid], getattr(raw, k)[~valid], err_msg=k)
        assert not np.allclose(getattr(s, k)[valid], getattr(raw, k)[valid]), k
    np.testing.assert_array_equal(s.valid, valid)


def test_pixel_only_sequences_are_steadied_too(raw):
    from echomimic_lib.landmarks.sequence import LandmarkSequence

    px = LandmarkSequence.from_pixels(_px(raw)[:, :, :2])  # as a V1 .pkl folder loads: no mesh, pose or fps
    s = stabilize_landmarks(px, "medium", fps=24)
    assert s.lmks3d is None and shake(_px(s)) < 0.5 * shake(_px(px))


# ---- wiring -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def short(tmp_path_factory, video, shared_data):
    """12 frames of the driving video as an mp4, and the shared model and portrait."""
    import av

    d = tmp_path_factory.mktemp("stab")
    path = d / "drive.mp4"
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=24)
    s.width = s.height = 256
    s.pix_fmt = "yuv420p"
    import cv2

    for f in video.frames[100:112]:
        for p in s.encode(av.VideoFrame.from_ndarray(cv2.resize(f, (256, 256)), format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return {"dir": d, "video": path, "mp": shared_data / "mediapipe" / MP, "ref": shared_data / "images" / "portrait_b.png",
            "pkl": shared_data / "v1_pose_pkl"}


def _conditions(short, landmarks, stabilize, mode="v1-landmarks", n=12):
    from echomimic_lib.jobs.animate import AnimateRequest, prepare_condition
    from echomimic_lib.jobs.reference_input import read_reference
    from echomimic_lib.modes import get_mode
    from echomimic_lib.pipeline import settings_for

    req = AnimateRequest(reference=str(short["ref"]), audio=None, output="x.mp4", mode=mode, landmarks=str(landmarks),
                         mediapipe_model=str(short["mp"]), download=False, stabilize=stabilize)
    c = prepare_condition(get_mode(mode), req, read_reference(req.reference), n, settings_for(mode, "normal", width=128,
                                                                                              height=128))
    return c.condition.render(range(c.condition.num_frames))


def test_animate_draws_steadier_conditions_from_a_video_a_saved_file_and_a_pkl_folder(short):
    from echomimic_lib.cli import main as cli

    off, strong = _conditions(short, short["video"], "off"), _conditions(short, short["video"], "strong")
    assert np.abs(off.astype(int) - strong.astype(int)).mean() > 0.05
    # a saved file: steadied at animate time, or saved steadied by `echomimic landmarks --stabilize`
    raw_file, steady_file = short["dir"] / "raw.npz", short["dir"] / "steady.npz"
    for path, level in ((raw_file, "off"), (steady_file, "strong")):
        assert cli(["landmarks", str(short["video"]), "-o", str(path), "--stabilize", level, "--mediapipe-model",
                    str(short["mp"]), "--offline", "-q"]) == 0
    np.testing.assert_array_equal(_conditions(short, raw_file, "off"), off)  # off: the conditions as before
    np.testing.assert_array_equal(_conditions(short, raw_file, "strong"), strong)
    np.testing.assert_array_equal(_conditions(short, steady_file, "off"), strong)
    # the audio + selected landmarks mode too, and the V1 .pkl folder
    a = _conditions(short, short["video"], "strong", "v1-audio+landmarks")
    assert not np.array_equal(a, _conditions(short, short["video"], "off", "v1-audio+landmarks"))
    p_off, p_strong = _conditions(short, short["pkl"], "off", n=24), _conditions(short, short["pkl"], "strong", n=24)
    assert not np.array_equal(p_off, p_strong) and p_strong.max() > 0


def test_landmarks_command_refuses_an_unknown_level_before_mediapipe(short, capsys):
    from echomimic_lib.jobs.landmarks_extract import LandmarksRequest, check

    with pytest.raises(EchoMimicError, match="--stabilize 'max': use one of off, light"):
        check(LandmarksRequest(video=str(short["video"]), output=str(short["dir"] / "x.npz"), stabilize="max",
                               mediapipe_model=str(short["mp"]), download=False))
    assert not (short["dir"] / "x.npz").exists()


def test_the_landmark_extractor_node_has_an_optional_stabilize_input_default_off(short, monkeypatch):
    from tests._pack import load_pack, sub

    node = load_pack().NODE_CLASS_MAPPINGS["EchoMimicLandmarkExtractor"]
    spec = node.INPUT_TYPES()
    assert "stabilize" not in spec["required"]
    levels, opts = spec["optional"]["stabilize"]
    assert list(levels) == list(STABILIZE_LEVELS) and opts["default"] == "off"
    from echomimic_lib.io.video_io import read_video
    from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor

    mod = sub("nodes.landmarks")
    monkeypatch.setattr(mod.detectors, "face_landmarker", lambda download=False: FaceLandmarkExtractor(model_path=short["mp"]))
    frames = read_video(short["video"], with_audio=False).frames[:8].astype(np.float32) / 255.0
    import torch

    images = torch.from_numpy(frames)
    off = node().execute(images, 24.0, "center square (V1)", "interpolate", 0, False)[0]
    again = node().execute(images, 24.0, "center square (V1)", "interpolate", 0, False, stabilize="off")[0]
    strong = node().execute(images, 24.0, "center square (V1)", "interpolate", 0, False, stabilize="strong")[0]
    np.testing.assert_array_equal(off.pixels, again.pixels)
    assert np.abs(off.pixels - strong.pixels).max() > 0.05 and strong.sequence.fps == 24.0
    with pytest.raises(Exception, match=r"stabilize: 'max' is not one of its choices \(off, light, medium, strong\)"):
        node().execute(images, 24.0, "center square (V1)", "interpolate", 0, False, stabilize="max")
