"""Learned metrics on stand-in weights: SyncNet (random weights in the 2017 ``syncnet_v2.model`` file format: a plain,
legacy-serialised state dict without BatchNorm counters) loads, runs LSE-C / LSE-D on face crops, and refuses a
code-running or mismatched file; ArcFace CSIM runs on generated ONNX models of the ArcFace input/output shapes."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from echomimic_lib.errors import EchoMimicError, MissingWeightsError, UnsafeFileError, WeightsError
from echomimic_lib.evaluate import Clip, LearnedModels, clip_from_arrays, evaluate
from echomimic_lib.evaluate.arcface import ArcFace, align, csim
from echomimic_lib.evaluate.face import face_boxes, five_points
from echomimic_lib.evaluate.syncnet import SyncNet, face_crops, frame_indices_25, load_syncnet, lse_scores

MP_MODEL = "mediapipe/face_landmarker_v2_with_blendshapes.task"


@pytest.fixture(scope="module")
def syncnet_file(tmp_path_factory):
    torch.manual_seed(0)
    net = SyncNet()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    return path, net.eval()


@pytest.fixture(scope="module")
def talking(shared_data):
    """16 frames of the driving video (a real face) with their face mesh, and 0.7 s of speech."""
    from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor
    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.io.video_io import read_video

    video = read_video(shared_data / "video" / "driving_a.mp4", max_frames=16, with_audio=False)
    wav, sr = read_audio(shared_data / "audio" / "pose_demo_clip.wav")
    with FaceLandmarkExtractor(shared_data / MP_MODEL) as ex:
        seq = ex.extract(list(video.frames))
    return clip_from_arrays(video.frames, wav[:, : int(0.7 * sr)], sr, fps=video.fps), seq


def test_syncnet_loads_the_released_file_format_and_scores(syncnet_file, talking):
    path, ref_net = syncnet_file
    net = load_syncnet(path)
    x = torch.randn(2, 1, 13, 20)
    assert torch.allclose(net.forward_aud(x), ref_net.forward_aud(x), atol=1e-5)  # every weight and BN statistic loaded
    clip, seq = talking
    idx = frame_indices_25(len(clip.frames), clip.fps)
    assert len(idx) == 17 and idx[0] == 0 and idx[-1] == 15 and (np.diff(idx) >= 0).all()
    crops = face_crops(clip.frames[idx], face_boxes(seq.pixels()[idx]))
    assert crops.shape == (17, 224, 224, 3) and crops.dtype == np.uint8
    assert crops[:, 80:150, 80:150].std() > 10  # the face, not padding
    scores = lse_scores(net, crops, clip.wave16k)
    assert scores.frames == 12 and -15 <= scores.av_offset <= 15
    assert np.isfinite(scores.lse_d) and scores.lse_d > 0 and scores.lse_c >= 0


def test_syncnet_refuses_code_running_mismatched_and_missing_files(tmp_path, syncnet_file):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"echo pwned > {tmp_path / 'pwned'}",))

    evil = tmp_path / "syncnet_v2.model"
    with open(evil, "wb") as f:
        pickle.dump({"netcnnaud.0.weight": Evil()}, f, protocol=2)
    with pytest.raises(UnsafeFileError, match="refused"):
        load_syncnet(evil)
    assert not (tmp_path / "pwned").exists()
    other = tmp_path / "other.model"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(WeightsError, match="does not match"):
        load_syncnet(other)
    with pytest.raises(MissingWeightsError, match="syncnet_v2.model.*robots.ox.ac.uk"):
        load_syncnet(tmp_path / "nowhere" / "syncnet_v2.model")


def _arcface_onnx(path, nhwc: bool = False, batch=None, seed: int = 0):
    """A stand-in ArcFace: 1x3x112x112 (or NHWC) -> 512, a random strided conv and a projection."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [batch or "N", 112, 112, 3] if nhwc else [batch or "N", 3, 112, 112]
    nodes, inits = [], [numpy_helper.from_array(rng.normal(0, 0.1, (8, 3, 8, 8)).astype(np.float32), "w1"),
                        numpy_helper.from_array(rng.normal(0, 0.05, (8 * 14 * 14, 512)).astype(np.float32), "w2"),
                        numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape")]
    src = "input.1"
    if nhwc:
        nodes.append(helper.make_node("Transpose", [src], ["nchw"], perm=[0, 3, 1, 2]))
        src = "nchw"
    nodes += [helper.make_node("Conv", [src, "w1"], ["c"], strides=[8, 8]),
              helper.make_node("Relu", ["c"], ["r"]),
              helper.make_node("Reshape", ["r", "shape"], ["f"]),
              helper.make_node("MatMul", ["f", "w2"], ["683"])]
    graph = helper.make_graph(nodes, "arcface_stand_in", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("683", TensorProto.FLOAT, [batch or "N", 512])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_arcface_csim_on_stand_in_models(tmp_path, talking, shared_data):
    import cv2

    from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor

    clip, seq = talking
    pts = five_points(seq.pixels())
    face = align(clip.frames[0], pts[0])
    assert face.shape == (112, 112, 3) and face[40:80, 30:80].std() > 10
    other = cv2.cvtColor(cv2.imread(str(shared_data / "images" / "portrait_b.png")), cv2.COLOR_BGR2RGB)
    with FaceLandmarkExtractor(shared_data / MP_MODEL) as ex:
        other_pts = five_points(ex.extract(other).pixels()[0])
    for nhwc, batch in ((False, None), (True, 1)):
        model = ArcFace(_arcface_onnx(tmp_path / f"arcface_{nhwc}.onnx", nhwc, batch))
        assert model.nhwc == nhwc and model.fixed_batch == batch
        emb = model.embed(np.stack([face, face]))
        assert emb.shape == (2, 512) and np.allclose(np.linalg.norm(emb, axis=1), 1.0)
        same = csim(model, clip.frames[:1], pts[:1], clip.frames[0], pts[0])
        own = csim(model, clip.frames, pts, clip.frames[0], pts[0])
        stranger = csim(model, clip.frames, pts, other, other_pts)
        assert same == pytest.approx(1.0, abs=1e-6) and stranger < own <= 1.0


def test_bad_arcface_files_are_explained(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    with pytest.raises(MissingWeightsError, match="ArcFace model not found.*w600k_r50.onnx"):
        ArcFace(tmp_path / "arcface.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(EchoMimicError, match="ONNX Runtime cannot load"):
        ArcFace(tmp_path / "broken.onnx")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 224])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(tmp_path / "flat.onnx"))
    with pytest.raises(EchoMimicError, match="takes 1x3x112x112"):
        ArcFace(tmp_path / "flat.onnx")


def test_evaluate_reports_learned_metrics_or_says_why_not(tmp_path, syncnet_file, talking, shared_data):
    from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor

    clip, seq = talking
    clip = Clip(clip.source, clip.fps, clip.wave16k, clip.frames, seq)  # landmarks given: no extraction needed
    arc = _arcface_onnx(tmp_path / "arcface.onnx")
    with FaceLandmarkExtractor(shared_data / MP_MODEL) as ex:
        rep = evaluate(clip, shared_data / "images" / "portrait_a.png", ex, LearnedModels(syncnet_file[0], arc))
    doc = rep.to_dict()
    assert {"lse_c", "lse_d", "csim", "syncnet_av_offset"} <= set(doc) and doc["reference"] == "reference image"
    assert -1.0 <= doc["csim"] <= 1.0
    bad = evaluate(clip, None, None, LearnedModels(tmp_path / "missing.model", tmp_path / "missing.onnx"))
    doc = bad.to_dict()
    assert "lse_c" not in doc and "csim" not in doc and doc["av_offset_ms"] is not None  # weight-free ones still there
    assert any("SyncNet weights not found" in n for n in doc["notes"]) and any("ArcFace model not found" in n for n in doc["notes"])


def test_the_published_lse_protocol_applies_the_track_rules_it_can_match(syncnet_file, talking):
    from echomimic_lib.evaluate.syncnet import published_track_problem

    box = np.array([[100.0, 80.0, 260.0, 270.0]])
    assert published_track_problem(np.repeat(box, 101, 0), None) is None
    assert "longer than 100 frames" in published_track_problem(np.repeat(box, 100, 0), None)
    assert "mean box is not above 100 px" in published_track_problem(np.repeat(box * 0.5, 150, 0), None)
    valid = np.ones(150, bool)
    valid[40:65] = False  # 25 missed frames: the track goes on
    assert published_track_problem(np.repeat(box, 150, 0), valid) is None
    valid[40:66] = False  # 26: it ends
    assert "run of 26" in published_track_problem(np.repeat(box, 150, 0), valid)
    clip, seq = talking  # 16 frames: scored by default, refused with the reason under the published protocol
    clip = Clip(clip.source, clip.fps, clip.wave16k, clip.frames, seq)
    default = evaluate(clip, None, None, LearnedModels(syncnet_file[0]))
    published = evaluate(clip, None, None, LearnedModels(syncnet_file[0], lse_protocol="published"))
    assert default.lse_c is not None and published.lse_c is None
    assert any("published protocol scores only face tracks longer than 100 frames" in n and "has 17" in n for n in published.notes)
    with pytest.raises(EchoMimicError, match="protocol must be one of"):
        evaluate(clip, None, None, LearnedModels(syncnet_file[0], lse_protocol="s3fd"))
