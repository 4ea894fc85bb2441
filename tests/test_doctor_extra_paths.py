"""``echomimic doctor --comfyui``: ComfyUI's extra_model_paths.yaml (and ``--extra-model-paths FILE``) read as ComfyUI
reads it (relative base_path, ``~``, multi-line values, is_default, legacy names), models found outside the ComfyUI
tree and reported with where they came from; the V3 Loader's folder choices; a missing VAE listed once; a malformed
yaml or a missing pyyaml as a finding."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from echomimic_lib.jobs.doctor import diagnose
from echomimic_lib.jobs.doctor.comfy_paths import DEFAULT, comfy_folders
from tests.test_doctor_more import _json, _part, _run, _safetensors

V3_PARTS = ("Wan2.1-Fun-V1.1-1.3B-InP", "echomimicv3-flash-pro", "chinese-wav2vec2-base")


def _v3(folder: Path, flash: bool = True) -> Path:
    """What the EchoMimic V3 Loader reads in one folder (base, flash-pro, wav2vec2)."""
    (folder / V3_PARTS[0]).mkdir(parents=True)
    (folder / V3_PARTS[0] / "config.json").write_text("{}")
    _safetensors(folder / V3_PARTS[0] / "diffusion_pytorch_model.safetensors")
    if flash:
        _safetensors(folder / V3_PARTS[1] / "diffusion_pytorch_model.safetensors")
    (folder / V3_PARTS[2]).mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (folder / V3_PARTS[2] / name).write_text("{}")
    _safetensors(folder / V3_PARTS[2] / "model.safetensors")
    return folder


@pytest.fixture
def comfy(tiny_comfy_models, tmp_path):
    shutil.copytree(tiny_comfy_models, tmp_path / "ComfyUI" / "models")
    return tmp_path / "ComfyUI"


def test_folders_in_comfyuis_order(tmp_path, monkeypatch):
    """utils/extra_config + folder_paths.add_model_folder_path: defaults first, a relative base_path from the yaml's
    folder, '~' expanded, one path a line, clip/unet = text_encoders/diffusion_models, is_default puts each path of
    its section first (the later line ahead), a path already there is not added twice, models/echomimic last."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    comfy, models = tmp_path / "ComfyUI", tmp_path / "ComfyUI" / "models"
    models.mkdir(parents=True)
    (comfy / "extra_model_paths.yaml").write_text(
        "a111:\n  base_path: ../shared\n  vae: models/VAE\n  loras: |\n    models/Lora\n    models/LyCORIS\n"
        "  clip: enc\n  unet: /abs/unet\n"
        "comfyui:\n  base_path: ~/cm\n  is_default: true\n  clip_vision: |\n    cv1\n    cv2\n  echomimic: em\n"
        "  vae: ../../shared/models/VAE\n"
        "empty:\n")
    given = tmp_path / "conf" / "more.yaml"
    given.parent.mkdir()
    given.write_text("nobase:\n  echomimic: rel/em\n  text_encoders: " + str(models / "clip") + "\n")
    f = comfy_folders(comfy, models, [given])
    shared, home = tmp_path / "shared" / "models", tmp_path / "home" / "cm"
    assert f.roots("vae") == [shared / "VAE", models / "vae"]  # moved first by the is_default section
    assert f.roots("loras") == [models / "loras", shared / "Lora", shared / "LyCORIS"]
    assert f.roots("clip") == f.roots("text_encoders") == [models / "text_encoders", models / "clip", tmp_path / "shared" / "enc"]
    assert f.roots("diffusion_models") == [models / "unet", models / "diffusion_models", Path("/abs/unet")]
    assert f.roots("clip_vision") == [home / "cv2", home / "cv1", models / "clip_vision"]
    assert f.roots("echomimic") == [home / "em", tmp_path / "conf" / "rel" / "em", models / "echomimic"]
    assert f.source("vae", models / "vae") == DEFAULT and f.source("unet", "/abs/unet") == f"{comfy / 'extra_model_paths.yaml'} (a111)"
    assert f.source("echomimic", tmp_path / "conf" / "rel" / "em") == f"{given} (nobase)"
    assert f.files == [str(comfy / "extra_model_paths.yaml"), str(given)] and f.problems == []


