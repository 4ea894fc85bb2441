"""``echomimic doctor``: every fix line can be pasted whole (a remark is a comment line of its own before the command,
never prose in parentheses after it; POSIX lines are parsed by a real ``bash -n``), paths with spaces, ``'``, ``$``
and ``[x]`` are quoted right for each shell (bash single quotes, PowerShell double quotes with backtick escapes), and
PowerShell takes every path literally (``-LiteralPath``; ``New-Item``, which has no such parameter, with ``-Path``
alone, which it takes literally). Fixes are collected from many failing installs built in tmp_path."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from echomimic_lib.jobs.doctor import diagnose, shell
from echomimic_lib.jobs.doctor import environment as env_mod
from echomimic_lib.jobs.doctor.comfy_paths import ComfyFolders
from echomimic_lib.jobs.doctor.comfyui import comfy_vae, v3_fix
from echomimic_lib.jobs.doctor.report import render
from tests.test_doctor import _fake_metadata

WEIRD = "Ann's $HOME [x] dir"  # a space, a single quote, a dollar and wildcard brackets in one folder name
PY = r"C:\Users\Ann Lee\ComfyUI [x]\python_embeded\python.exe"
HAS_BASH = shutil.which("bash") is not None


def _fixes(node) -> list[str]:
    """Every fix in a report (any depth)."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "fix" and isinstance(v, str) and v] + [f for v in node.values() for f in _fixes(v)]
    if isinstance(node, list):
        return [f for v in node for f in _fixes(v)]
    return []


def _broken_comfy(tmp_path: Path, tiny_comfy_models: Path) -> Path:
    """A ComfyUI under WEIRD with one of every fix kind: a broken weight file, a broken MediaPipe bundle, DWPose and
    the gesture library missing, V3 missing, a broken and two missing core files."""
    comfy = tmp_path / WEIRD / "ComfyUI"
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


def _every_fix(tmp_path: Path, tiny_comfy_models: Path, monkeypatch) -> list[str]:
    """The fixes of many failing installs, in the shell shell.is_windows says."""
    fixes = []
    # packages: missing, out of bounds, two OpenCV wheels, one that does not import; PyTorch missing
    _fake_metadata(monkeypatch, {"diffusers": "0.1.0", "soxr": None, "opencv-python": "4.10.0.84"})
    monkeypatch.setattr(env_mod, "_import_error", lambda m: "ImportError: DLL load failed" if m == "scipy" else None)
    fixes += _fixes(env_mod.check_environment(imports=True))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch", None)
        fixes.append(env_mod.torch_info()["fix"])
    # the command line's models folder: nothing there (every download, MediaPipe, DWPose, the gesture library)
    fixes += _fixes(diagnose(tmp_path / WEIRD / "empty models", imports=False))
    # a ComfyUI install with broken and missing parts, per weight set
    comfy = _broken_comfy(tmp_path, tiny_comfy_models)
    for weights in ("v2", "v1_audio", "v3-flash"):
        fixes += _fixes(diagnose(None, weights, None, imports=False, comfyui=comfy))
    # no SD VAE anywhere; an ft-mse file linked in from outside its vae folder
    bare = tmp_path / WEIRD / "bare"
    (bare / "vae").mkdir(parents=True)
    fixes.append(comfy_vae({"status": "missing", "what": "SD VAE", "fix": "x"}, ComfyFolders(bare))["fix"])
    store = tmp_path / WEIRD / "store"
    store.mkdir()
    (store / "vae-ft-mse-840000-ema-pruned.safetensors").write_bytes(b"x")
    (bare / "vae" / "vae-ft-mse-840000-ema-pruned.safetensors").symlink_to(store / "vae-ft-mse-840000-ema-pruned.safetensors")
    fixes.append(comfy_vae({"status": "missing", "what": "SD VAE", "fix": "x"}, ComfyFolders(bare))["fix"])
    # a V3 Loader folder linked out of its root (a fix that is no command), the loader folder named otherwise
    linked = tmp_path / WEIRD / "linked"
    (linked / "models" / "echomimic").mkdir(parents=True)
    (linked / "main.py").write_text("")
    (tmp_path / WEIRD / "elsewhere" / "v3-flash").mkdir(parents=True)
    (linked / "models" / "echomimic" / "v3-flash").symlink_to(tmp_path / WEIRD / "elsewhere" / "v3-flash")
    fixes += _fixes(diagnose(None, "v3-flash", None, imports=False, comfyui=linked))
    fixes.append(v3_fix(tmp_path / WEIRD, ["my-v3"]))
    assert len(fixes) > 25 and all(isinstance(f, str) and f for f in fixes)
    return fixes


def _command_lines(fix: str) -> list[str]:
    return [line for line in fix.split("\n") if not line.startswith("# ")]


PS_STRING = re.compile(r'"(?:`.|[^"`])*"')


