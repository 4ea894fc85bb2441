"""Reference preparation shared by the CLI and the node (echomimic_lib.frames.reference) and the CLI's parity with the nodes:
the V1 landmark modes crop the face like the V1 audio mode, V2 offers the half-body crop and the pose alignment,
every crop reports its geometry, ``--parts ""`` means no parts, and ``echomimic animate --paste-back`` writes the
full-size picture."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from echomimic_lib.jobs.animate import AnimateRequest, prepare_condition
from echomimic_lib.modes import get_mode
from echomimic_lib.pipeline import settings_for
from echomimic_lib.frames.reference import prepare_reference
from echomimic_lib.io.video_io import probe
from tests.test_workflows_run import _fake_person


@pytest.fixture(scope="module")
def portrait(shared_data):
    return cv2.cvtColor(cv2.imread(str(shared_data / "images" / "portrait_a.png")), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def mp_model(shared_data):
    return str(shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task")


def _req(**kw):
    return AnimateRequest(reference="unused.png", audio="unused.wav", output="unused.mp4", **kw)


def test_v1_landmark_modes_crop_the_face_like_the_audio_mode(portrait, mp_model, shared_data):
    s = settings_for("v1-audio", width=128, height=128)
    audio = prepare_condition(get_mode("v1-audio"), _req(mediapipe_model=mp_model), portrait, 8, s)
    lm = prepare_condition(get_mode("v1-audio+landmarks"), _req(mediapipe_model=mp_model, mode="v1-audio+landmarks",
                           landmarks=str(shared_data / "v1_pose_pkl")), portrait, 8, s)
    assert np.array_equal(audio.reference, lm.reference) and lm.crop == audio.crop and lm.crop.kind == "v1_face"
    x0, y0, x1, y1 = lm.crop.box
    assert x1 - x0 == y1 - y0 < portrait.shape[1]  # a square face crop, not the whole picture squashed
    assert lm.crop.face_hull is not None and lm.crop.face_box is not None
    whole = prepare_condition(get_mode("v1-audio+landmarks"), _req(face_crop=False, mode="v1-audio+landmarks",
                              landmarks=str(shared_data / "v1_pose_pkl")), portrait, 8, s)
    assert whole.crop.kind == "resize" and whole.crop.box == (0, 0, portrait.shape[1], portrait.shape[0])


def test_an_empty_parts_selection_draws_no_parts(mp_model, shared_data, portrait):
    s = settings_for("v1-audio+landmarks", width=64, height=64)
    kw = dict(mode="v1-audio+landmarks", landmarks=str(shared_data / "v1_pose_pkl"), face_crop=False)
    none = prepare_condition(get_mode("v1-audio+landmarks"), _req(parts="", **kw), portrait, 4, s).condition
    default = prepare_condition(get_mode("v1-audio+landmarks"), _req(**kw), portrait, 4, s).condition
    assert not none.render([0, 1]).any() and default.render([0, 1]).any()


def test_node_payload_empty_parts_mean_no_parts():
    from tests._pack import sub

    track = sub("nodes.payloads").LandmarkTrack(np.full((3, 478, 2), 256.0) + np.arange(478)[None, :, None] % 50,
                                                (512, 512), 24.0, parts=frozenset())
    assert not track.condition(3, 64, 64, 24.0, ("eyes", "mouth")).render([0, 1, 2]).any()
    track.parts = None  # unset: the model's default parts
    assert track.condition(3, 64, 64, 24.0, ("eyes", "mouth")).render([0, 1, 2]).any()


def test_v2_halfbody_crop_and_pose_alignment(shared_data, monkeypatch):
    import echomimic_lib.jobs.animate as animate

    half = cv2.cvtColor(cv2.imread(str(shared_data / "images" / "halfbody_0035.png")), cv2.COLOR_BGR2RGB)
    monkeypatch.setattr(animate, "_dwpose", lambda req: _fake_person)
    s = settings_for("v2-halfbody", width=128, height=128)
    pose = str(shared_data / "pose" / "fight")
    plain = prepare_condition(get_mode("v2"), _req(mode="v2", pose=pose), half, 6, s)
    cropped = prepare_condition(get_mode("v2"), _req(mode="v2", pose=pose, halfbody_crop=True, align_poses=True), half, 6, s)
    assert plain.crop.kind == "resize" and cropped.crop.kind == "v2_halfbody"
    direct = prepare_reference(half, "v2_halfbody", 128, 128, pose_detector=_fake_person)
    assert np.array_equal(cropped.reference, direct.image) and cropped.crop == direct.crop
    assert cropped.crop.box != (0, 0, 1024, 1024)
    moved, still = cropped.condition.render([0, 1]), plain.condition.render([0, 1])
    assert moved.shape == still.shape == (2, 128, 128, 3) and not np.array_equal(moved, still)  # hands moved onto the body


@pytest.mark.slow
def test_animate_paste_back_writes_the_full_size_picture(tiny_comfy_models, shared_data, tmp_path, mp_model):
    from echomimic_lib.cli import main as cli

    ref = tmp_path / "portrait.png"  # non-square and odd: the mp4 is padded to 302x366 (and says so)
    cv2.imwrite(str(ref), cv2.resize(cv2.imread(str(shared_data / "images" / "portrait_a.png")), (301, 365)))
    out = tmp_path / "full.mp4"
    rc = cli(["animate", "--reference", str(ref), "--audio", str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(out),
              "--paste-back", "--models", str(tiny_comfy_models / "echomimic"), "--mediapipe-model", mp_model,
              "--width", "64", "--height", "64", "--steps", "1", "--cfg", "1", "--length", "4", "--context-frames", "4",
              "--context-overlap", "0", "--offline", "-q"])
    assert rc == 0
    info = probe(out)
    assert (info["width"], info["height"]) == (302, 366) and info["frames"] == 4
