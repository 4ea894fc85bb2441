"""``echomimic doctor``: a read-only look at the install and a models folder, with the exact fix for each gap."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from echomimic_lib import model_set
from echomimic_lib.cli import main
from echomimic_lib.jobs.doctor import diagnose
from echomimic_lib.jobs.doctor import environment as env_mod
from echomimic_lib.tiny import make_tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_master(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("doctor") / "tiny")


@pytest.fixture
def tiny(tiny_master, tmp_path):
    return Path(shutil.copytree(tiny_master, tmp_path / "models"))


def _set(report, weights, variant=None):
    return next(s for s in report["weight_sets"] if s["weights"] == weights and s["variant"] == variant)


def _mode(report, name, variant):
    return next(m for m in report["modes"] if m["mode"] == name and m["variant"] == variant)


def _run(capsys, *argv):
    rc = main(["doctor", *argv])
    return rc, capsys.readouterr().out


def _listing(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _what_download_fetches(monkeypatch, root: Path, weights: str, variant: str) -> list[str]:
    """The files `echomimic download` (ensure_weights / ensure_v3) would fetch, caught before any network."""
    got = []

    def fake_fetch(files, *a, **k):
        got.extend(files)
        raise RuntimeError("stop")

    monkeypatch.setattr(model_set, "fetch", fake_fetch)
    with pytest.raises(RuntimeError, match="stop"):
        model_set.ensure_weights(root, weights, variant, download=True)
    return sorted(str(f.dest.relative_to(root)) for f in got)


def test_a_tiny_folder_is_complete_and_says_so(tiny, capsys, monkeypatch):
    monkeypatch.delenv("ECHOMIMIC_MODELS", raising=False)
    report = diagnose(tiny, imports=False)
    for w in ("v1_audio", "v1_pose", "v2"):
        for v in ("normal", "acc"):
            assert _set(report, w, v)["status"] == "tiny"
            assert _set(report, w, v)["missing"] == [] and _set(report, w, v)["fix"] is None
    assert _mode(report, "v2-halfbody", "acc")["ready"]
    assert "tiny random weights" in _mode(report, "v2-halfbody", "acc")["note"]
    rc, out = _run(capsys, "--models", str(tiny), "--weights", "v2", "--variant", "acc")
    assert rc == 0, out
    assert "v2 acc" in out and "tiny random weights" in out and "All checked parts are ready." in out
    # a V1 render crops the face: without the MediaPipe model the same folder is not enough
    rc, out = _run(capsys, "--models", str(tiny), "--weights", "v1_audio", "--variant", "acc")
    assert rc == 1
    assert "mediapipe face landmarker: missing" in out and "curl -fL --create-dirs -o" in out
    assert "with --no-face-crop" in out


def test_an_empty_folder_lists_what_download_would_fetch(tmp_path, monkeypatch, capsys):
    root = tmp_path / "empty"
    root.mkdir()
    report = diagnose(root, imports=False)
    assert not report["ok"]
    for w in ("v1_audio", "v1_pose", "v2"):
        for v in ("normal", "acc"):
            row = _set(report, w, v)
            assert row["status"] == "missing"
            assert sorted(row["missing"]) == _what_download_fetches(monkeypatch, root, w, v)
            assert row["fix"] == f"echomimic download --weights {w} --variant {v} --models {root}"
            assert not _mode(report, {"v1_audio": "v1-audio", "v1_pose": "v1-landmarks", "v2": "v2-halfbody"}[w], v)["ready"]
    v3 = _set(report, "v3-flash")
    assert v3["status"] == "missing" and v3["fix"] == f"echomimic download --weights v3-flash --models {root}"
    got = []
    monkeypatch.setattr(model_set, "fetch", lambda files, *a, **k: (got.extend(files), (_ for _ in ()).throw(RuntimeError("stop"))))
    with pytest.raises(RuntimeError):
        model_set.ensure_weights(root, "v3-flash", download=True)
    listed = [m for m in v3["missing"] if "(the shards" not in m]
    assert sorted(listed) == sorted(str(f.dest.relative_to(root)) for f in got)
    shared = {p["part"]: p for p in report["shared"]}
    assert shared["vae"]["missing"] == ["sd-vae-ft-mse/config.json", "sd-vae-ft-mse/diffusion_pytorch_model.safetensors"]
    assert shared["whisper"]["missing"] == ["audio_processor/whisper_tiny.pt"] and shared["whisper"]["fix"].startswith("echomimic download")
    rc, _ = _run(capsys, "--models", str(root))
    assert rc == 1


def test_the_default_folder_is_not_named_in_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ECHOMIMIC_MODELS", str(tmp_path))
    rc, out = _run(capsys, "--weights", "v1_pose", "--variant", "acc", "--json")
    report = json.loads(out)
    assert rc == 1 and report["models"] == str(tmp_path)
    assert _set(report, "v1_pose", "acc")["fix"] == "echomimic download --weights v1_pose --variant acc"


def test_one_missing_file_is_named_with_its_exact_fix(tiny, monkeypatch):
    (tiny / "v1" / "denoising_unet_acc.pth").unlink()
    report = diagnose(tiny, "v1_audio", imports=False)
    acc, normal = _set(report, "v1_audio", "acc"), _set(report, "v1_audio", "normal")
    assert acc["status"] == "missing" and acc["missing"] == ["v1/denoising_unet_acc.pth"]
    assert acc["missing"] == _what_download_fetches(monkeypatch, tiny, "v1_audio", "acc")
    assert acc["fix"] == f"echomimic download --weights v1_audio --variant acc --models {tiny}"
    assert normal["status"] == "tiny"
    assert [s["weights"] for s in report["weight_sets"]] == ["v1_audio", "v1_audio"]  # --weights limits the check
    assert "v1_audio acc: missing" in report["problems"]


def test_acc_without_normal(tiny, capsys):
    for name in ("denoising_unet.pth", "motion_module.pth"):
        (tiny / "v2" / name).unlink()
    report = diagnose(tiny, "v2", imports=False)
    assert _set(report, "v2", "acc")["status"] == "tiny"
    assert sorted(_set(report, "v2", "normal")["missing"]) == ["v2/denoising_unet.pth", "v2/motion_module.pth"]
    assert _mode(report, "v2-halfbody", "acc")["ready"] and not _mode(report, "v2-halfbody", "normal")["ready"]
    assert _run(capsys, "--models", str(tiny), "--weights", "v2", "--variant", "acc")[0] == 0
    rc, out = _run(capsys, "--models", str(tiny), "--weights", "v2", "--variant", "normal")
    assert rc == 1 and "v2/denoising_unet.pth" in out


def test_a_broken_weight_file_is_found_from_its_first_bytes(tiny):
    bad = tiny / "v2" / "pose_encoder.pth"
    bad.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 4354\n")
    row = _set(diagnose(tiny, "v2", "acc", imports=False), "v2", "acc")
    assert row["status"] == "broken" and "Git LFS pointer" in row["broken"][0]["problem"]
    assert row["fix"] == f"rm -- {bad} && echomimic download --weights v2 --variant acc --models {tiny}"
    st = tiny / "x.safetensors"
    st.write_bytes((100).to_bytes(8, "little") + b"{}")
    from echomimic_lib.jobs.doctor.models import file_problem

    assert "not a whole .safetensors" in file_problem(st)


def test_json_shape(tiny, capsys):
    rc, out = _run(capsys, "--models", str(tiny), "--json", "--weights", "v3-flash")
    report = json.loads(out)
    assert rc == 1
    assert set(report) >= {"models", "read_only", "environment", "weight_sets", "shared", "modes", "problems", "ok"}
    env = report["environment"]
    assert env["python"]["version"] == sys.version.split()[0]
    assert {"version", "cuda", "cudnn", "gpus", "mps"} <= set(env["torch"])
    names = {p["name"]: p for p in env["packages"]}
    assert {"diffusers", "transformers", "safetensors", "av", "mediapipe", "onnxruntime", "opencv-contrib-python",
            "accelerate", "peft", "xformers"} <= set(names)
    assert names["diffusers"]["requirement"] == "diffusers>=0.30,<0.38"
    assert [s["weights"] for s in report["weight_sets"]] == ["v3-flash"]
    assert [m["mode"] for m in report["modes"]] == ["v3-flash"]
    assert {p["part"] for p in report["shared"]} == {"vae", "whisper", "mediapipe", "dwpose", "poses"}
    assert report["ok"] is False and report["problems"] == ["v3-flash: missing"]


def test_nothing_is_written_and_no_network_is_touched(tiny, tmp_path, monkeypatch, capsys):
    import huggingface_hub
    import urllib.request

    def refuse(*a, **k):
        raise AssertionError("doctor touched the network")

    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(model_set, "fetch", refuse)
    empty = tmp_path / "empty"
    empty.mkdir()
    (tiny / "v1" / "face_locator.pth").unlink()
    for root in (tiny, empty):
        before = _listing(root)
        for argv in ([], ["--json"], ["--weights", "v1_audio", "--variant", "acc"]):
            assert _run(capsys, "--models", str(root), *argv)[0] == 1
        assert _listing(root) == before
    missing = tmp_path / "not-there"
    assert _run(capsys, "--models", str(missing))[0] == 1
    assert not missing.exists()


def _fake_metadata(monkeypatch, versions: dict):
    real = env_mod.metadata.version

    def version(name):
        if name in versions:
            if versions[name] is None:
                raise env_mod.metadata.PackageNotFoundError(name)
            return versions[name]
        return real(name)

    monkeypatch.setattr(env_mod.metadata, "version", version)


def test_two_opencv_distributions_are_flagged_with_the_fix(monkeypatch):
    _fake_metadata(monkeypatch, {"opencv-python": "4.10.0.84"})
    report = env_mod.check_environment(imports=False)
    cv = next(p for p in report["packages"] if p["module"] == "cv2")
    assert cv["status"] == "conflict" and "opencv-python" in cv["problem"] and "opencv-contrib-python" in cv["problem"]
    assert "uninstall -y opencv-python opencv-contrib-python" in cv["fix"]
    assert cv["fix"].endswith("-m pip install 'opencv-contrib-python<6'")
    assert report["problems"] >= 1


def test_out_of_bounds_and_missing_packages_are_flagged(monkeypatch, tiny, capsys):
    _fake_metadata(monkeypatch, {"diffusers": "0.38.0", "soxr": None, "xformers": None, "peft": "0.10.0"})
    rows = {p["name"]: p for p in env_mod.check_environment(imports=False)["packages"]}
    assert rows["diffusers"]["status"] == "out of bounds"
    assert rows["diffusers"]["fix"] == f"{sys.executable} -m pip install 'diffusers>=0.30,<0.38'"
    assert rows["soxr"]["status"] == "missing" and rows["soxr"]["fix"].endswith("pip install 'soxr<2'")
    assert rows["xformers"]["status"] == "optional" and rows["xformers"]["problem"] is None
    assert rows["peft"]["status"] == "out of bounds" and not rows["peft"]["required"]
    rc, out = _run(capsys, "--models", str(tiny), "--weights", "v2", "--variant", "acc")
    assert rc == 1 and "package diffusers" in out and "package soxr" in out and "package peft" not in out


def test_the_folder_check_needs_no_diffusers(tiny):
    """A broken diffusers must not hide the weights report: the resolution code imports none of the loaders."""
    code = ("import sys; sys.modules['diffusers'] = None\n"
            "from echomimic_lib.jobs.doctor import diagnose\n"
            f"r = diagnose({str(tiny)!r}, 'v2', 'acc', imports=False)\n"
            "print(r['weight_sets'][0]['status'], 'echomimic_lib.model_set' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tiny", "False"]


def test_an_amd_rocm_build_is_shown_as_rocm_with_its_gpus(monkeypatch):
    """A ROCm build of torch has no CUDA version but reaches its GPUs through torch.cuda: it is not a 'CPU build'."""
    from types import SimpleNamespace

    import torch

    from echomimic_lib.jobs.doctor.report import _torch_lines

    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", "6.2.41134", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    props = SimpleNamespace(name="AMD Instinct MI300X", total_memory=192 * 2**30, major=9, minor=4, gcnArchName="gfx942:sramecc+:xnack-")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    info = env_mod.torch_info()
    assert info["hip"] == "6.2.41134" and info["gpus"] == [
        {"index": 0, "name": "AMD Instinct MI300X", "memory_gib": 192.0, "capability": "gfx942:sramecc+:xnack-"}]
    text = "\n".join(_torch_lines(info))
    assert "ROCm/HIP 6.2.41134" in text and "CPU build" not in text and "MI300X, 192.0 GiB (arch gfx942" in text
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # a ROCm build that sees no GPU says so
    assert "none visible" in "\n".join(_torch_lines(env_mod.torch_info()))