def _outside_quotes(line: str, windows: bool) -> str:
    if windows:
        return PS_STRING.sub('""', line).replace("if ($?) { ", "")
    return re.sub(r"'[^']*'|\"(?:\\.|[^\"\\])*\"", "''", line)


def _check_pasteable(fix: str, windows: bool) -> None:
    lines = fix.split("\n")
    assert all(lines), repr(fix)
    for line in lines:
        if line.startswith("# "):
            continue
        bare = _outside_quotes(line, windows)
        assert "(" not in bare and ")" not in bare, f"a parenthesized remark (or stray parenthesis) on a command line: {line}"
        assert "  " not in bare.strip(), f"prose after a command? {line}"
        if windows:
            assert line.count("if ($?) {") == PS_STRING.sub('""', line).count("}"), line
            assert "&&" not in bare, line


# ------------------------------------------------------------------------------------------------ 1. pasteable lines
@pytest.mark.skipif(not HAS_BASH, reason="no bash")
def test_every_posix_fix_line_parses_in_bash_and_carries_no_remark_after_its_command(tmp_path, tiny_comfy_models,
                                                                                    monkeypatch):
    monkeypatch.setattr(shell, "is_windows", lambda: False)
    fixes = _every_fix(tmp_path, tiny_comfy_models, monkeypatch)
    for fix in fixes:
        for text in [fix, *_command_lines(fix)]:  # the whole fix, and each line on its own
            done = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True)
            assert done.returncode == 0, (text, done.stderr)
        _check_pasteable(fix, windows=False)
    assert any(f.startswith("# or run animate") for f in fixes)  # the remarks are there, as comments
    assert any(f.startswith("# install PyTorch") and "\n" not in f for f in fixes)  # a fix that is no command


def test_every_powershell_fix_line_carries_no_remark_after_its_command(tmp_path, tiny_comfy_models, monkeypatch):
    monkeypatch.setattr(shell, "is_windows", lambda: True)
    monkeypatch.setattr(sys, "executable", PY)
    fixes = _every_fix(tmp_path, tiny_comfy_models, monkeypatch)
    for fix in fixes:
        _check_pasteable(fix, windows=True)
    assert any(f.startswith("# or switch on auto_download in a landmark") for f in fixes)


def test_the_table_prints_a_remark_on_its_own_line_above_its_command(tmp_path, monkeypatch):
    monkeypatch.setattr(shell, "is_windows", lambda: False)
    lines = render(diagnose(tmp_path / "m", "v1_audio", "normal", imports=False))
    at = next(i for i, line in enumerate(lines) if "fix: # or run animate / dub / landmarks once" in line)
    assert lines[at].index("#") == lines[at + 1].index("curl -fL"), lines[at:at + 2]  # aligned: copy the block


# ------------------------------------------------------------------------------------------------ 2. quoting
def _ps_value(token: str) -> str:
    """The value of a PowerShell double-quoted string (fails on what would expand or end it)."""
    assert token[0] == token[-1] == '"', token
    out, i, body = [], 0, token[1:-1]
    while i < len(body):
        c = body[i]
        if c == "`":
            nxt = body[i + 1]
            assert nxt in '`"$\u201c\u201d\u201e', f"`{nxt} is an escape sequence in PowerShell: {token}"
            out.append(nxt)
            i += 2
            continue
        assert c not in '"\u201c\u201d\u201e', f"an unescaped quote ends the string: {token}"
        assert not (c == "$" and i + 1 < len(body) and re.match(r"[\w{(:?^$]", body[i + 1])), f"expands: {token}"
        out.append(c)
        i += 1
    return "".join(out)


@pytest.mark.parametrize("name", [WEIRD, "C:\\Users\\Ann Lee\\it's $env:TEMP [x]", 'a"b`c$(d)', "\u2018curly\u2019 $x"])
def test_powershell_quotes_any_path_to_itself(monkeypatch, name):
    monkeypatch.setattr(shell, "is_windows", lambda: True)
    token = shell.quote(name)
    assert _ps_value(token) == name
    assert shell.remove([name]) == f"Remove-Item -LiteralPath {token}"


@pytest.mark.skipif(not HAS_BASH, reason="no bash")
def test_posix_commands_with_odd_paths_act_on_exactly_those_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(shell, "is_windows", lambda: False)
    base = tmp_path / WEIRD
    (tmp_path / "Ann's x dir").mkdir()  # what an unquoted [x] would glob to
    a, b = base / "a [x] 'q' $HOME.txt", base / "sub dir" / "b $(echo no).txt"
    run = lambda cmd: subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=tmp_path)  # noqa: E731
    assert run(shell.make_dirs(base, b.parent)).returncode == 0 and base.is_dir() and b.parent.is_dir()
    a.write_text("x")
    assert run(shell.then(shell.copy(a, b), shell.remove([a]))).returncode == 0
    assert b.read_text() == "x" and not a.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(["Ann's x dir", WEIRD])
    line = shell.echomimic("download", "--weights", "v2", "--models", base)
    assert shlex.split(line) == ["echomimic", "download", "--weights", "v2", "--models", str(base)]


