"""``echomimic doctor``, the detector models (MediaPipe .task / .tflite, DWPose .onnx: ready / missing / broken),
``--comfyui PATH`` (the ComfyUI folders the nodes read, per workflow kind) and ``--strict`` (tiny sets fail)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from echomimic_lib.cli import main
from echomimic_lib.jobs.doctor import diagnose
from echomimic_lib.jobs.doctor.detectors import onnx_problem, task_problem, tflite_problem
from echomimic_lib.landmarks.mp_models import MODELS

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 4354\n"
TASK = "face_landmarker_v2_with_blendshapes.task"
TFLITE = "blaze_face_short_range.tflite"
REPACKAGED = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"


def _run(capsys, *argv):
    rc = main(["doctor", *argv])
    out = capsys.readouterr()
    return rc, out.out + out.err


def _json(capsys, *argv):
    rc = main(["doctor", *argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def _part(report, name):
    return next(p for p in report["shared"] if p["part"] == name)


def _file(report, part, name):
    return next(f for f in _part(report, part)["files"] if f["name"] == name)


def _listing(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture
def comfy(tiny_comfy_models, tmp_path):
    """A ComfyUI folder of our own (tiny weights for V1/V2, the real MediaPipe models), free to change."""
    shutil.copytree(tiny_comfy_models, tmp_path / "ComfyUI" / "models")
    return tmp_path / "ComfyUI"


def _onnx(path: Path, floats: int = 300_000) -> Path:
    """A small real ONNX model (y = x + w, with ``floats`` weights), written with the onnx package."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(floats, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [floats])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [floats])], [w])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


# ----------------------------------------------------------------------------------------------------- MediaPipe
def test_the_real_mediapipe_models_are_ready(shared_data, tmp_path):
    mp = shared_data / "mediapipe"
    assert task_problem(mp / TASK) is None and tflite_problem(mp / TFLITE) is None  # read in place
    root = tmp_path / "models"
    shutil.copytree(mp, root / "mediapipe")
    report = diagnose(root, "v1_audio", "normal", imports=False)
    row = _part(report, "mediapipe")
    assert row["status"] == "ready" and row["path"] == str(root / "mediapipe" / TASK)
    lm, det = _file(report, "mediapipe", "face_landmarker.task"), _file(report, "mediapipe", TFLITE)
    assert (lm["status"], lm["bytes"], lm["required"]) == ("ready", (mp / TASK).stat().st_size, True)
    assert (det["status"], det["bytes"], det["required"]) == ("ready", (mp / TFLITE).stat().st_size, False)
    assert any("echomimic dub" in n for n in lm["needed_for"]) and any("v1-audio" in n for n in lm["needed_for"])
    assert "library only" in det["needed_for"][0]
    assert "mediapipe face landmarker" not in " ".join(report["problems"])


