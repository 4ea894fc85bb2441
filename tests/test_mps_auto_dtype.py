"""--dtype auto on Apple MPS: fp16 for the networks (ComfyUI's should_use_fp16 there), the VAE as ComfyUI keeps it
(bf16 from macOS 14; before it fp32 for the SD VAE, fp16 for the Wan VAE); the CPU and CUDA choices unchanged. No MPS
here: the device query and the macOS version are monkeypatched. And the pipeline runs with a VAE whose precision
differs from the UNets' (what auto gives on MPS), here on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from echomimic_lib import devices
from echomimic_lib.devices import resolve_device, resolve_dtype, resolve_vae_dtype

MPS = torch.device("mps")


@pytest.fixture
def on_a_mac(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)

    def macos(version):
        monkeypatch.setattr(devices, "_macos_version", lambda: version)
    macos((14, 5))
    return macos


def test_auto_on_mps_is_fp16_for_the_networks(on_a_mac):
    device = resolve_device("auto")
    assert device.type == "mps"
    assert resolve_dtype("auto", device) == torch.float16
    assert resolve_dtype(None, device) == torch.float16
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        assert resolve_dtype(name, device) == dtype  # an explicit choice is kept


def test_vae_on_mps_as_comfyui_keeps_it(on_a_mac):
    fp16 = resolve_dtype("auto", MPS)
    assert resolve_vae_dtype("auto", MPS, fp16) == torch.bfloat16  # macOS 14: ComfyUI's should_use_bf16
    assert resolve_vae_dtype("auto", MPS, fp16, "wan") == torch.bfloat16
    on_a_mac((13, 6, 1))
    assert resolve_vae_dtype("auto", MPS, fp16) == torch.float32  # the SD VAE: bf16 or fp32, never fp16
    assert resolve_vae_dtype("auto", MPS, fp16, "wan") == torch.float16  # the Wan VAE: bf16, fp16, fp32
    for name in ("fp32", "fp16", "bf16"):  # an explicit --dtype is every network's, the VAE's too
        assert resolve_vae_dtype(name, MPS, devices.DTYPES[name]) == devices.DTYPES[name]


def test_cpu_and_cuda_unchanged(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32 and resolve_vae_dtype("auto", cpu, torch.float32) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    cuda = torch.device("cuda", 0)
    assert resolve_dtype("auto", cuda) == torch.float16
    assert resolve_vae_dtype("auto", cuda, torch.float16) == resolve_vae_dtype("auto", cuda, torch.float16, "wan") == torch.float16


def test_macos_version_off_a_mac(monkeypatch):
    import platform

    monkeypatch.setattr(platform, "mac_ver", lambda: ("", ("", "", ""), ""))
    assert devices._macos_version() == ()
    monkeypatch.setattr(platform, "mac_ver", lambda: ("14.4.1", ("", "", ""), "arm64"))
    assert devices._macos_version() == (14, 4, 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from echomimic_lib.cli import main as cli

    d = tmp_path_factory.mktemp("models")
    assert cli(["make-tiny", str(d)]) == 0
    return d


def test_animate_loads_the_vae_in_its_own_precision_and_renders(tiny, shared_data, tmp_path, monkeypatch):
    """What auto gives on MPS (fp16 networks, a bf16 VAE) runs end to end (on the CPU here)."""
    from echomimic_lib import model_set
    from echomimic_lib.cli import main as cli
    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.io.video_io import read_video
    from tests._media import write_wav

    asked, loaded = [], []
    real_load = model_set.load_models

    def load(*a, **k):
        loaded.append(real_load(*a, **k))
        return loaded[-1]

    monkeypatch.setattr(model_set, "load_models", load)
    monkeypatch.setattr(devices, "resolve_vae_dtype", lambda *a, **k: asked.append(a) or torch.bfloat16)
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    speech = write_wav(tmp_path / "clip.wav", wav[0, : int(0.6 * sr)], sr)
    out = tmp_path / "mixed.mp4"
    rc = cli(["animate", "--reference", str(shared_data / "images" / "portrait_a.png"), "--audio", str(speech),
              "--mediapipe-model", str(shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"),
              "--models", str(tiny), "-o", str(out), "--width", "64", "--height", "64", "--steps", "1", "--offline",
              "--device", "cpu", "--dtype", "fp16"])
    assert rc == 0
    assert asked == [("fp16", torch.device("cpu"), torch.float16)]
    models = loaded[0]
    assert models.vae.dtype == torch.bfloat16 and models.denoiser.dtype == torch.float16
    assert next(models.reference.parameters()).dtype == torch.float16
    frames = read_video(out, with_audio=False).frames
    assert len(frames) == 14 and np.isfinite(frames.astype(np.float32)).all()


def test_v3_loads_the_wan_vae_in_its_own_precision_and_renders(tmp_path, shared_data, monkeypatch):
    """V3 with what auto gives on MPS before macOS 14 (fp16 DiT, the Wan VAE in its own precision: bf16 here to tell
    it apart), end to end on the CPU."""
    import av

    from echomimic_lib.cli import main as cli
    from echomimic_lib.jobs import animate_v3

    asked, loaded = [], []
    real_load = animate_v3.load_v3

    def load(*a, **k):
        loaded.append(real_load(*a, **k))
        return loaded[-1]

    monkeypatch.setattr(animate_v3, "load_v3", load)
    monkeypatch.setattr(devices, "resolve_vae_dtype", lambda *a, **k: asked.append(a) or torch.bfloat16)
    models = tmp_path / "models"
    assert cli(["make-tiny", str(models / "v3-flash"), "--version", "v3-flash"]) == 0
    out = tmp_path / "v3.mp4"
    rc = cli(["animate", "--version", "v3-flash", "--reference", str(shared_data / "images" / "portrait_a.png"),
              "--audio", str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(out), "--models", str(models),
              "--width", "64", "--height", "64", "--steps", "2", "--length", "9", "--device", "cpu", "--dtype", "fp16",
              "--offline"])  # (no -q: it would leave our loggers at WARNING for the tests after this one)
    assert rc == 0
    assert asked == [("fp16", torch.device("cpu"), torch.float16, "wan")]
    got = loaded[0]
    assert next(got.vae.parameters()).dtype == torch.bfloat16 and next(got.transformer.parameters()).dtype == torch.float16
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 9 and all(f.std() > 0 for f in frames)


def test_a_v3_resume_digest_counts_the_vae_precision_only_where_it_differs():
    """A V3 request whose VAE runs in the networks' precision (every one but auto on MPS) keeps the digest it had
    before the field existed, so a kept state is gone on from; another VAE precision is another render."""
    import dataclasses

    from echomimic_lib.jobs.v3_plan import V3Request
    from echomimic_lib.jobs.resume_plan import fingerprint
    from echomimic_lib.pipeline.wan.sampler import V3Settings

    base = dict(reference="a.png", audio="a.wav", output="a.mp4", models="m", dtype=torch.float16)
    Old = dataclasses.make_dataclass("V3Request", [(f.name, f.type, f) for f in dataclasses.fields(V3Request)
                                                   if f.name != "vae_dtype"])

    def digest(req):
        return fingerprint(req, V3Settings(), "cpu", torch.float16, {})

    old = digest(Old(**base))
    assert digest(V3Request(**base)) == digest(V3Request(**base, vae_dtype=torch.float16)) == old
    assert digest(V3Request(**base, vae_dtype=torch.bfloat16)) != old