# ------------------------------------------------------------------------------------------------ literal paths
PATH_CMDLETS = ("Remove-Item", "Copy-Item", "Move-Item", "Test-Path", "Get-Item", "Get-ChildItem", "Set-Location")


def _ps_commands(fix: str) -> list[str]:
    return [c.strip(" }") for line in _command_lines(fix) for c in line.split("; if ($?) {")]


def test_powershell_takes_every_path_literally(tmp_path, tiny_comfy_models, monkeypatch):
    monkeypatch.setattr(shell, "is_windows", lambda: True)
    monkeypatch.setattr(sys, "executable", PY)
    lit = "C:\\models [x]\\f [1].task"
    cmds = [shell.remove([lit]), shell.copy(lit, lit + " copy"), shell.make_dirs(lit)]
    for fix in _every_fix(tmp_path, tiny_comfy_models, monkeypatch):
        cmds += _ps_commands(fix)
    seen = set()
    for cmd in cmds:
        head = cmd.split(" ", 1)[0]
        seen.add(head)
        if head in PATH_CMDLETS:
            assert re.match(rf"{head} -LiteralPath ", cmd) and " -Path " not in cmd, cmd
        if head == "New-Item":  # no -LiteralPath in any PowerShell: -Path without -Name is taken literally
            assert cmd.startswith("New-Item -ItemType Directory -Force -Path ") and " -Name" not in cmd, cmd
    assert {"Remove-Item", "Copy-Item", "New-Item", "curl.exe", "&"} <= seen, seen
    assert shell.make_dirs(lit) == f'New-Item -ItemType Directory -Force -Path "{lit}"'


# ------------------------------------------------------------------------------------------------ 3. Desktop on Linux
def test_desktop_on_linux_is_read_from_xdg_config_home(tmp_path, monkeypatch):
    """Desktop's Electron userData on Linux: $XDG_CONFIG_HOME/ComfyUI, else ~/.config/ComfyUI (config.json basePath)."""
    from echomimic_lib.jobs.doctor import desktop
    from tests.test_doctor_windows import _desktop

    monkeypatch.setattr(desktop, "PACK", tmp_path / "src" / "ComfyUI-EchoMimic")
    monkeypatch.setattr(desktop, "system", lambda: "linux")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    base = tmp_path / WEIRD / "Comfy files"
    _desktop(tmp_path / "xdg" / "ComfyUI", base)
    found = desktop.find_comfyui()
    assert (found.kind, found.base, found.base_from) == ("ComfyUI Desktop", base,
                                                         f"basePath in {tmp_path / 'xdg' / 'ComfyUI' / 'config.json'}")


@pytest.mark.parametrize("content", ["[" * 100_000, '{"basePath": "/elsewhere", "pad": "' + "x" * (1 << 20) + '"}'],
                         ids=["nested too deep", "over 1 MiB"])
def test_a_desktop_config_json_too_deep_or_too_large_is_a_note_not_a_crash(tmp_path, monkeypatch, content):
    from echomimic_lib.jobs.doctor import desktop
    from tests.test_doctor_windows import _desktop

    monkeypatch.setattr(desktop, "PACK", tmp_path / "src" / "ComfyUI-EchoMimic")
    monkeypatch.setattr(desktop, "system", lambda: "linux")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    data = tmp_path / "home" / ".config" / "ComfyUI"
    base = tmp_path / "base"
    _desktop(data, base)
    (data / "config.json").write_text(content)
    found = desktop.find_comfyui()  # the yaml's base_path instead; before: RecursionError, or the whole file read
    assert found.base == base and found.base_from == f"base_path in {data / 'extra_models_config.yaml'}"
    assert any(n.startswith(f"{data / 'config.json'}: not read (") for n in found.notes), found.notes


def test_an_extra_model_paths_yaml_nested_too_deep_is_a_finding_not_a_crash(tmp_path):
    from tests.test_doctor_roots import _comfy, _doctor

    comfy = _comfy(tmp_path)
    (comfy / "extra_model_paths.yaml").write_text("a: " + "[" * 100_000)
    report = _doctor(comfy)
    assert any("not valid YAML (nested too deep)" in p for p in report["problems"]), report["problems"]


def test_remarks_go_first_and_a_quoted_newline_stays_in_its_command(monkeypatch):
    monkeypatch.setattr(shell, "is_windows", lambda: False)
    odd = shell.fix(shell.remove(["/a\n# b"]), "r1")  # a path holding a newline and '# ': not a remark
    assert shell.then(odd, shell.fix("c", "r2")) == "# r1\n# r2\nrm -- '/a\n# b' && c"
    assert shell.fix(None, "only a remark") == "# only a remark" and shell.fix("", "x  y\nz") == "# x y z"
    monkeypatch.setattr(shell, "is_windows", lambda: True)
    assert shell.then(shell.fix("a", "r"), "b", shell.fix("c", "s")) == "# r\n# s\na; if ($?) { b; if ($?) { c } }"