def test_missing_mediapipe_models_come_with_the_command_that_fetches_them(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    report = diagnose(root, "v1_pose", "acc", imports=False)
    lm, det = _file(report, "mediapipe", "face_landmarker.task"), _file(report, "mediapipe", TFLITE)
    assert lm["status"] == det["status"] == "missing"
    dest = root / "mediapipe" / "face_landmarker.task"
    assert lm["fix"].split("\n")[-1] == f"curl -fL --create-dirs -o {dest} {MODELS['face_landmarker']['url']}"
    assert det["fix"] == f"curl -fL --create-dirs -o {root / 'mediapipe' / TFLITE} {MODELS['face_detector']['url']}"
    assert _part(report, "mediapipe")["missing"] == ["mediapipe/face_landmarker.task"]
    assert "mediapipe face landmarker: missing" in report["problems"]


def _broken_task(kind: str, real: bytes) -> bytes:
    if kind == "lfs":
        return LFS_POINTER.encode()
    if kind == "truncated":
        return real[: len(real) // 2]
    if kind == "crc":  # one byte changed inside face_landmarks_detector.tflite (stored, not compressed)
        return real[:1_000_000] + bytes([real[1_000_000] ^ 0xFF]) + real[1_000_001:]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, says", [("lfs", "Git LFS pointer"), ("truncated", "not a zip archive"), ("crc", "CRC")])
def test_a_broken_face_landmarker_is_named_and_fails_a_v1_check(kind, says, shared_data, tiny_comfy_models, tmp_path, capsys):
    root = tmp_path / "models"
    shutil.copytree(tiny_comfy_models / "echomimic", root)
    bad = root / "mediapipe" / TASK
    bad.write_bytes(_broken_task(kind, (shared_data / "mediapipe" / TASK).read_bytes()))
    report = diagnose(root, "v1_audio", "acc", imports=False)
    lm = _file(report, "mediapipe", "face_landmarker.task")
    assert lm["status"] == "broken" and says in lm["problem"] and str(bad) in lm["problem"]
    assert lm["fix"].split("\n")[-1].startswith(f"rm -- {bad} && curl -fL --create-dirs -o {root / 'mediapipe' / 'face_landmarker.task'} ")
    assert _part(report, "mediapipe")["status"] == "broken"
    assert report["problems"] == ["mediapipe face landmarker: broken"]
    assert "MediaPipe face landmarker missing or broken" in next(m for m in report["modes"] if m["mode"] == "v1-audio")["note"]
    rc, out = _run(capsys, "--models", str(root), "--weights", "v1_audio", "--variant", "acc")
    assert rc == 1 and "BROKEN" in out and says in out
    # a V2 check does not need it: the same folder is fine for V2
    assert _run(capsys, "--models", str(root), "--weights", "v2", "--variant", "acc")[0] == 0


def test_other_broken_mediapipe_files(shared_data, tmp_path, capsys):
    import zipfile

    real = (shared_data / "mediapipe" / TFLITE).read_bytes()
    bad = tmp_path / "x.tflite"
    bad.write_bytes(real[:4] + b"XXXX" + real[8:])
    assert "TFL3" in tflite_problem(bad)
    bad.write_bytes(b"")
    assert tflite_problem(bad) == "empty file"
    z = tmp_path / "other.task"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("something_else.tflite", b"\0" * 4096)
    assert "not a MediaPipe face landmarker bundle" in task_problem(z)
    # the optional face detector broken: shown with its fix, never fails the exit status
    root = tmp_path / "models"
    shutil.copytree(shared_data / "mediapipe", root / "mediapipe")
    (root / "mediapipe" / TFLITE).write_bytes(real[:4] + b"XXXX" + real[8:])
    report = diagnose(root, "v1_audio", imports=False)
    det = _file(report, "mediapipe", TFLITE)
    assert det["status"] == "broken" and "TFL3" in det["problem"] and det["fix"].startswith(f"rm -- {root / 'mediapipe' / TFLITE} && curl")
    assert _part(report, "mediapipe")["status"] == "ready" and "mediapipe" not in " ".join(report["problems"])


# ------------------------------------------------------------------------------------------------------- DWPose
def test_dwpose_models_ready_missing_and_broken(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    root = tmp_path / "models"
    det = _onnx(root / "dwpose" / "yolox_l.onnx")
    onnxruntime.InferenceSession(str(det), providers=["CPUExecutionProvider"])  # a real ONNX file, as a runtime sees it
    assert onnx_problem(det) is None
    report = diagnose(root, "v2", "normal", imports=False)
    row = _part(report, "dwpose")
    assert row["status"] == "missing" and row["missing"] == ["dwpose/dw-ll_ucoco_384.onnx"]
    assert _file(report, "dwpose", "yolox_l.onnx")["status"] == "ready"
    pose = _file(report, "dwpose", "dw-ll_ucoco_384.onnx")
    assert pose["fix"] == (f"curl -fL --create-dirs -o {root / 'dwpose' / 'dw-ll_ucoco_384.onnx'} "
                           "https://huggingface.co/yzd-v/DWPose/resolve/main/dw-ll_ucoco_384.onnx")
    assert any("--pose VIDEO" in n for n in pose["needed_for"])
    shutil.copy(det, root / "dw-ll_ucoco_384.onnx")  # the models folder itself is searched too
    row = _part(diagnose(root, "v2", "normal", imports=False), "dwpose")
    assert row["status"] == "ready" and row["bytes"] == 2 * det.stat().st_size

    whole = det.read_bytes()
    cases = {"truncated": whole[:-1000], "Git LFS pointer": LFS_POINTER.encode(), "empty file": b"",
             "not an ONNX model": bytes(range(256)) * 8192}
    for says, data in cases.items():
        det.write_bytes(data)
        report = diagnose(root, "v2", "normal", imports=False)
        f = _file(report, "dwpose", "yolox_l.onnx")
        assert f["status"] == "broken" and says in f["problem"], (says, f["problem"])
        assert f["fix"].startswith(f"rm -- {det} && curl -fL --create-dirs -o {root / 'dwpose' / 'yolox_l.onnx'} ")
        assert _part(report, "dwpose")["status"] == "broken"
        assert not any("dwpose" in p for p in report["problems"])  # optional: never fails the exit status
    small = _onnx(tmp_path / "small.onnx", floats=1000)
    assert "too small" in onnx_problem(small)


# ------------------------------------------------------------------------------------------------------ --strict
def test_strict_makes_tiny_sets_fail(tiny_comfy_models, capsys):
    root = tiny_comfy_models / "echomimic"
    argv = ["--models", str(root), "--weights", "v2", "--variant", "acc"]
    rc, out = _run(capsys, *argv)
    assert rc == 0 and "All checked parts are ready." in out
    rc, out = _run(capsys, *argv, "--strict")
    assert rc == 1 and "v2 acc: tiny (random weights; --strict)" in out and "not ready (tiny weights)" in out
    rc, report = _json(capsys, *argv, "--strict")
    assert rc == 1 and report["strict"] is True and report["ok"] is False
    assert [m["ready"] for m in report["modes"]] == [False]
    assert _json(capsys, *argv)[1]["strict"] is False


# ------------------------------------------------------------------------------------------------------ --comfyui
def _safetensors(path: Path, **tensors) -> Path:
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(v) for k, v in (tensors or {"w": 4}).items()}, str(path))
    return path


def _v3_for_comfyui(models: Path) -> None:
    """What the EchoMimic V3 Loader reads (base, flash-pro, wav2vec2) and core's three files; no CLI encoders."""
    v3 = models / "echomimic" / "v3-flash"
    (v3 / "Wan2.1-Fun-V1.1-1.3B-InP").mkdir(parents=True)
    (v3 / "Wan2.1-Fun-V1.1-1.3B-InP" / "config.json").write_text("{}")
    _safetensors(v3 / "Wan2.1-Fun-V1.1-1.3B-InP" / "diffusion_pytorch_model.safetensors")
    _safetensors(v3 / "echomimicv3-flash-pro" / "diffusion_pytorch_model.safetensors")
    (v3 / "chinese-wav2vec2-base").mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (v3 / "chinese-wav2vec2-base" / name).write_text("{}")
    _safetensors(v3 / "chinese-wav2vec2-base" / "model.safetensors")
    _safetensors(models / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    _safetensors(models / "clip_vision" / "clip_vision_h.safetensors")
    _safetensors(models / "vae" / "wan_2.1_vae.safetensors")


def test_comfyui_install_per_workflow(comfy, capsys):
    models = comfy / "models"
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v1_audio")
    assert rc == 0 and report["models"] == str(models / "echomimic")
    c = report["comfyui"]
    assert c["models_dir"] == str(models) and c["core"] == []  # no V3 asked: core's files are not checked
    assert [f["kind"] for f in c["folders"]] == ["echomimic", "vae", "clip_vision", "text_encoders", "diffusion_models", "loras"]
    assert next(f for f in c["folders"] if f["kind"] == "text_encoders")["paths"] == [str(models / "text_encoders"), str(models / "clip")]
    assert [(m["mode"], m["variant"], m["ready"]) for m in c["modes"]] == [("V1 audio", "normal", True), ("V1 audio", "acc", True)]
    assert "tiny random weights: renders noise" in c["modes"][0]["notes"]
    assert _run(capsys, "--comfyui", str(models), "--weights", "v1_audio")[0] == 0  # its models folder works too

    # V3: the CLI set lacks its own encoders, the ComfyUI one needs only the loader's three parts and core's files
    _v3_for_comfyui(models)
    assert _run(capsys, "--models", str(models / "echomimic"), "--weights", "v3-flash")[0] == 1
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v3-flash")
    assert rc == 0, report["problems"]
    assert [c["status"] for c in report["comfyui"]["core"]] == ["ready"] * 3
    assert report["comfyui"]["modes"] == [{"mode": "V3 flash-pro", "variant": None, "ready": True, "missing": [], "notes": []}]

    (models / "clip_vision" / "clip_vision_h.safetensors").unlink()
    (models / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors").rename(models / "umt5.tmp")
    (models / "clip").mkdir()
    (models / "umt5.tmp").rename(models / "clip" / "umt5_xxl_fp16.safetensors")  # the older folder, another name
    wan = models / "vae" / "wan_2.1_vae.safetensors"
    wan.write_bytes(wan.read_bytes()[:-2])
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v3-flash")
    core = {c["part"]: c for c in report["comfyui"]["core"]}
    assert rc == 1 and report["problems"] == ["comfyui clip_vision: missing", "comfyui wan_vae: broken"]
    assert core["text_encoder"]["status"] == "ready" and core["text_encoder"]["path"] == str(models / "clip" / "umt5_xxl_fp16.safetensors")
    assert "select umt5_xxl_fp8_e4m3fn_scaled.safetensors" in core["text_encoder"]["problem"]
    assert core["clip_vision"]["fix"] == (f"curl -fL --create-dirs -o {models / 'clip_vision' / 'clip_vision_h.safetensors'} "
                                          f"{REPACKAGED}/clip_vision/clip_vision_h.safetensors")
    assert "truncated" in core["wan_vae"]["problem"] and core["wan_vae"]["fix"].startswith(f"rm -- {wan} && curl")
    assert report["comfyui"]["modes"][0]["missing"] == ["clip_vision", "wan_vae"]

    shutil.rmtree(models / "echomimic" / "v3-flash" / "echomimicv3-flash-pro")
    _safetensors(models / "diffusion_models" / "echomimicv3-flash-pro.safetensors")
    (comfy / "extra_model_paths.yaml").write_text("comfyui:\n  base_path: /elsewhere\n")
    rc, out = _run(capsys, "--comfyui", str(comfy), "--weights", "v3-flash")
    assert rc == 1 and "v3-flash/echomimicv3-flash-pro/diffusion_pytorch_model.safetensors" in out
    assert "auto_download in the EchoMimic V3 Loader" in out and "umt5-xxl/" not in out  # only the loader's parts
    assert "does not read models/diffusion_models" in out and f"note: read {comfy / 'extra_model_paths.yaml'}" in out


def test_comfyui_vae_folder_without_config_is_passed_over(comfy, capsys, monkeypatch):
    """Without models/echomimic/sd-vae-ft-mse, ComfyUI's models/vae (single files, no config.json, beside
    models/echomimic) is not taken as the SD VAE folder: the loaders fall back to an ft-mse (or echomimic) file there,
    and doctor reports that file, as the loader picks it (it used to be picked as a folder, and could not load).
    A missing one: tests/test_doctor_extra_paths.py."""
    from tests._pack import sub

    models = comfy / "models"
    shutil.rmtree(models / "echomimic" / "sd-vae-ft-mse")
    report = diagnose(None, "v1_audio", "normal", imports=False, comfyui=comfy)
    vae = _part(report, "vae")
    assert vae["status"] == "ready" and vae["path"] == str(models / "vae" / "echomimic_tiny_vae.safetensors")
    assert report["ok"] and report["comfyui"]["modes"][0]["ready"], report["problems"]
    bridge = sub("nodes.comfy_bridge")  # the node loader, outside ComfyUI, on the same folder
    monkeypatch.setattr(bridge, "MODELS_DIR", models)
    pick = sub("nodes.loader")._pick_vae
    got = pick(models / "echomimic", "v1_audio", "normal", "auto")  # the ComfyUI fallback: a VAE file in models/vae
    assert got == Path(vae["path"])
    (models / "echomimic" / "sd-vae-ft-mse").mkdir()
    (models / "echomimic" / "sd-vae-ft-mse" / "config.json").write_text("{}")
    assert pick(models / "echomimic", "v1_audio", "normal", "auto") == models / "echomimic" / "sd-vae-ft-mse"
    assert _part(diagnose(None, "v1_audio", "normal", imports=False, comfyui=comfy), "vae")["path"] == str(
        models / "echomimic" / "sd-vae-ft-mse")


def test_comfyui_bad_arguments(tmp_path, capsys):
    rc, out = _run(capsys, "--comfyui", str(tmp_path / "nowhere"))
    assert rc == 2 and "no models/ folder there" in out
    rc, out = _run(capsys, "--comfyui", str(tmp_path), "--models", str(tmp_path))
    assert rc == 2 and "--models and --comfyui: give one" in out


# ---------------------------------------------------------------------------------------------------- read-only
def test_the_new_checks_write_nothing_and_touch_no_network(comfy, shared_data, monkeypatch, capsys):
    import urllib.request

    import huggingface_hub

    from echomimic_lib import model_set
    from echomimic_lib.landmarks import mp_models

    def refuse(*a, **k):
        raise AssertionError("doctor touched the network or tried to download")

    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(model_set, "fetch", refuse)
    monkeypatch.setattr(mp_models, "download_model", refuse)
    models = comfy / "models"
    (models / "echomimic" / "mediapipe" / TASK).write_text(LFS_POINTER)  # broken and missing parts everywhere
    (models / "echomimic" / "dwpose").mkdir()
    (models / "echomimic" / "dwpose" / "yolox_l.onnx").write_bytes(b"\x08\x07" + b"\0" * 10)
    (models / "clip_vision").mkdir()
    (models / "clip_vision" / "clip_vision_h.safetensors").write_text(LFS_POINTER)
    before, shared_before = _listing(comfy), _listing(shared_data / "mediapipe")
    for argv in ([], ["--json"], ["--strict"], ["--weights", "v3-flash"], ["--weights", "v1_pose", "--variant", "acc"]):
        assert _run(capsys, "--comfyui", str(comfy), *argv)[0] == 1
        assert _run(capsys, "--models", str(models / "echomimic"), *argv)[0] == 1
    assert _listing(comfy) == before
    assert _listing(shared_data / "mediapipe") == shared_before
