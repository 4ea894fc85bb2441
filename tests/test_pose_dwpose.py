"""DWPose extraction: pre/post-processing tested for real with tiny ONNX models generated here.

- ``red_detector``: a YOLOX-shaped detector (1, 8400, 6) whose stride-32 objectness is the mean of input
  channel 2 (R in BGR) over each 32 x 32 cell, thresholded (only saturated red fires; the pad value 114 never
  does). Its boxes are 256 px squares centred on the firing cell, so where a red square of the original image
  is found tests the letterbox scale/placement and the BGR channel order.
- ``nobody_detector``: objectness 0 everywhere.
- ``peak_pose``: SimCC outputs (1, 133, 576) / (1, 133, 768) with one peak per keypoint at known input pixels,
  peak height either fixed or the mean of the normalised input channel 0 (x) / channel 2 (y), which tests the
  mean/std normalisation and the RGB order.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from echomimic_lib.errors import EchoMimicError, MissingWeightsError  # noqa: E402
from echomimic_lib.pose import dwpose  # noqa: E402
from echomimic_lib.pose.dwpose import DWPoseDetector, detect_image_pose, extract_pose_sequence, resolve_dwpose_models  # noqa: E402
from echomimic_lib.pose.dwpose_tensors import (  # noqa: E402
    box_to_center_scale,
    decode_simcc,
    decode_yolox,
    letterbox,
    nms,
    wholebody_to_released,
)

OPSET = [helper.make_opsetid("", 17)]


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _const(name, arr):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(arr), name + "_v"))


def build_red_detector(path, box_px=256.0):
    nodes = [
        _const("starts", np.array([2], np.int64)),
        _const("ends", np.array([3], np.int64)),
        _const("axes", np.array([1], np.int64)),
        helper.make_node("Slice", ["images", "starts", "ends", "axes"], ["red"]),
        helper.make_node("AveragePool", ["red"], ["pooled"], kernel_shape=[32, 32], strides=[32, 32]),
        _const("shape", np.array([1, 400, 1], np.int64)),
        helper.make_node("Reshape", ["pooled", "shape"], ["cells"]),
        _const("thr", np.array(200.0, np.float32)),
        _const("span", np.array(55.0, np.float32)),
        helper.make_node("Sub", ["cells", "thr"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["c2"]),
        helper.make_node("Div", ["c2", "span"], ["obj32"]),
        _const("zeros", np.zeros((1, 8000, 1), np.float32)),
        helper.make_node("Concat", ["zeros", "obj32"], ["obj"], axis=1),
        _const("head", np.tile(np.array([0.5, 0.5, np.log(box_px / 32), np.log(box_px / 32)], np.float32), (1, 8400, 1))),
        _const("cls", np.ones((1, 8400, 1), np.float32)),
        helper.make_node("Concat", ["head", "obj", "cls"], ["output"], axis=2),
    ]
    graph = helper.make_graph(
        nodes, "red_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8400, 6])],
    )
    return _save(graph, path)


def build_nobody_detector(path):
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=1),
        _const("zero", np.array(0.0, np.float32)),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        _const("base", np.concatenate([np.full((1, 8400, 4), 0.5, np.float32), np.zeros((1, 8400, 2), np.float32)], axis=2)),
        helper.make_node("Add", ["base", "z"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "nobody",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8400, 6])],
    )
    return _save(graph, path)


def layout_positions():
    """Input-pixel positions (288 x 384 crop) of the 133 keypoints: a plausible upright half-body, with every
    keypoint at a distinct place so the index mapping can be checked."""
    pos = np.zeros((133, 2))
    k = np.arange(133)
    pos[:] = np.stack([20 + (k * 2) % 248, 300 + (k % 7)], axis=1)  # default: lower part
    pos[0] = (144, 100)  # nose
    pos[1], pos[2] = (156, 92), (132, 92)  # L eye, R eye (image right = person's left)
    pos[3], pos[4] = (170, 96), (118, 96)  # L ear, R ear
    pos[5], pos[6] = (210, 170), (78, 170)  # L shoulder, R shoulder
    pos[7], pos[8] = (230, 240), (58, 240)  # elbows
    pos[9], pos[10] = (220, 300), (68, 300)  # wrists
    pos[23:91] = np.stack([110 + (np.arange(68) % 17) * 4, 70 + (np.arange(68) // 17) * 12], axis=1)  # face 70..106
    pos[91:112] = np.stack([200 + np.arange(21), 300 + np.arange(21)], axis=1)  # left hand
    pos[112:133] = np.stack([60 + np.arange(21), 305 + np.arange(21)], axis=1)  # right hand
    return pos


def build_peak_pose(path, positions, height=0.9, from_input=False):
    bx = np.round(positions[:, 0] * 2).astype(int)
    by = np.round(positions[:, 1] * 2).astype(int)
    px = np.zeros((1, 133, 576), np.float32)
    py = np.zeros((1, 133, 768), np.float32)
    px[0, np.arange(133), bx] = 1.0
    py[0, np.arange(133), by] = 1.0
    nodes = [_const("px", px), _const("py", py)]
    if from_input:
        for ch, name in ((0, "mx"), (2, "my")):
            nodes += [
                _const(f"s{ch}", np.array([ch], np.int64)), _const(f"e{ch}", np.array([ch + 1], np.int64)), _const(f"a{ch}", np.array([1], np.int64)),
                helper.make_node("Slice", ["input", f"s{ch}", f"e{ch}", f"a{ch}"], [f"sl{ch}"]),
                helper.make_node("ReduceMean", [f"sl{ch}"], [f"m4{ch}"], keepdims=0),
                _const(f"sh{ch}", np.array([1, 1, 1], np.int64)),
                helper.make_node("Reshape", [f"m4{ch}", f"sh{ch}"], [name]),
            ]
    else:
        nodes += [
            helper.make_node("ReduceMean", ["input"], ["m"], keepdims=0),
            _const("zero", np.array(0.0, np.float32)),
            helper.make_node("Mul", ["m", "zero"], ["z"]),
            _const("h", np.array(height, np.float32)),
            helper.make_node("Add", ["h", "z"], ["mx"]),
            helper.make_node("Identity", ["mx"], ["my"]),
        ]
    nodes += [helper.make_node("Mul", ["px", "mx"], ["simcc_x"]), helper.make_node("Mul", ["py", "my"], ["simcc_y"])]
    graph = helper.make_graph(
        nodes, "peak_pose",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 384, 288])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, 133, 576]), helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, 133, 768])],
    )
    return _save(graph, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("dwpose_models")
    pos = layout_positions()
    return {
        "red": build_red_detector(d / "red.onnx"),
        "nobody": build_nobody_detector(d / "nobody.onnx"),
        "pose": build_peak_pose(d / "pose.onnx", pos),
        "pose_input": build_peak_pose(d / "pose_input.onnx", pos, from_input=True),
        "positions": pos,
    }


def _red_square(img, x0, y0, side):
    img[y0 : y0 + side, x0 : x0 + side] = (255, 0, 0)
    return img


# ---------------------------------------------------------------------------------------------- detector
def test_letterbox_scales_to_top_left_pads_114_and_swaps_to_bgr():
    img = np.zeros((360, 1280, 3), np.uint8)
    img[..., 0] = 200  # R
    img[..., 2] = 10  # B
    x, r = letterbox(img)
    assert x.shape == (1, 3, 640, 640) and x.dtype == np.float32
    assert r == pytest.approx(0.5)
    assert np.all(x[0, :, 180:, :] == 114)  # padding below the 640 x 180 image
    assert np.all(x[0, 2, :180] == 200) and np.all(x[0, 0, :180] == 10)  # BGR order
    x_rgb, _ = letterbox(img, bgr=False)
    assert np.all(x_rgb[0, 0, :180] == 200)


def test_detector_finds_red_square_through_letterbox(models):
    det = DWPoseDetector(models["red"], models["pose"])
    img = _red_square(np.zeros((720, 1280, 3), np.uint8), 640, 320, 64)  # lands on stride-32 cell (10, 5)
    boxes, scores = det.detect_persons(img)
    assert len(boxes) == 1 and scores[0] == pytest.approx(1.0)
    cx, cy = (boxes[0, 0] + boxes[0, 2]) / 2, (boxes[0, 1] + boxes[0, 3]) / 2
    assert (cx, cy) == pytest.approx((672.0, 352.0), abs=1e-3)  # the square's centre in the original image
    assert boxes[0, 2] - boxes[0, 0] == pytest.approx(512.0, abs=1e-3)  # 256 letterbox px / ratio 0.5
    # a blue square (R = 0) is not seen: the detector reads the R channel of a BGR input
    blue = np.zeros((720, 1280, 3), np.uint8)
    blue[320:384, 640:704] = (0, 0, 255)
    assert len(det.detect_persons(blue)[0]) == 0


def test_decode_yolox_grid_and_nms():
    raw = np.zeros((1, 8400, 6), np.float32)
    raw[0, 8400 - 400 + 3 * 20 + 7] = [0.25, 0.75, np.log(2), 0.0, 0.9, 1.0]  # stride 32, cell (7, 3)
    raw[0, 5] = [0.5, 0.5, 0.0, 0.0, 0.5, 0.8]  # stride 8, cell (5, 0)
    boxes, scores = decode_yolox(raw)
    assert boxes[8000 + 67] == pytest.approx([(7.25 * 32) - 32, (3.75 * 32) - 16, (7.25 * 32) + 32, (3.75 * 32) + 16])
    assert boxes[5] == pytest.approx([5.5 * 8 - 4, 0.5 * 8 - 4, 5.5 * 8 + 4, 0.5 * 8 + 4])
    assert scores[5, 0] == pytest.approx(0.4)
    b = np.array([[0, 0, 100, 100], [5, 5, 105, 105], [200, 200, 300, 300]], float)
    assert nms(b, np.array([0.9, 0.8, 0.7]), 0.45) == [0, 2]
    with pytest.raises(EchoMimicError, match="anchors"):
        decode_yolox(np.zeros((1, 100, 6), np.float32))


# ---------------------------------------------------------------------------------------------- pose
def test_decode_simcc():
    sx = np.zeros((3, 576), np.float32)
    sy = np.zeros((3, 768), np.float32)
    sx[0, 100], sy[0, 301] = 0.9, 1.2
    sx[1, 7], sy[1, 9] = 0.5, 0.2
    locs, vals = decode_simcc(sx, sy)
    assert locs[0] == pytest.approx([50.0, 150.5]) and vals[0] == pytest.approx(0.9)
    assert locs[1] == pytest.approx([3.5, 4.5]) and vals[1] == pytest.approx(0.2)
    assert np.all(locs[2] == -1) and vals[2] == 0  # no peak at all


def test_box_to_center_scale_fixes_aspect():
    c, s = box_to_center_scale(np.array([100, 200, 300, 400]))
    assert c == pytest.approx([200, 300])
    assert s == pytest.approx([250, 250 / 0.75])  # 200 * 1.25, grown to 288:384
    c, s = box_to_center_scale(np.array([0, 0, 400, 100]))
    assert s == pytest.approx([500, 500 / 0.75])


def test_pose_estimation_maps_peaks_back_and_normalises_rgb(models):
    det = DWPoseDetector(models["red"], models["pose_input"])
    img = np.zeros((900, 1200, 3), np.uint8)
    img[:] = (182, 90, 149)  # RGB; uniform, so the affine crop is uniform too
    box = np.array([450.0, 300.0, 690.0, 620.0])
    kpts, scores = det.estimate(img, box[None])
    center, scale = box_to_center_scale(box)
    expected = models["positions"] / np.array([288.0, 384.0]) * scale + center - scale / 2
    assert kpts.shape == (1, 133, 2)
    np.testing.assert_allclose(kpts[0], expected, atol=1e-6)
    r_norm = (182 - 123.675) / 58.395
    b_norm = (149 - 103.53) / 57.375
    np.testing.assert_allclose(scores[0], min(r_norm, b_norm), atol=1e-4)  # channel 0 = R, channel 2 = B


def test_wholebody_to_released_keypoint_order(models):
    rng = np.random.default_rng(1)
    k = rng.uniform(10, 500, (1, 133, 2))
    s = rng.uniform(0.5, 1.0, (1, 133))
    s[0, 9] = 0.1  # left wrist below threshold
    d = wholebody_to_released(k, s, (640, 480))
    n = k[0] / [640, 480]
    cand = d["bodies"]["candidate"]
    assert cand.shape == (18, 2)
    np.testing.assert_allclose(cand[0], n[0])  # nose
    np.testing.assert_allclose(cand[1], (n[5] + n[6]) / 2)  # neck
    np.testing.assert_allclose(cand[2], n[6])  # right shoulder
    np.testing.assert_allclose(cand[5], n[5])  # left shoulder
    np.testing.assert_allclose(cand[7], n[9])  # left wrist
    np.testing.assert_allclose(cand[8], n[12])  # right hip
    np.testing.assert_allclose(cand[14], n[2])  # right eye
    np.testing.assert_allclose(cand[17], n[3])  # left ear
    assert d["bodies"]["score"][0, 1] == 1.0
    assert d["bodies"]["subset"][0, 7] == -1 and d["bodies"]["subset"][0, 5] == 5
    np.testing.assert_allclose(d["faces"][0], n[23:91])
    np.testing.assert_allclose(d["hands"][0], n[91:112])  # left hand first
    np.testing.assert_allclose(d["hands"][1], n[112:133])
    np.testing.assert_allclose(d["hands_score"][1], s[0, 112:133])
    assert d["faces"].shape == (1, 68, 2) and d["hands"].shape == (2, 21, 2)


# ---------------------------------------------------------------------------------------------- sequences
def _frames_with_square(positions, size=(1280, 720)):
    frames = []
    for p in positions:
        img = np.zeros((size[1], size[0], 3), np.uint8)
        if p is not None:
            _red_square(img, p[0], p[1], 64)
        frames.append(img)
    return frames


def test_extract_sequence_released_format_and_halfbody_crop(models):
    det = DWPoseDetector(models["red"], models["pose"])
    seq = extract_pose_sequence(_frames_with_square([(640, 320)] * 3), det, size=768, fps=25)
    assert len(seq) == 3 and seq.fps == 25 and seq.canvas_size == (768, 768)
    d = seq[0]
    assert set(d) >= {"bodies", "hands", "hands_score", "faces", "faces_score", "num", "draw_pose_params"}
    assert d["hands"].shape == (2, 21, 2) and d["faces"].shape == (1, 68, 2) and d["bodies"]["candidate"].shape == (18, 2)
    # the crop rule, measured in crop-normalised coordinates: the face top sits 0.65 m below the crop top and
    # the lowest upper-body point 0.05 m above its bottom, with m = 0.25 * span and crop height = 1.175 * span
    assert seq.faces[0, :, 1].min() == pytest.approx(0.1625 / 1.175, abs=0.01)
    assert seq.body[0, [0, 1, 2, 3, 4, 5, 6], 1].max() == pytest.approx(1.1625 / 1.175, abs=0.01)
    assert seq.body[0, 1, 0] == pytest.approx(0.5, abs=0.01)  # neck centred
    assert seq.report.crop is not None and not seq.report.missing_frames


@pytest.mark.parametrize("policy", ["hold", "interpolate", "fail"])
def test_frames_without_person(models, policy):
    det = DWPoseDetector(models["red"], models["pose"])
    frames = _frames_with_square([(320, 320), None, (576, 320)])
    if policy == "fail":
        with pytest.raises(EchoMimicError, match=r"no person was found in 1 of 3 frames \(first: \[1\]\)"):
            extract_pose_sequence(frames, det, on_missing=policy, crop=False)
        return
    seq = extract_pose_sequence(frames, det, on_missing=policy, crop=False)
    assert seq.report.missing_frames == [1]
    assert not np.allclose(seq.hands[0], seq.hands[2])
    want = seq.hands[0] if policy == "hold" else (seq.hands[0] + seq.hands[2]) / 2
    np.testing.assert_allclose(seq.hands[1], want, atol=1e-9)


def test_video_with_no_person(models, shared_data):
    det = DWPoseDetector(models["nobody"], models["pose"])
    with pytest.raises(EchoMimicError, match="no person was found in any of the 288 frames"):
        extract_pose_sequence(shared_data / "video" / "driving_a.mp4", det, on_missing="interpolate")
    with pytest.raises(EchoMimicError, match="no person was found in the reference image"):
        detect_image_pose(det, np.zeros((64, 64, 3), np.uint8))


def test_reference_image_pose(models):
    det = DWPoseDetector(models["red"], models["pose"])
    img = _red_square(np.zeros((720, 1280, 3), np.uint8), 640, 320, 64)
    ref = detect_image_pose(det, img)
    assert len(ref) == 1 and ref.canvas_size == (1280, 720)
    assert 0 < ref.body[0, 1, 0] < 1 and 0 < ref.body[0, 1, 1] < 1


# ---------------------------------------------------------------------------------------------- models
def test_resolve_models_and_download(tmp_path, monkeypatch):
    with pytest.raises(MissingWeightsError) as err:
        resolve_dwpose_models(tmp_path)
    assert "yolox_l.onnx" in str(err.value) and "dw-ll_ucoco_384.onnx" in str(err.value) and "yzd-v/DWPose" in str(err.value)
    calls = []

    def fake_download(repo_id, filename, local_dir):
        calls.append((repo_id, filename))
        p = tmp_path / "dwpose" / filename
        p.write_bytes(b"x")
        return str(p)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=fake_download))
    (tmp_path / "dwpose").mkdir()
    (tmp_path / "dwpose" / "yolox_l.onnx").write_bytes(b"x")  # one present, one to fetch
    det, pose = resolve_dwpose_models(tmp_path, download=True)
    assert calls == [("yzd-v/DWPose", "dw-ll_ucoco_384.onnx")]
    assert det == tmp_path / "dwpose" / "yolox_l.onnx" and pose.name == "dw-ll_ucoco_384.onnx"


def test_unavailable_provider_falls_back_to_cpu(models, caplog):
    det = DWPoseDetector(models["red"], models["pose"], providers=["CUDAExecutionProvider"])
    img = _red_square(np.zeros((720, 1280, 3), np.uint8), 640, 320, 64)
    assert len(det.detect_persons(img)[0]) == 1
    assert any("not available" in r.message for r in caplog.records)


def test_onnxruntime_not_imported_at_import_time():
    import subprocess

    code = "import sys, echomimic_lib.pose, echomimic_lib.pose.dwpose; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert dwpose.DET_INPUT == (640, 640)
