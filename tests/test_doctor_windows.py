"""``echomimic doctor`` on Windows: every fix line rendered for PowerShell (``Remove-Item -LiteralPath``, ``New-Item``,
``curl.exe``, double quotes with backtick escapes, ``& "python.exe" -m pip``; POSIX text unchanged), and
``--comfyui auto`` finding ComfyUI Desktop from its config.json / extra_models_config.yaml in a fake APPDATA / HOME
(or the ComfyUI this pack sits in). Real folders in tmp_path, stand-in files (presence and first bytes are all these
checks read)."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.jobs.doctor import desktop, diagnose, shell
from echomimic_lib.jobs.doctor.comfy_paths import ComfyFolders, _load
from echomimic_lib.jobs.doctor.comfyui import comfy_vae
from echomimic_lib.jobs.doctor.report import render
from tests.test_doctor import _fake_metadata
from tests.test_doctor_more import _run
from tests.test_doctor_roots import _comfy, _pack

SPACED = "My Comfy"  # a folder name with a space: every path under it must come quoted
EMBEDDED = r"C:\Users\Ann Lee\ComfyUI_windows_portable\python_embeded\python.exe"
HEADS = ("Remove-Item ", "New-Item ", "curl.exe ", "& ", "echomimic ")


@pytest.fixture
def windows(monkeypatch):
    monkeypatch.setattr(shell, "is_windows", lambda: True)
    monkeypatch.setattr(sys, "executable", EMBEDDED)


def _tokens(text: str) -> list[str]:
    """PowerShell-ish words: a "..." word runs to its closing quote (a backtick escapes the next character)."""
    return re.findall(r'"(?:`.|[^"`])*"|[^\s"]+', text)


def _commands(fix: str) -> list[list[str]]:
    """The commands in a fix line (each from a known command head to a '(' remark, a ';' or the end)."""
    out = []
    for part in fix.split("; "):
        for head in HEADS:
            at = part.find(head)
            while at != -1:
                words = []
                for w in _tokens(part[at:]):
                    if w.startswith("(") or w == ";":
                        break
                    words.append(w)
                out.append(words)
                at = part.find(head, at + 1) if head != "& " else -1
    return out


def _check_powershell(fix: str) -> None:
    assert "rm --" not in fix and "mkdir -p" not in fix and " && " not in fix, fix
    assert "curl -fL" not in fix and "curl.exe -fL --create-dirs -o " in fix if "curl" in fix else True, fix
    assert len(re.findall(r'(?<!`)"', fix)) % 2 == 0, f"unbalanced quotes: {fix}"
    cmds = _commands(fix)
    assert cmds, f"no command in {fix}"
    for words in cmds:
        bare = [w for w in words if not w.startswith('"')]
        assert not any(w.endswith(SPACED.split()[0]) or w.startswith(SPACED.split()[1]) for w in bare), (fix, words)
        assert not any(w.startswith("'") for w in words), (fix, words)  # no POSIX single quotes


def _fixes(node) -> list[str]:
    """Every fix line in a report (any depth)."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "fix" and isinstance(v, str)] + [f for v in node.values() for f in _fixes(v)]
    if isinstance(node, list):
        return [f for v in node for f in _fixes(v)]
    return []


def test_the_shell_forms(monkeypatch):
    monkeypatch.setattr(sys, "executable", EMBEDDED)
    path = r"C:\Users\Ann Lee\models\v2\x.pth"
    monkeypatch.setattr(shell, "is_windows", lambda: False)  # POSIX: today's text
    assert shell.remove([path, "/a/b"]) == f"rm -- {shlex.quote(path)} /a/b"
    assert shell.download("/m/f.task", "https://h/x") == "curl -fL --create-dirs -o /m/f.task https://h/x"
    assert shell.make_dirs("/a b", "/c") == "mkdir -p '/a b' /c"
    assert shell.python_pip("install", "soxr<2") == f"{shlex.quote(EMBEDDED)} -m pip install 'soxr<2'"
    assert shell.then("a", "b") == "a && b"
    monkeypatch.setattr(shell, "is_windows", lambda: True)
    assert shell.remove([path, r"C:\m\y.onnx"]) == f'Remove-Item -LiteralPath "{path}", C:\\m\\y.onnx'
    assert shell.download(r"C:\m\f.task", "https://h/x?a=1&b") == 'curl.exe -fL --create-dirs -o C:\\m\\f.task "https://h/x?a=1&b"'
    assert shell.make_dirs("C:\\a b", "C:\\c") == 'New-Item -ItemType Directory -Force -Path "C:\\a b", C:\\c'
    assert shell.python_pip("install", "soxr<2") == f'& "{EMBEDDED}" -m pip install "soxr<2"'
    assert shell.then("a", "b") == "a; if ($?) { b }"
    # PowerShell's own specials inside double quotes: $ (a variable), ` (the escape), " and the curly quotes
    assert shell.quote('C:\\$x `y" \u201cz\u201d') == '"C:\\`$x ``y`" `\u201cz`\u201d"'
    assert shell.quote("a,b") == '"a,b"' and shell.quote("@x") == '"@x"' and shell.quote("") == '""'