def test_models_outside_the_tree_are_found_and_said_where(comfy, tmp_path, capsys):
    models, store = comfy / "models", tmp_path / "store"
    shutil.move(str(models / "echomimic"), str(store / "em"))  # the whole pack folder lives outside ComfyUI
    _v3(store / "em" / "my-v3")  # under a V3 Loader folder name of its own
    _safetensors(store / "enc_b" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    _safetensors(store / "cv" / "clip_vision_h.safetensors")
    _safetensors(store / "wan" / "wan_2.1_vae.safetensors")
    yaml_file = comfy / "extra_model_paths.yaml"
    yaml_file.write_text("mine:\n  base_path: ../store\n  echomimic: em\n  text_encoders: |\n    enc_a\n    enc_b\n"
                         "  clip_vision: cv\nwan:\n  base_path: ../store\n  is_default: true\n  vae: wan\n")
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v1_audio", "--variant", "normal")
    assert rc == 0, report["problems"]
    s = report["weight_sets"][0]
    assert s["status"] == "tiny" and s["found_in"] == f"{store / 'em'} ({yaml_file} (mine))"
    assert report["models"] == str(store / "em") and _part(report, "mediapipe")["status"] == "ready"
    assert _part(report, "vae")["path"] == str(store / "em" / "sd-vae-ft-mse")
    vae = next(f for f in report["comfyui"]["folders"] if f["kind"] == "vae")
    assert vae["paths"] == [str(store / "wan"), str(models / "vae")] and vae["roots"][0]["source"] == f"{yaml_file} (wan)"

    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v3-flash")
    assert rc == 0, report["problems"]
    v3 = report["weight_sets"][0]
    assert v3["status"] == "ready" and v3["found_in"].startswith(f"{store / 'em' / 'my-v3'} (the V3 Loader's folder 'my-v3'")
    core = {c["part"]: c for c in report["comfyui"]["core"]}
    assert core["text_encoder"]["path"] == str(store / "enc_b" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    assert core["text_encoder"]["source"] == f"{yaml_file} (mine)" and core["wan_vae"]["found_in"] == str(store / "wan")
    rc, out = _run(capsys, "--comfyui", str(comfy), "--weights", "v3-flash")
    assert rc == 0 and f"from {store / 'cv'} ({yaml_file} (mine))" in out
    assert f"+ {store / 'enc_a'} (not there)  from {yaml_file} (mine) (searched 3.)" in out
    assert f"+ {store / 'em'}  from {yaml_file} (mine) (searched 1.)" in out

    yaml_file.unlink()  # without it, ComfyUI (and doctor) look only in its own folders
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v3-flash")
    assert rc == 1 and "comfyui text_encoder: missing" in report["problems"] and "v3-flash: missing" in report["problems"]
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v3-flash", "--extra-model-paths", str(tmp_path / "x.yaml"))
    assert rc == 1 and any("x.yaml: no such file" in p for p in report["problems"])
    given = tmp_path / "given.yaml"  # the file ComfyUI was started with (--extra-model-paths-config)
    given.write_text(f"all:\n  base_path: {store}\n  echomimic: em\n  clip: enc_b\n  clip_vision: cv\n  vae: wan\n")
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v3-flash", "--extra-model-paths", str(given))
    assert rc == 0, report["problems"]
    assert report["comfyui"]["core"][0]["source"] == f"{given} (all)"


def test_v3_loader_folder_choices(comfy, tmp_path, capsys):
    """The V3 Loader lists every folder of an echomimic root holding the flash-pro file; doctor shows the first ready
    one (an incomplete one is listed beside it), and a folder name is taken from the first root holding it."""
    em, other = comfy / "models" / "echomimic", tmp_path / "other"
    _v3(em / "a-broken-one")
    (em / "a-broken-one" / V3_PARTS[0] / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    _v3(other / "v3-flash")
    (comfy / "extra_model_paths.yaml").write_text(f"x:\n  echomimic: {other}\n")
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v3-flash")
    v3 = report["weight_sets"][0]
    assert [(c["folder"], c["status"]) for c in v3["choices"]] == [("a-broken-one", "broken"), ("v3-flash", "ready")]
    assert v3["status"] == "ready" and v3["found_in"].startswith(f"{other / 'v3-flash'} (the V3 Loader's folder 'v3-flash'")
    shutil.rmtree(other / "v3-flash" / V3_PARTS[1])  # no flash-pro file: no longer a choice
    _v3(em / "v3-flash", flash=False)  # nor here
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v3-flash")
    v3 = report["weight_sets"][0]
    assert rc == 1 and [c["folder"] for c in v3["choices"]] == ["a-broken-one"] and v3["status"] == "broken"
    shutil.rmtree(em / "a-broken-one")  # none: the loader offers 'v3-flash', the first root holding it (the yaml's)
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v3-flash")
    v3 = report["weight_sets"][0]
    assert v3["status"] == "missing" and v3["choices"] == [{"folder": "v3-flash", "path": str(other / "v3-flash"), "status": "missing"}]
    assert v3["missing"] == [f"v3-flash/{V3_PARTS[1]}/diffusion_pytorch_model.safetensors"]


def test_a_missing_vae_is_listed_once(comfy, tmp_path, capsys):
    models = comfy / "models"
    shutil.rmtree(models / "echomimic" / "sd-vae-ft-mse")
    (models / "vae" / "echomimic_tiny_vae.safetensors").rename(tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors")
    rc, out = _run(capsys, "--comfyui", str(comfy), "--weights", "v1_audio", "--variant", "normal")
    assert rc == 1 and out.count("sd-vae-ft-mse/config.json") == 1, out
    assert "1 problem(s): vae: missing" in out and "not ready: vae;" in out and "normal weights" not in out
    assert f"or put an SD ft-mse VAE file, e.g. vae-ft-mse-840000-ema-pruned.safetensors, into {models / 'vae'}" in out
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v1_audio", "--variant", "normal")
    assert report["weight_sets"][0]["status"] == "tiny" and report["weight_sets"][0]["missing"] == []
    assert report["comfyui"]["modes"][0]["missing"] == ["vae"] and report["problems"] == ["vae: missing"]
    # an ft-mse file in a vae folder the yaml adds: what the loader's vae 'auto' takes
    (tmp_path / "vaes").mkdir()
    shutil.move(str(tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors"), str(tmp_path / "vaes"))
    (comfy / "extra_model_paths.yaml").write_text(f"s:\n  vae: {tmp_path / 'vaes'}\n")
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v1_audio", "--variant", "normal")
    vae = _part(report, "vae")
    assert rc == 0 and vae["path"] == str(tmp_path / "vaes" / "vae-ft-mse-840000-ema-pruned.safetensors")
    assert vae["source"] == f"{comfy / 'extra_model_paths.yaml'} (s)"
    assert report["comfyui"]["modes"][0]["ready"] and not report["modes"][0]["ready"]  # the node takes it, animate not
    assert "a file in a ComfyUI vae folder only" in report["modes"][0]["why"]


def test_detectors_in_another_echomimic_root(comfy, tmp_path, capsys):
    """The nodes hand every echomimic root to MediaPipe and DWPose: a face landmarker only in the yaml's root counts."""
    shutil.move(str(comfy / "models" / "echomimic" / "mediapipe"), str(tmp_path / "extra" / "mediapipe"))
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v1_audio", "--variant", "normal")
    assert rc == 1 and report["problems"] == ["mediapipe face landmarker: missing"]
    (comfy / "extra_model_paths.yaml").write_text(f"x:\n  echomimic: {tmp_path / 'extra'}\n")
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v1_audio", "--variant", "normal")
    mp = _part(report, "mediapipe")
    assert rc == 0 and mp["status"] == "ready" and mp["path"].startswith(str(tmp_path / "extra" / "mediapipe"))
    assert mp["source"] == f"{comfy / 'extra_model_paths.yaml'} (x)"
    assert report["models"] == str(comfy / "models" / "echomimic")  # the weights' root (the yaml's has none)


@pytest.mark.parametrize("text, says", [
    ("comfyui:\n  vae: [unclosed\n", "not valid YAML"),
    ("comfyui:\n\tvae: x\n", "not valid YAML"),
    ("- vae\n- clip\n", "a list, not a mapping of sections"),
    ("", "empty; ComfyUI stops at start"),
    ("comfyui: models\n", "section 'comfyui' is a str"),
    ("comfyui:\n  vae:\n", "'vae' has no path"),
    ("comfyui:\n  base_path: 3\n  vae: x\n", "base_path has no path"),
])
def test_a_malformed_yaml_is_a_finding(comfy, capsys, text, says):
    (comfy / "extra_model_paths.yaml").write_text(text)
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v1_audio", "--variant", "normal")
    found = [p for p in report["problems"] if "extra_model_paths.yaml" in p]
    assert rc == 1 and len(found) == 1 and says in found[0], report["problems"]
    assert report["weight_sets"][0]["status"] == "tiny"  # the default folders are still checked
    rc, out = _run(capsys, "--comfyui", str(comfy), "--weights", "v1_audio", "--variant", "normal")
    assert rc == 1 and f"PROBLEM {comfy / 'extra_model_paths.yaml'}: " in out


def test_without_pyyaml_the_yaml_is_a_finding(comfy, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v1_audio", "--variant", "normal")
    assert rc == 0, report["problems"]  # no yaml file: pyyaml is not needed
    (comfy / "extra_model_paths.yaml").write_text("comfyui:\n  vae: x\n")
    rc, report = _json(capsys, "--comfyui", str(comfy), "--weights", "v1_audio", "--variant", "normal")
    assert rc == 1 and len(report["problems"]) == 1 and "pyyaml package is not installed" in report["problems"][0]


def test_extra_model_paths_goes_with_comfyui(tmp_path, capsys):
    rc, out = _run(capsys, "--extra-model-paths", str(tmp_path / "x.yaml"))
    assert rc == 2 and "--extra-model-paths: goes with --comfyui" in out
    assert diagnose(tmp_path, "v1_audio", "normal", imports=False)["weight_sets"][0].get("found_in") is None
