"""Alignment: the reference's half-body crop rule and the similarity fit of a sequence onto the reference."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.pose import (
    PoseSequence,
    align_reference_and_poses,
    align_reference_image,
    crop_image,
    crop_sequence,
    draw_hands,
    fit_image,
    fit_sequence_to_reference,
    halfbody_crop,
    load_released_folder,
    resize_and_pad_params,
    similarity_from_points,
)
from echomimic_lib.pose.drawing import map_draw_params


def make_person(face_top=0.2, shoulder_y=0.6, neck_x=0.5, frames=1, image_size=(1000, 800), jitter=0.0):
    """A full-image-normalised sequence: face landmarks from face_top down, shoulders at shoulder_y."""
    w, h = image_size
    body = np.full((frames, 18, 2), -1.0)
    score = np.zeros((frames, 18))
    for f in range(frames):
        dx = jitter * f
        body[f, 0] = (neck_x + dx, face_top + 0.12)  # nose
        body[f, 1] = (neck_x + dx, shoulder_y)  # neck
        body[f, 2] = (neck_x + dx - 0.1, shoulder_y)  # R shoulder (image left)
        body[f, 5] = (neck_x + dx + 0.1, shoulder_y)
        body[f, 3] = (neck_x + dx - 0.13, shoulder_y - 0.05)  # elbows above shoulders: bottom = shoulders
        body[f, 6] = (neck_x + dx + 0.13, shoulder_y - 0.05)
        score[f, [0, 1, 2, 3, 5, 6]] = 0.9
    faces = np.zeros((frames, 68, 2))
    faces[..., 0] = neck_x + np.linspace(-0.05, 0.05, 68)
    faces[..., 1] = face_top + np.linspace(0, 0.15, 68)
    hands = np.zeros((frames, 2, 21, 2))
    hands[..., 0] = neck_x + 0.2
    hands[..., 1] = shoulder_y - 0.02
    return PoseSequence(
        body=body, body_score=score, body_subset=np.where(score > 0.3, np.arange(18), -1), hands=hands, hands_score=np.ones((frames, 2, 21)),
        faces=faces, faces_score=np.ones((frames, 68)), draw_pose_params=np.tile([h, w, 0, h, 0, w], (frames, 1)), frame_ids=np.arange(frames),
        canvas_size=(w, h),
    )


def test_halfbody_crop_rule():
    seq = make_person()
    crop = halfbody_crop(seq, (1000, 800), 768)
    span = 0.6 - 0.2
    m = 0.25 * span
    top, bottom = 0.2 - 0.65 * m, 0.6 + 0.05 * m
    side = (bottom - top) * 800
    assert (crop.y0, crop.y1) == (round(top * 800), round(bottom * 800))
    assert (crop.x0, crop.x1) == (round(500 - side / 2), round(500 + side / 2))
    assert crop.draw_pose_params == (768, 768, 0, 768, 0, 768)
    out = crop_sequence(seq, crop)
    assert out.body[0, 1, 0] == pytest.approx(0.5, abs=2e-3)  # neck centred
    assert out.faces[0, :, 1].min() == pytest.approx(0.65 * m / (bottom - top), abs=2e-3)
    assert out.canvas_size == (768, 768) and np.all(out.body[0, 4] == -1)  # undetected stays -1


def test_halfbody_crop_over_frames_and_top_clamp():
    seq = make_person(face_top=0.03, frames=5, jitter=0.01)
    crop = halfbody_crop(seq, (1000, 800), 512)
    assert crop.y0 == 0  # top margin clamped at the image border
    assert (crop.x0 + crop.x1) / 2 == pytest.approx(1000 * (0.5 + 0.02), abs=1)  # mean neck x over frames


def test_crop_shrinks_at_the_image_edge_and_pads():
    seq = make_person(neck_x=0.08)
    crop = halfbody_crop(seq, (1000, 800), 768)
    assert crop.x0 == 0 and crop.x1 == 160  # width = 2 x neck x, neck stays centred
    imh, imw, rb, re, cb, ce = crop.draw_pose_params
    assert (imh, re - rb) == (768, 768) and imw < 768 and cb == 384 - imw // 2
    assert crop.draw_pose_params == resize_and_pad_params(crop.height, crop.width, 768)
    out = crop_sequence(seq, crop)
    assert out.body[0, 1, 0] == pytest.approx(0.5, abs=4e-3)
    img = np.full((800, 1000, 3), 200, np.uint8)
    cropped = crop_image(img, crop)
    assert cropped[:, : cb - 1].max() == 0 and cropped[:, ce + 1 :].max() == 0 and cropped[:, cb + 2 : ce - 2].min() == 200


def test_image_and_keypoints_land_in_the_same_frame():
    seq = make_person(neck_x=0.45)
    seq.hands[0, 0, 0] = (0.52, 0.47)  # inside the crop
    img = np.zeros((800, 1000, 3), np.uint8)
    hand = seq.hands[0, 0, 0] * [1000, 800]
    cv2.circle(img, tuple(int(v) for v in hand), 6, (255, 255, 255), -1)
    ref_img, ref_pose, drv, (rc, dc) = align_reference_and_poses(img, seq, seq, (1000, 800), 768)
    assert rc == dc
    img2, pose2, crop2 = align_reference_image(img, seq, 768)
    assert crop2 == rc and np.array_equal(img2, ref_img) and pose2.identical(ref_pose)
    ys, xs = np.nonzero(ref_img[..., 0] > 128)
    imh, imw, rb, _, cb, _ = rc.draw_pose_params
    want = (cb + ref_pose.hands[0, 0, 0, 0] * imw, rb + ref_pose.hands[0, 0, 0, 1] * imh)
    assert (xs.mean(), ys.mean()) == pytest.approx(want, abs=1.5)
    # the condition image draws that hand point at the same place
    cond = draw_hands(drv, 0, (768, 768))
    assert cond[int(round(want[1])), int(round(want[0]))].any()


def test_crop_errors():
    seq = make_person()
    seq.faces_score[:] = 0
    with pytest.raises(EchoMimicError, match="no face landmarks"):
        halfbody_crop(seq, (1000, 800))
    seq = make_person()
    seq.body_score[:, 1] = 0
    with pytest.raises(EchoMimicError, match="neck/shoulders"):
        halfbody_crop(seq, (1000, 800))
    with pytest.raises(EchoMimicError, match="computed for a 1000x800"):
        crop_image(np.zeros((10, 10, 3), np.uint8), halfbody_crop(make_person(), (1000, 800)))


def test_similarity_from_points_recovers_transform():
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 700, (3, 2))
    a = 0.8 * np.array([[np.cos(0.2), -np.sin(0.2)], [np.sin(0.2), np.cos(0.2)]])
    dst = src @ a.T + [40, -30]
    m = similarity_from_points(src, dst, rotation=True)
    np.testing.assert_allclose(m, np.hstack([a, [[40], [-30]]]), atol=1e-9)
    m = similarity_from_points(src, 0.8 * src + [40, -30])
    np.testing.assert_allclose(m, [[0.8, 0, 40], [0, 0.8, -30]], atol=1e-9)
    with pytest.raises(EchoMimicError, match="two distinct"):
        similarity_from_points(src[:1], dst[:1])


def test_fit_sequence_onto_reference_shoulders(shared_data):
    seq = load_released_folder(shared_data / "pose" / "01")
    kp = [1, 2, 5]
    px = lambda s, f=slice(None): s.body[f][:, kp] * 768  # noqa: E731  (768-px canvas, full draw area)
    med = np.median(px(seq), axis=0)
    # a reference whose neck/shoulders are the sequence's, scaled by 0.8 about the origin and shifted
    ref = seq[[0]].copy()
    ref.body[0, kp] = (0.8 * med + [60, 40]) / 768
    moved, m = fit_sequence_to_reference(seq, ref)
    np.testing.assert_allclose(m, [[0.8, 0, 60], [0, 0.8, 40]], atol=1e-6)
    np.testing.assert_allclose(np.median(px(moved), axis=0), ref.body[0, kp] * 768, atol=1e-6)
    # hands move with the same transform, frame by frame
    np.testing.assert_allclose(moved.hands[100] * 768, 0.8 * seq.hands[100] * 768 + [60, 40], atol=1e-6)
    assert np.array_equal(moved.hands_score, seq.hands_score)
    # the drawn hands move accordingly
    a, b = draw_hands(seq, 100, (768, 768)).any(-1), draw_hands(moved, 100, (768, 768)).any(-1)
    assert np.nonzero(b)[1].mean() == pytest.approx(0.8 * np.nonzero(a)[1].mean() + 60, abs=3)
    ref.body_score[0, kp] = 0
    with pytest.raises(EchoMimicError, match="not visible"):
        fit_sequence_to_reference(seq, ref)


@pytest.mark.parametrize("fit", ["stretch", "contain", "cover"])
def test_fit_image_matches_pose_canvas_mapping(fit):
    img = np.zeros((768, 768, 3), np.uint8)
    pt = (500, 300)
    cv2.circle(img, pt, 8, (255, 255, 255), -1)
    out = fit_image(img, (512, 640), fit)
    assert out.shape == (640, 512, 3)
    imh, imw, rb, _, cb, _ = map_draw_params((768, 768, 0, 768, 0, 768), (768, 768), (512, 640), fit)
    ys, xs = np.nonzero(out[..., 0] > 100)
    assert (xs.mean(), ys.mean()) == pytest.approx((cb + pt[0] / 768 * imw, rb + pt[1] / 768 * imh), abs=1.0)