def _broken_install(tmp_path: Path, tiny_comfy_models: Path) -> Path:
    """A ComfyUI under a folder with a space, with one of every fix kind: a broken weight file, a broken MediaPipe
    bundle, DWPose missing, V3 missing, a broken and two missing core files, no gesture library."""
    comfy = tmp_path / SPACED / "ComfyUI"
    shutil.copytree(tiny_comfy_models, comfy / "models")
    (comfy / "main.py").write_text("")
    em = comfy / "models" / "echomimic"
    next((em / "v2").rglob("*.pth")).write_text("version https://git-lfs.github.com/spec/v1\n")
    next(em.rglob("face_landmarker*.task")).write_bytes(b"")
    for d in ("dwpose", "DWPose", "poses"):
        shutil.rmtree(em / d, ignore_errors=True)
    (comfy / "models" / "text_encoders").mkdir(exist_ok=True)
    (comfy / "models" / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors").write_bytes(b"")
    return comfy


def test_every_fix_kind_is_powershell_on_windows(tmp_path, tiny_comfy_models, windows, monkeypatch):
    comfy = _broken_install(tmp_path, tiny_comfy_models)
    _fake_metadata(monkeypatch, {"diffusers": "0.38.0", "soxr": None, "opencv-python": "4.10.0.84"})
    fixes = []
    for weights in ("v2", "v1_audio", "v3-flash"):
        report = diagnose(None, weights, None, imports=False, comfyui=comfy)
        fixes += _fixes(report)
        assert all("rm --" not in line and "curl -fL" not in line for line in render(report))
    fixes += _fixes(diagnose(tmp_path / SPACED / "empty models", "v2", "acc", imports=False))  # download lines
    gone = tmp_path / SPACED / "no base"
    report = diagnose(None, "v2", "normal", imports=False, comfyui=comfy, base_directory=gone,
                      input_directory=tmp_path / SPACED / "in", output_directory=tmp_path / SPACED / "out")
    dirs = [t[t.index("New-Item"):].split(" and move")[0].split(" now checks")[0]
            for t in report["problems"] + report["comfyui"]["notes"] if "New-Item" in t]
    assert len(dirs) == 3 and dirs[1].endswith(f'-Path "{tmp_path / SPACED / "in"}"') and f'-Path "{gone / "models" / "echomimic"}", "{gone / "custom_nodes"}"' in dirs[0]
    vae = comfy / "models" / "vae" / "a-ft-mse broken.safetensors"  # sorts before the tiny VAE file
    vae.parent.mkdir(exist_ok=True)
    vae.write_bytes(b"")
    fixes.append(comfy_vae({"status": "missing", "what": "SD VAE", "fix": "x"}, ComfyFolders(comfy / "models"))["fix"])
    fixes = [c for c in ("\n".join(x for x in f.split("\n") if not x.startswith("# ")) for f in fixes) if c]  # no remark lines
    kinds = {w for f in fixes + dirs for w in HEADS if w in f}  # commands, not their remarks
    on_path = {"echomimic "} if shell.shutil.which("echomimic") else set()  # else `& python.exe -m echomimic_lib.cli`
    assert kinds == set(HEADS) - {"echomimic "} | on_path, kinds  # every kind of command was rendered
    pip = [f for f in fixes if "-m pip" in f]
    assert {"install", "uninstall"} <= {w for f in pip for w in f.split()}
    assert all(f.startswith(f'& "{EMBEDDED}" -m pip ') for f in pip)  # the Python running the doctor: python_embeded's
    for fix in fixes + dirs:
        _check_powershell(fix)
    assert any(f.startswith('Remove-Item -LiteralPath "') and "; if ($?) { curl.exe" in f for f in fixes)
    assert any(f'-o "{comfy / "models" / "text_encoders"}' in f for f in fixes)


def test_the_same_install_on_posix_keeps_todays_text(tmp_path, tiny_comfy_models, monkeypatch):
    monkeypatch.setattr(shell, "is_windows", lambda: False)
    comfy = _broken_install(tmp_path, tiny_comfy_models)
    fixes = _fixes(diagnose(None, "v3-flash", None, imports=False, comfyui=comfy))
    enc = comfy / "models" / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    assert f"rm -- {shlex.quote(str(enc))} && curl -fL --create-dirs -o {shlex.quote(str(enc))} " in " | ".join(fixes)
    assert not any("Remove-Item" in f or "curl.exe" in f or '"' in f for f in fixes)


def test_without_pyyaml_the_hint_names_this_python(tmp_path, windows, monkeypatch):
    (tmp_path / "x.yaml").write_text("a: {}\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    _, problem = _load(tmp_path / "x.yaml")
    assert f'& "{EMBEDDED}" -m pip install pyyaml' in problem


# ------------------------------------------------------------------------------------------------ ComfyUI Desktop
def _desktop(user_data: Path, base: Path, config: bool = True, yaml_base: bool = True) -> Path:
    """Desktop's settings as it writes them: config.json's basePath and extra_models_config.yaml's
    comfyui_desktop section, plus a migrated install's models (an echomimic root there)."""
    user_data.mkdir(parents=True)
    if config:
        (user_data / "config.json").write_text(json.dumps({"installState": "installed", "basePath": str(base)}))
    (base / "models" / "echomimic").mkdir(parents=True)
    (base / "input").mkdir()
    _pack(base / "custom_nodes")
    old = user_data.parent / "old ComfyUI"
    (old / "models" / "echomimic").mkdir(parents=True)
    y = user_data / "extra_models_config.yaml"
    desk = (f"  base_path: {base}\n" if yaml_base else "") + "  is_default: 'true'\n  custom_nodes: custom_nodes/\n"
    y.write_text(f"# ComfyUI extra_model_paths.yaml for test\ncomfyui_desktop:\n{desk}  download_model_base: models\n"
                 f"comfyui_migration:\n  base_path: {old}\n  echomimic: models/echomimic\n")
    return y


@pytest.fixture
def no_pack_comfy(monkeypatch, tmp_path):
    monkeypatch.setattr(desktop, "PACK", tmp_path / "src" / "ComfyUI-EchoMimic")  # not in a custom_nodes folder


def test_desktop_on_linux_from_config_json_and_its_yaml(tmp_path, monkeypatch, capsys, no_pack_comfy):
    monkeypatch.setattr(desktop, "system", lambda: "linux")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    data, base = tmp_path / "home" / ".config" / "ComfyUI", tmp_path / "Comfy files"
    y = _desktop(data, base)
    report = diagnose(None, "v2", "normal", imports=False, comfyui="auto")
    c = report["comfyui"]
    assert c["detected"]["kind"] == "ComfyUI Desktop" and c["detected"]["base"] == str(base)
    assert c["detected"]["base_from"] == f"basePath in {data / 'config.json'}" and c["extra_model_paths"]["files"] == [str(y)]
    assert c["models_dir"] == str(base / "models") and c["directories"]["pack"] == str(base / "custom_nodes" / "ComfyUI-EchoMimic")
    roots = next(f for f in c["folders"] if f["kind"] == "echomimic")["roots"]
    assert [(r["path"], r["source"]) for r in roots][0] == (str(tmp_path / "home" / ".config" / "old ComfyUI" / "models" / "echomimic"),
                                                           f"{y} (comfyui_migration)")
    assert any("bundled ComfyUI folder (resources/ComfyUI) was not found" in n for n in c["detected"]["notes"])
    assert not any(".venv" in n for n in c["detected"]["notes"])  # no Desktop venv there: nothing to say
    (base / ".venv" / "bin").mkdir(parents=True)
    (base / ".venv" / "bin" / "python").write_text("")
    note = next(n for n in desktop.find_comfyui().notes if ".venv" in n)
    assert note.startswith(f"this doctor runs on {sys.executable}, not on Desktop's {base / '.venv' / 'bin' / 'python'}")
    assert note.endswith(f"{shlex.quote(str(base / '.venv' / 'bin' / 'python'))} -m echomimic_lib.cli doctor --comfyui auto")
    monkeypatch.setattr(sys, "prefix", str(base / ".venv"))  # run on Desktop's own Python: nothing to say
    assert not any(".venv" in n for n in desktop.find_comfyui().notes)
    rc, out = _run(capsys, "--comfyui", "auto", "--weights", "v2", "--variant", "normal")
    assert f"found ComfyUI Desktop: base directory {base} (basePath in {data / 'config.json'}); model paths from {y}" in out


def test_desktop_on_windows_from_appdata_and_its_bundled_comfyui(tmp_path, monkeypatch, no_pack_comfy):
    monkeypatch.setattr(desktop, "system", lambda: "win32")
    monkeypatch.setenv("APPDATA", str(tmp_path / "Roaming"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    code = tmp_path / "Local" / "Programs" / "ComfyUI" / "resources" / "ComfyUI"
    code.mkdir(parents=True)
    (code / "main.py").write_text("")
    base = tmp_path / "Documents" / "ComfyUI"
    y = _desktop(tmp_path / "Roaming" / "ComfyUI", base, config=False)  # an upgraded install: the yaml holds the base
    found = desktop.find_comfyui()
    assert (found.comfyui, found.base, found.extra_paths) == (code, base, [y])
    assert found.base_from == f"base_path in {y}" and found.notes == []
    report = diagnose(None, "v2", "normal", imports=False, comfyui="auto")
    assert report["comfyui"]["directories"]["install"] == str(code) and report["comfyui"]["models_dir"] == str(base / "models")


def test_desktop_settings_folder_per_system(tmp_path):
    env = {"HOME": str(tmp_path), "APPDATA": str(tmp_path / "AD"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert desktop.user_data_dir("win32", env) == tmp_path / "AD" / "ComfyUI"
    assert desktop.user_data_dir("darwin", env) == tmp_path / "Library" / "Application Support" / "ComfyUI"
    assert desktop.user_data_dir("linux", env) == tmp_path / "xdg" / "ComfyUI"
    assert desktop.user_data_dir("linux", {"HOME": str(tmp_path)}) == tmp_path / ".config" / "ComfyUI"
    _desktop(tmp_path / "Library" / "Application Support" / "ComfyUI", tmp_path / "base")
    assert desktop.find_desktop("darwin", env).base == tmp_path / "base"


def test_auto_prefers_the_comfyui_holding_this_pack(tmp_path, monkeypatch):
    monkeypatch.setattr(desktop, "system", lambda: "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    _desktop(tmp_path / "cfg" / "ComfyUI", tmp_path / "desk")
    comfy = _comfy(tmp_path / "portable")
    monkeypatch.setattr(desktop, "PACK", _pack(comfy / "custom_nodes"))
    found = desktop.find_comfyui()
    assert found.kind == "the ComfyUI holding this pack" and found.comfyui == comfy and found.base is None
    report = diagnose(None, "v2", "normal", imports=False, comfyui="auto")
    assert report["comfyui"]["models_dir"] == str(comfy / "models") and report["comfyui"]["extra_model_paths"]["files"] == []


def test_auto_without_a_comfyui_or_without_a_base_says_so(tmp_path, monkeypatch, capsys, no_pack_comfy):
    monkeypatch.setattr(desktop, "system", lambda: "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    rc, out = _run(capsys, "--comfyui", "auto")
    assert rc == 2 and "--comfyui auto: found no ComfyUI" in out and str(tmp_path / "cfg" / "ComfyUI") in out
    _desktop(tmp_path / "cfg" / "ComfyUI", tmp_path / "b", config=False, yaml_base=False)
    with pytest.raises(EchoMimicError, match="neither config.json's basePath nor extra_models_config.yaml's base_path"):
        desktop.find_comfyui()
