"""``echomimic doctor``: chained fixes stop at the first failure (PowerShell 5.1 and 7 too), a download fails on an HTTP
error, directory problems under their own JSON key, ComfyUI Desktop without its bundled ComfyUI (Linux), and the
pose-library fix through the Python running doctor where ``echomimic`` is on no PATH. Real folders in tmp_path;
the POSIX chain is run by a real shell."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.jobs.doctor import desktop, diagnose, shell
from echomimic_lib.jobs.doctor.detectors import mediapipe_row
from echomimic_lib.jobs.doctor.models import check_shared
from echomimic_lib.jobs.doctor.report import render
from tests.test_doctor_roots import _comfy, _doctor, _pack
from tests.test_doctor_windows import _desktop

PY = r"C:\Users\Ann Lee\ComfyUI_windows_portable\python_embeded\python.exe"


@pytest.fixture
def windows(monkeypatch):
    monkeypatch.setattr(shell, "is_windows", lambda: True)
    monkeypatch.setattr(sys, "executable", PY)


@pytest.fixture
def posix(monkeypatch):
    monkeypatch.setattr(shell, "is_windows", lambda: False)


# ------------------------------------------------------------------------------------------------ chained fixes
def test_powershell_chain_runs_each_command_only_after_the_one_before_worked(windows):
    assert shell.then("a", "b") == "a; if ($?) { b }"
    assert shell.then("a", "b", "c") == "a; if ($?) { b; if ($?) { c } }"
    # a chain given again is one flat chain, not "a; if ($?) { b }; if ($?) { ... }" (whose $? after a skipped block
    # would let the rest run)
    assert shell.then(shell.then("a", "b"), shell.then("c", "d")) == "a; if ($?) { b; if ($?) { c; if ($?) { d } } }"
    assert shell.then("", "a", None) == "a" and shell.then() == ""
    # a remark is a comment line before the chain, outside the braces
    assert shell.then("rm x", shell.fix("curl y", "or run animate once")) == "# or run animate once\nrm x; if ($?) { curl y }"
    assert shell.then('Remove-Item -LiteralPath "C:\\a  (b)\\f"', "c") == 'Remove-Item -LiteralPath "C:\\a  (b)\\f"; if ($?) { c }'


def test_posix_chain_and_its_remarks(posix):
    assert shell.then(shell.then("a", "b"), shell.fix("c", "or d")) == "# or d\na && b && c"
    assert shell.then("rm -- 'a  (x)'", "c") == "rm -- 'a  (x)' && c"  # two spaces and '(' inside quotes: a path


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_posix_chain_really_stops_at_a_failed_command(tmp_path, posix):
    made = tmp_path / "made it"
    subprocess.run(["sh", "-c", shell.then(shell.remove([tmp_path / "no such file"]), shell.make_dirs(made))], check=False)
    assert not made.exists()
    (tmp_path / "there").write_text("x")
    assert subprocess.run(["sh", "-c", shell.then(shell.remove([tmp_path / "there"]), shell.make_dirs(made))]).returncode == 0
    assert made.is_dir() and not (tmp_path / "there").exists()


def test_a_broken_landmarker_fix_on_windows_keeps_its_remark_outside_the_chain(tmp_path, windows):
    (tmp_path / "mediapipe").mkdir()
    (tmp_path / "mediapipe" / "face_landmarker.task").write_bytes(b"")
    remark, fix = next(f for f in mediapipe_row(tmp_path)["files"] if f["status"] == "broken")["fix"].split("\n")
    assert fix.startswith('Remove-Item -LiteralPath ') and "; if ($?) { curl.exe -fL --create-dirs -o " in fix
    assert remark == "# or run animate / dub / landmarks once without --offline" and fix.endswith(" }"), fix
    assert fix.count("{") == fix.count("}") == 1


def test_download_fails_on_an_http_error_and_quotes_its_url(posix):
    assert shell.download("/m/f", "https://h/x?a=1&b") == "curl -fL --create-dirs -o /m/f 'https://h/x?a=1&b'"


# ------------------------------------------------------------------------------------------------ JSON layout
def test_directory_problems_have_their_own_key(tmp_path, capsys):
    comfy, base = _comfy(tmp_path), tmp_path / "base"
    (base / "models").mkdir(parents=True)  # no custom_nodes with the pack: a directories problem too
    (comfy / "extra_model_paths.yaml").write_text("- not a mapping\n")
    report = _doctor(comfy, base_directory=base, input_directory=tmp_path / "no input")
    c = report["comfyui"]
    dirs, yaml_problems = c["directories"]["problems"], c["extra_model_paths"]["problems"]
    assert [p.split(":")[0] for p in dirs] == [f"--input-directory {tmp_path / 'no input'}", "custom_nodes"]
    assert len(yaml_problems) == 1 and yaml_problems[0].startswith(str(comfy / "extra_model_paths.yaml"))
    assert not any("--input-directory" in p or "custom_nodes" in p for p in yaml_problems)
    assert report["problems"][-3:] == [f"comfyui {p}" for p in dirs + yaml_problems]
    lines = render(report)
    assert sum(line.startswith("  PROBLEM ") for line in lines) == 3
    # without start options: the key is there, empty, and the folders ComfyUI uses are named
    c = _doctor(comfy)["comfyui"]["directories"]
    assert c["problems"] == [] and c["base"] is None and c["input"] == str(comfy / "input")


# ------------------------------------------------------------------------------------------------ ComfyUI Desktop
@pytest.fixture
def desktop_linux(tmp_path, monkeypatch):
    monkeypatch.setattr(desktop, "PACK", tmp_path / "src" / "ComfyUI-EchoMimic")  # not in a custom_nodes folder
    monkeypatch.setattr(desktop, "system", lambda: "linux")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return tmp_path / "home" / ".config" / "ComfyUI"


def test_desktop_on_linux_without_its_code_says_how_to_name_it(tmp_path, desktop_linux, posix):
    base = tmp_path / "Comfy files"
    y = _desktop(desktop_linux, base)
    (base / "extra_model_paths.yaml").write_text(f"stray:\n  echomimic: {tmp_path / 'stray'}\n")  # not ComfyUI's own
    found = desktop.find_comfyui()
    assert found.code is None and found.comfyui == base and found.as_dict()["code"] is None
    note = next(n for n in found.notes if "bundled ComfyUI" in n)
    assert "installs no copy of it on Linux" in note
    assert note.endswith(f"echomimic doctor --comfyui PATH --base-directory {shlex.quote(str(base))} "
                         f"--extra-model-paths {y}")
    report = diagnose(None, "v2", "normal", imports=False, comfyui="auto")
    roots = next(f for f in report["comfyui"]["folders"] if f["kind"] == "echomimic")["paths"]
    assert str(tmp_path / "stray") not in roots and report["comfyui"]["extra_model_paths"]["files"] == [str(y)]
    assert f"ComfyUI {base} (its base directory; ComfyUI's own folder was not found)" in render(report)
    (base / "custom_nodes" / "ComfyUI-EchoMimic" / "nodes" / "comfy_bridge.py").unlink()  # the pack not there
    pack = [p for p in diagnose(None, "v2", "normal", imports=False, comfyui="auto")["problems"] if "custom_nodes" in p]
    assert len(pack) == 1 and "loads custom nodes from there only: move or link" in pack[0], pack  # no "(not from" itself
    # the command the note gives, with the code folder found by hand, reads that folder's own yaml
    code = _comfy(tmp_path / "app")
    (code / "extra_model_paths.yaml").write_text(f"own:\n  echomimic: {tmp_path / 'own'}\n")
    report = _doctor(code, base_directory=base, extra_paths=[y])
    assert str(tmp_path / "own") in next(f for f in report["comfyui"]["folders"] if f["kind"] == "echomimic")["paths"]


def test_no_comfyui_at_all_on_linux_names_comfy_desktops_installs(desktop_linux):
    with pytest.raises(EchoMimicError, match=r"--comfyui PATH \(the newer Comfy Desktop keeps each install under "
                                             r"~/ComfyUI-Installs"):
        desktop.find_comfyui()


def test_desktop_on_windows_in_comfyui_electron(tmp_path, monkeypatch):
    monkeypatch.setattr(desktop, "PACK", tmp_path / "src" / "ComfyUI-EchoMimic")
    env = {"APPDATA": str(tmp_path / "Roaming"), "LOCALAPPDATA": str(tmp_path / "Local")}
    base = tmp_path / "Documents" / "ComfyUI"
    _desktop(tmp_path / "Roaming" / "ComfyUI", base)
    places = desktop.bundled_places("win32", env)
    assert places[0] == tmp_path / "Local" / "Programs" / "@comfyorgcomfyui-electron" / "resources" / "ComfyUI"
    found = desktop.find_comfyui("win32", env)
    assert found.code is None and all(str(p) in " ".join(found.notes) for p in places)
    code = _comfy(tmp_path / "Local" / "Programs" / "comfyui-electron" / "resources")
    found = desktop.find_comfyui("win32", env)
    assert (found.code, found.comfyui, found.base) == (code, code, base)
    assert not any("bundled ComfyUI" in n for n in found.notes)


# ------------------------------------------------------------------------------------------------ other fix lines
def test_pose_library_fix_runs_through_this_python_where_echomimic_is_on_no_path(tmp_path, windows, monkeypatch):
    monkeypatch.setattr(shell.shutil, "which", lambda name: None)
    poses = next(p for p in check_shared(tmp_path, []) if p["part"] == "poses")
    assert poses["fix"].split("\n")[-1].startswith(f'& "{PY}" -m echomimic_lib.cli poses --video DRIVING.mp4 -o ')
    comfy = _comfy(tmp_path / "c")
    _pack(comfy / "custom_nodes")
    row = next(p for p in _doctor(comfy)["shared"] if p["part"] == "poses")
    assert row["status"] == "missing" and row["fix"].split("\n")[-1].startswith(f'& "{PY}" -m echomimic_lib.cli poses --video ')


# ------------------------------------------------------------------------------------------------ what the loader refuses
def test_a_vae_auto_file_linked_from_outside_its_folder_is_broken_as_the_loader_refuses_it(tmp_path, posix):
    comfy = _comfy(tmp_path / "c")
    store = tmp_path / "store"
    store.mkdir()
    real = store / "vae-ft-mse-840000-ema-pruned.safetensors"
    real.write_bytes(b"x")
    (comfy / "models" / "vae").mkdir()
    link = comfy / "models" / "vae" / real.name
    link.symlink_to(real)
    report = _doctor(comfy)
    vae = next(p for p in report["shared"] if p["part"] == "vae")
    assert vae["status"] == "broken" and f"a link to {real}, outside {comfy / 'models' / 'vae'}" in vae["broken"][0]["problem"]
    assert vae["fix"] == (f"# or add {store} as a 'vae:' folder in extra_model_paths.yaml and remove the link\n"
                          f"rm -- {link} && cp -- {real} {link}")
    assert "vae: broken" in report["problems"] and not report["comfyui"]["modes"][0]["ready"]
    # the same file copied in (or a linked vae folder: ComfyUI's own root is resolved too) passes this check
    link.unlink()
    (comfy / "models" / "vae").rmdir()
    (comfy / "models" / "vae").symlink_to(store, target_is_directory=True)
    vae = next(p for p in _doctor(comfy)["shared"] if p["part"] == "vae")
    assert not any("outside" in b["problem"] for b in vae.get("broken", [])), vae


def test_copy_forms(monkeypatch):
    monkeypatch.setattr(shell, "is_windows", lambda: False)
    assert shell.copy("/a b/x", "/c/y") == "cp -- '/a b/x' /c/y"
    monkeypatch.setattr(shell, "is_windows", lambda: True)
    assert shell.copy("C:\\a b\\x", "C:\\y") == 'Copy-Item -LiteralPath "C:\\a b\\x" -Destination C:\\y'


def test_pip_fixes_reinstall_only_the_package_not_its_dependencies(monkeypatch, posix):
    from echomimic_lib.jobs.doctor import environment as env_mod
    from tests.test_doctor import _fake_metadata

    _fake_metadata(monkeypatch, {"scipy": "1.13.0", "opencv-python": "4.10.0.84"})  # two OpenCV wheels: a conflict
    monkeypatch.setattr(env_mod, "_import_error", lambda module: "ImportError: DLL load failed" if module == "scipy" else None)
    scipy = env_mod.check_package("scipy", "scipy", "V3 loudness", True, {"scipy": "scipy>=1.10"})
    assert scipy["status"] == "broken"
    assert scipy["fix"] == f"{shlex.quote(sys.executable)} -m pip install --force-reinstall --no-deps 'scipy>=1.10'"
    cv = next(p for p in env_mod.check_environment(imports=False)["packages"] if p["module"] == "cv2")
    assert cv["status"] == "conflict" and "--force-reinstall" not in cv["fix"]
    assert cv["fix"].endswith(" && " + shell.python_pip("install", cv["requirement"]))


def test_pose_library_fix_reads_dwpose_from_the_models_folder_checked(tmp_path, posix):
    root, default = tmp_path / "my models", tmp_path / "default"
    fix = next(p for p in check_shared(root, [], default) if p["part"] == "poses")["fix"]
    assert fix.startswith("# or copy") and fix.endswith(
        f"\nechomimic poses --video DRIVING.mp4 -o {shlex.quote(str(root / 'poses' / 'NAME'))} --models {shlex.quote(str(root))}")
    fix = next(p for p in check_shared(default, [], default) if p["part"] == "poses")["fix"]
    assert "--models" not in fix  # the command line's own default


def test_pose_library_fix_in_comfyui_names_the_root_holding_dwpose(tmp_path, posix):
    from tests.test_doctor_more import _onnx

    comfy, store = _comfy(tmp_path / "c"), tmp_path / "store"
    (comfy / "extra_model_paths.yaml").write_text(f"mine:\n  echomimic: {store / 'em'}\n")  # the first echomimic root
    (store / "em").mkdir(parents=True)
    report = _doctor(comfy)
    poses = next(p for p in report["shared"] if p["part"] == "poses")
    assert poses["fix"].startswith("# or copy") and poses["fix"].endswith(
        f"\nechomimic poses --video DRIVING.mp4 -o {store / 'em' / 'poses' / 'NAME'} --models {store / 'em'}")  # no DWPose anywhere: the first root
    for name in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"):
        _onnx(comfy / "models" / "echomimic" / "dwpose" / name)
    report = _doctor(comfy)
    assert next(p for p in report["shared"] if p["part"] == "dwpose")["status"] == "ready"
    poses = next(p for p in report["shared"] if p["part"] == "poses")
    assert poses["fix"].startswith("# or copy") and poses["fix"].endswith(
        f"\nechomimic poses --video DRIVING.mp4 -o {store / 'em' / 'poses' / 'NAME'} --models {comfy / 'models' / 'echomimic'}"), poses["fix"]


def test_landmarker_fix_in_comfyui_names_the_nodes_auto_download_not_animate(tmp_path, posix):
    comfy = _comfy(tmp_path / "c")
    lm = next(p for p in _doctor(comfy, "v1_audio")["shared"] if p["part"] == "mediapipe")["files"][0]
    assert lm["status"] == "missing" and "run animate" not in lm["fix"]
    assert lm["fix"].startswith("# or switch on auto_download in a landmark, face-track or evaluate node: it fetches the "
                                "file into the first echomimic root\ncurl ")
    cli = next(p for p in check_shared(tmp_path / "m", []) if p["part"] == "mediapipe")["files"][0]
    assert cli["fix"].startswith("# or run animate / dub / landmarks once without --offline\ncurl ")
