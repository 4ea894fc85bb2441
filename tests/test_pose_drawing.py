"""Hand-pose condition images: reference geometry, any output size, non-square draw areas, previews."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.pose import draw_hand_frame, draw_hands, draw_hands_batch, draw_preview, load_released_folder
from echomimic_lib.pose.drawing import HAND_EDGES, map_draw_params, render_hand_area, thick_line


@pytest.fixture(scope="module")
def seq(shared_data):
    return load_released_folder(shared_data / "pose" / "fight")


def test_hand_edges_are_the_20_finger_chains():
    assert len(HAND_EDGES) == 20
    chains = [[0, 1, 2, 3, 4], [0, 5, 6, 7, 8], [0, 9, 10, 11, 12], [0, 13, 14, 15, 16], [0, 17, 18, 19, 20]]
    assert list(HAND_EDGES) == [(c[i], c[i + 1]) for c in chains for i in range(4)]


def test_thick_line_equals_opencv_inside_the_canvas():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = (tuple(int(v) for v in rng.integers(3, 197, 2)) for _ in range(2))
        colour = tuple(float(v) for v in rng.uniform(0, 300, 3))
        want, got = np.zeros((200, 200, 3), np.uint8), np.zeros((200, 200, 3), np.uint8)
        cv2.line(want, a, b, colour, thickness=2)
        thick_line(got, a, b, colour)
        np.testing.assert_array_equal(got, want)


def test_single_hand_colours_and_channel_order():
    hands = np.full((2, 21, 2), -1.0)
    hands[0, 0], hands[0, 1] = (0.25, 0.5), (0.75, 0.5)  # edge 0 (hue 0: red), scores 1 -> value 255
    scores = np.ones((2, 21))
    img = draw_hand_frame(hands, scores, [800, 800, 0, 800, 0, 800], (800, 800))
    mid = img[400, 380:420]
    # the canvas is BGR: HSV red (255, 0, 0) lands in canvas channel 0 = blue after BGR->RGB
    assert np.all(mid == [0, 0, 255])
    # keypoints: canvas (0, 0, score) -> red in RGB
    assert tuple(img[400, 200]) == (255, 0, 0) and tuple(img[400, 600]) == (255, 0, 0)
    # endpoints at x or y <= 0.01 px are skipped: point 1 at x = 0 removes edge 0 and its dot
    hands[0, 1] = (0.0, 0.5)
    img = draw_hand_frame(hands, scores, [800, 800, 0, 800, 0, 800], (800, 800))
    assert img[400, 380:420].sum() == 0 and img[:, :20].sum() == 0
    # low scores darken the edge: 0.5 * 0.5 * 255 -> int 63
    hands[0, 1] = (0.75, 0.5)
    img = draw_hand_frame(hands, scores * 0.5, [800, 800, 0, 800, 0, 800], (800, 800))
    assert tuple(img[400, 400]) == (0, 0, 63)


def test_batch_equals_single_frames_and_is_lazy(seq):
    idx = [3, 0, 3, 7]
    batch = draw_hands_batch(seq, idx, (768, 768))
    assert batch.shape == (4, 768, 768, 3) and batch.dtype == np.uint8
    for j, i in enumerate(idx):
        np.testing.assert_array_equal(batch[j], draw_hands(seq, i, (768, 768)))
    assert not np.array_equal(batch[0], batch[1])


@pytest.mark.parametrize("size", [(384, 384), (512, 512), (1024, 1024), (512, 768)])
def test_any_output_size_keeps_hands_in_place(seq, size):
    ref = draw_hands(seq, 10, (768, 768)).any(-1)
    img = draw_hands(seq, 10, size)
    assert img.shape == (size[1], size[0], 3)
    got = img.any(-1)
    ys, xs = np.nonzero(got)
    ry, rx = np.nonzero(ref)
    # stretch: the hands' centroid scales with the output (within a pixel or two)
    assert xs.mean() == pytest.approx(rx.mean() * size[0] / 768, abs=2.0)
    assert ys.mean() == pytest.approx(ry.mean() * size[1] / 768, abs=2.0)


def test_fit_modes_map_params():
    p = [768, 768, 0, 768, 0, 768]
    assert map_draw_params(p, (768, 768), (768, 768)) == tuple(p)
    assert map_draw_params(p, (768, 768), (512, 768), "stretch") == (768, 512, 0, 768, 0, 512)
    assert map_draw_params(p, (768, 768), (512, 768), "contain") == (512, 512, 128, 640, 0, 512)
    assert map_draw_params(p, (768, 768), (512, 768), "cover") == (768, 768, 0, 768, -128, 640)
    with pytest.raises(EchoMimicError, match="unknown fit"):
        map_draw_params(p, (768, 768), (512, 768), "squash")


def test_non_square_draw_pose_params(seq):
    hands, scores = seq.hands[0], seq.hands_score[0]
    img = draw_hand_frame(hands, scores, [768, 512, 0, 768, 128, 640], (768, 768))
    assert img[:, :128].sum() == 0 and img[:, 640:].sum() == 0
    np.testing.assert_array_equal(img[:, 128:640], render_hand_area(hands, scores, 768, 512))
    assert img[:, 128:640].any()
    # the 768 x 512 area is drawn on an 1200 x 800 canvas (short side 800) then resized
    wide = draw_hand_frame(hands, scores, [512, 768, 128, 640, 0, 768], (768, 768))
    assert wide[:128].sum() == 0 and wide[640:].sum() == 0 and wide[128:640].any()


def test_nan_in_drawing_is_a_clear_error():
    hands = np.full((2, 21, 2), 0.5)
    hands[0, 3] = np.nan
    with pytest.raises(EchoMimicError, match="NaN"):
        draw_hand_frame(hands, np.ones((2, 21)), [768, 768, 0, 768, 0, 768], (768, 768))


def test_preview_is_labelled_and_adds_body(seq):
    hands_only = draw_hands(seq, 0, (768, 768))
    prev = draw_preview(seq, 0, (768, 768))
    assert prev.shape == hands_only.shape
    assert prev.any(-1).sum() > hands_only.any(-1).sum() + 1000  # skeleton + face dots
    assert prev[:40, :300].any() and not hands_only[:40, :300].any()  # the "PREVIEW" label
    no_label = draw_preview(seq, 0, (768, 768), body=False, face=False, label=False)
    np.testing.assert_array_equal(no_label, hands_only)


def test_params_outside_the_canvas_are_refused():
    hands, scores = np.full((2, 21, 2), 0.5), np.ones((2, 21))
    with pytest.raises(EchoMimicError, match="invalid draw_pose_params"):
        draw_hand_frame(hands, scores, [768, 768, 0, 768, 0, 768], (512, 512))  # 768 params, no canvas given
    img = draw_hand_frame(hands, scores, [768, 768, 0, 768, 0, 768], (512, 512), canvas_size=(768, 768))
    assert img.shape == (512, 512, 3) and img.any()
