"""FID and FVD on stand-in weights: InceptionV3 (pytorch-fid and torchvision layouts) and I3D (pytorch-i3d layout)
built in code with random weights, saved as plain state dicts, loaded back; features have the published shapes, the
Fréchet distance (float64) agrees with scipy's sqrtm formula, FID / FVD of a set with itself is 0 and grows with a
distribution shift, results are deterministic, and code-running, TorchScript, mismatched and missing files are refused
with the fix."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from echomimic_lib.errors import EchoMimicError, MissingWeightsError, UnsafeFileError, WeightsError
from echomimic_lib.evaluate.fid import fid, inception_features
from echomimic_lib.evaluate.frechet import frechet_between, frechet_distance, gaussian
from echomimic_lib.evaluate.fvd import fvd, i3d_features, preprocess, video_clips
from echomimic_lib.evaluate.i3d import I3D, load_i3d
from echomimic_lib.evaluate.inception import InceptionV3, load_inception


def _randomise(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights that keep activations alive through a deep network (He init, random BN statistics)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5
            if m.bias is not None:
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
        elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.data = 1 + 0.1 * torch.randn(m.weight.shape, generator=g)
            m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=g)
            m.running_mean.uniform_(-0.1, 0.1, generator=g)
            m.running_var.uniform_(0.8, 1.2, generator=g)
    return net.eval()


@pytest.fixture(scope="module")
def inception_files(tmp_path_factory):
    """pytorch-fid layout (1008-class classifier) and torchvision layout (1000 classes + auxiliary head)."""
    d = tmp_path_factory.mktemp("inception")
    net = _randomise(InceptionV3("fid"), 0)
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    g = torch.Generator().manual_seed(1)
    torch.save({**sd, "fc.weight": torch.randn(1008, 2048, generator=g), "fc.bias": torch.zeros(1008)},
               d / "pt_inception-2015-12-05-6726825d.pth")
    tv = {**net.state_dict(), "fc.weight": torch.randn(1000, 2048, generator=g), "fc.bias": torch.zeros(1000),
          "AuxLogits.conv0.conv.weight": torch.randn(128, 768, 1, 1, generator=g), "AuxLogits.fc.weight": torch.zeros(1000, 768)}
    torch.save(tv, d / "inception_v3_google-0cc3c7bd.pth", _use_new_zipfile_serialization=False)
    return d / "pt_inception-2015-12-05-6726825d.pth", d / "inception_v3_google-0cc3c7bd.pth", net


@pytest.fixture(scope="module")
def frames(shared_data):
    from echomimic_lib.io.video_io import read_video

    import cv2

    video = read_video(shared_data / "video" / "driving_a.mp4", max_frames=48, with_audio=False).frames
    return np.stack([cv2.resize(f, (128, 128), interpolation=cv2.INTER_AREA) for f in video])


def _shift(frames: np.ndarray, amount: int) -> np.ndarray:
    return np.clip(frames.astype(np.int16) + amount, 0, 255).astype(np.uint8)


def test_frechet_distance_in_float64_matches_the_sqrtm_formula():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 24))
    b = rng.normal(size=(200, 24)) @ rng.normal(size=(24, 24)) * 0.4 + 0.2
    (m1, s1), (m2, s2) = gaussian(a), gaussian(b)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-9)
    few = rng.normal(size=(6, 64))  # fewer samples than dimensions: rank-deficient covariances are fine
    other = rng.normal(size=(9, 64)) * 1.3 + 0.1  # ... and the n1 x n2 route gives the D x D route's value
    assert frechet_between(few, other) == pytest.approx(frechet_distance(*gaussian(few), *gaussian(other)), rel=1e-9)
    assert frechet_between(few, few) == pytest.approx(0.0, abs=1e-9)
    assert frechet_between(few, few + 0.1) == pytest.approx(64 * 0.01, rel=1e-6)
    with pytest.raises(EchoMimicError, match="at least 2"):
        frechet_between(few[:1], few)


def test_inception_loads_both_layouts_and_gives_2048_features(inception_files, frames):
    fid_file, tv_file, ref = inception_files
    net_fid, net_tv = load_inception(fid_file), load_inception(tv_file)
    assert net_fid.variant == "fid" and net_tv.variant == "torchvision"  # told apart by the classifier's size
    x = torch.rand(2, 3, 90, 120)
    with torch.no_grad():
        assert torch.equal(net_fid(x), ref(x))  # every weight and BN statistic loaded
        a, b = net_fid(x), net_tv(x)
    assert a.shape == (2, 2048) and a.abs().mean() > 1e-3
    assert not torch.allclose(a, b)  # the FID network's pools differ from torchvision's, same weights
    feats = inception_features(net_fid, frames[:3])
    assert feats.shape == (3, 2048) and feats.dtype == np.float64
    assert np.array_equal(feats, inception_features(net_fid, frames[:3]))  # deterministic
    assert np.allclose(feats, inception_features(net_fid, frames[:3], batch=2), rtol=1e-5, atol=1e-6)
    assert load_inception(tv_file, variant="fid").variant == "fid"


def test_fid_is_zero_for_the_same_frames_and_grows_with_a_shift(inception_files, frames):
    net = load_inception(inception_files[0], size=139)  # a smaller input than FID's 299 px, to keep the test short
    real = frames[:10]
    feats = {k: inception_features(net, v) for k, v in (("real", real), ("shift20", _shift(real, 20)),
                                                          ("shift60", _shift(real, 60)), ("other", frames[24:34]))}
    small, large = frechet_between(feats["shift20"], feats["real"]), frechet_between(feats["shift60"], feats["real"])
    assert frechet_between(feats["real"], feats["real"]) == pytest.approx(0.0, abs=1e-6 * small)
    assert 0 < small < large
    assert fid(net, _shift(real, 20), real) == pytest.approx(small, rel=1e-9)  # fid() = features + Fréchet, repeatable
    assert 0 < frechet_between(feats["other"], feats["real"]) < large  # other frames of the same video
    with pytest.raises(EchoMimicError, match="at least 2 generated frames"):
        fid(net, real[:1], real)


def test_bad_inception_files_are_refused_with_the_fix(tmp_path, inception_files):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"echo pwned > {tmp_path / 'pwned'}",))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"Conv2d_1a_3x3.conv.weight": Evil()}, f, protocol=2)
    with pytest.raises(UnsafeFileError):
        load_inception(evil)
    assert not (tmp_path / "pwned").exists()
    script = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(script))
    with pytest.raises(UnsafeFileError, match="TorchScript archive, refused.*pt_inception"):
        load_inception(script)
    sd = torch.load(inception_files[0], weights_only=True)
    sd.pop("Mixed_7c.branch_pool.conv.weight")
    sd["Mixed_5b.branch1x1.conv.weight"] = torch.zeros(32, 192, 1, 1)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match="(?s)missing 1 key.*Mixed_7c.branch_pool.*wrong shape.*Mixed_5b"):
        load_inception(tmp_path / "broken.pth")
    with pytest.raises(MissingWeightsError, match="pt_inception-2015-12-05-6726825d.pth.*github.com/mseitzer/pytorch-fid"):
        load_inception(tmp_path / "metrics" / "pt_inception-2015-12-05-6726825d.pth")
    with pytest.raises(WeightsError, match="variant"):
        load_inception(inception_files[0], variant="tf")


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    net = _randomise(I3D(), 2)
    path = tmp_path_factory.mktemp("i3d") / "i3d_pretrained_400.pt"
    torch.save(net.state_dict(), path)
    return path, net


def test_i3d_loads_the_pytorch_i3d_layout_and_gives_400_features(i3d_file, frames):
    path, ref = i3d_file
    net = load_i3d(path)
    names = set(net.state_dict())
    assert {"Conv3d_1a_7x7.conv3d.weight", "Mixed_3b.b1b.bn.running_var", "Mixed_5c.b3b.conv3d.weight",
            "logits.conv3d.bias"} <= names and "Conv3d_1a_7x7.conv3d.bias" not in names
    x = torch.rand(1, 3, 16, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))
    clip = preprocess(frames[:16, :, :100])  # (T, H, W, 3), not square: shorter side to 224, centre crop
    assert clip.shape == (3, 16, 224, 224) and -1 <= float(clip.min()) < float(clip.max()) <= 1
    assert [len(c) for c in video_clips(frames[:40])] == [16, 16]
    feats = i3d_features(net, video_clips(frames), size=64)
    assert feats.shape == (3, 400) and feats.dtype == np.float64
    assert np.allclose(feats, i3d_features(net, video_clips(frames), size=64, batch=1), rtol=1e-5, atol=1e-5)
    assert np.array_equal(feats, i3d_features(net, video_clips(frames), size=64))  # deterministic


def test_fvd_is_zero_for_the_same_videos_and_grows_with_a_shift(i3d_file, frames):
    net = load_i3d(i3d_file[0])
    feats = {k: i3d_features(net, video_clips(v), size=32) for k, v in (("real", frames), ("shift20", _shift(frames, 20)),
                                                                        ("shift60", _shift(frames, 60)))}
    small, large = frechet_between(feats["shift20"], feats["real"]), frechet_between(feats["shift60"], feats["real"])
    assert frechet_between(feats["real"], feats["real"]) == pytest.approx(0.0, abs=1e-6 * small) and 0 < small < large
    assert fvd(net, [_shift(frames, 20)], [frames[:32], frames[32:]], size=32) == pytest.approx(small, rel=1e-6)
    with pytest.raises(EchoMimicError, match="at least 2 clips of 16 frames.*generated videos give 1"):
        fvd(net, [frames[:20]], [frames], size=32)


def test_bad_i3d_files_are_refused_with_the_fix(tmp_path, i3d_file):
    sd = torch.load(i3d_file[0], weights_only=True)
    sd["logits.conv3d.weight"] = sd["logits.conv3d.weight"][:101]
    sd["logits.conv3d.bias"] = sd["logits.conv3d.bias"][:101]
    torch.save(sd, tmp_path / "ucf101.pt")
    assert load_i3d(tmp_path / "ucf101.pt").logits.conv3d.out_channels == 101  # classes read from the file
    del sd["Mixed_4c.b2b.bn.weight"]
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(WeightsError, match="(?s)missing 1 key.*Mixed_4c.b2b.bn.weight.*pytorch-i3d"):
        load_i3d(tmp_path / "broken.pt")
    script = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(script))
    with pytest.raises(UnsafeFileError, match="TorchScript"):
        load_i3d(script)
    with pytest.raises(MissingWeightsError, match="I3D weights for FVD not found.*i3d_pretrained_400.pt.*rgb_imagenet.pt"):
        load_i3d(tmp_path / "i3d_pretrained_400.pt")


def test_the_cli_scores_fid_and_fvd_against_real_videos(capsys, tmp_path, inception_files, i3d_file, frames, shared_data):
    import json

    from echomimic_lib.cli import main
    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.io.video_io import write_video

    wav, sr = read_audio(shared_data / "audio" / "pose_demo_clip.wav")
    gen = write_video(tmp_path / "gen.mp4", frames[:32], 24.0, wav[:, : int(32 / 24 * sr)], sr)
    (tmp_path / "real").mkdir()
    write_video(tmp_path / "real" / "a.mp4", _shift(frames[:32], 30), 24.0)
    write_video(tmp_path / "real" / "b.mp4", _shift(frames[16:48], 30), 24.0)
    (tmp_path / "metrics").mkdir()
    os.link(inception_files[0], tmp_path / "metrics" / inception_files[0].name)  # found in <models>/metrics
    common = [gen, "--models", tmp_path, "--offline", "--mediapipe-model", shared_data / "mediapipe" /
              "face_landmarker_v2_with_blendshapes.task"]
    rc = main(["evaluate", *map(str, common), "--real", str(tmp_path / "real"), "--i3d", str(i3d_file[0]), "--json"])
    out = capsys.readouterr()
    doc = json.loads(out.out.strip().splitlines()[-1])
    assert rc == 0 and doc["fid"] > 0 and doc["fvd"] > 0
    assert "FID from 32 generated and 64 real frames" in out.err and "FVD from 2 generated and 4 real clips" in out.err
    rc = main(["evaluate", *map(str, common), "--real", str(gen)])  # the video against itself: 0, in the table
    out = capsys.readouterr()
    row = next(line for line in out.out.splitlines() if line.startswith("FID"))
    assert rc == 0 and float(row.split()[-2]) == pytest.approx(0.0, abs=1e-3)
    assert "FVD not computed: no weights" in out.out and "FVD left out" not in out.err
    rc = main(["evaluate", *map(str, common), "--real", str(tmp_path / "nothing")])
    assert rc == 2 and "--real" in capsys.readouterr().err
    rc = main(["evaluate", *map(str, common), "--i3d", str(i3d_file[0])])
    assert rc == 2 and "pass --real" in capsys.readouterr().err
    rc = main(["evaluate", *map(str, common), "--protocol", "published"])
    err = capsys.readouterr().err
    assert rc == 2 and "--protocol published applies to LSE-C / LSE-D" in err and "syncnet_v2.model" in err
