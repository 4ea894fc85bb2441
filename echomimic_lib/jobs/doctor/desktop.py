"""``echomimic doctor --comfyui auto``: find the ComfyUI install by itself, first the one this pack sits in
(``<ComfyUI>/custom_nodes/<pack>``, ComfyUI's ``main.py`` beside: a manual install or the Windows portable build), else
ComfyUI Desktop from its own settings.

What Desktop keeps where (facts from the Comfy-Org/desktop repository: its README's "ComfyUI" and "Model Paths"
sections, ``src/config/comfyServerConfig.ts``, ``src/main-process/comfyServer.ts``, ``src/store/desktopSettings.ts``,
``todesktop.json``): its user-data folder is ``%APPDATA%\\ComfyUI`` on Windows, ``~/Library/Application Support/ComfyUI``
on macOS and ``~/.config/ComfyUI`` (``$XDG_CONFIG_HOME``) on Linux. There ``config.json`` holds ``basePath``, the
folder the user picked for models, input, output, user and custom_nodes, and ``extra_models_config.yaml`` holds a
``comfyui_desktop:`` section (older installs: ``comfyui:``) with ``base_path`` (the same folder), ``is_default`` and
``custom_nodes``, maybe a ``comfyui_migration:`` section for the models of an install it migrated from. Desktop starts
ComfyUI with ``--base-directory basePath``, ``--input-directory basePath/input``, ``--output-directory basePath/output``
and ``--extra-model-paths-config`` that yaml. ComfyUI's own code (main.py, and the folder ComfyUI reads its own
``extra_model_paths.yaml`` from) is the app's ``resources/ComfyUI`` (``todesktop.json``'s extraResources, read through
``process.resourcesPath`` in ``src/install/resourcePaths.ts``): on Windows under ``%LOCALAPPDATA%\\Programs\\`` in
``@comfyorgcomfyui-electron`` (the NSIS install folder seen in user reports and tracebacks), ``comfyui-electron`` (the
README's "Bundled Resources") or ``ComfyUI``; on macOS ``/Applications/ComfyUI.app/Contents/Resources/ComfyUI``.
On Linux there is no installed copy to find: Desktop's releases are Windows and macOS only (README downloads,
``todesktop.json`` has no linux section); a development or AppImage build keeps it in its source tree
(``assets/ComfyUI``) or in the AppImage's mount that exists only while it runs. The newer Comfy Desktop
(Comfy-Org/Comfy-Desktop, the one with a Linux ``.deb`` / AppImage) keeps its settings in ``~/.config/Comfy Desktop``
and each install under ``~/ComfyUI-Installs``; it is not read here. Without the code folder doctor works from the
base directory and says how to name the code folder with ``--comfyui PATH``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import EchoMimicError
from ...io.json_file import read_json
from .comfy_paths import _load as load_yaml
from .shell import echomimic, run

APP = "ComfyUI"  # Desktop's productName: its user-data folder's name
SETTINGS = "config.json"
YAML = "extra_models_config.yaml"
SECTIONS = ("comfyui_desktop", "comfyui")  # where Desktop reads base_path, the newer section first
MAX_SETTINGS = 1 << 20  # config.json is a few hundred bytes: a larger one is not Desktop's, and is not read
PACK = Path(os.path.abspath(__file__)).parents[3]  # this pack's folder as ComfyUI loaded it (a link in custom_nodes kept)


@dataclass
class Found:
    """A ComfyUI install found by itself, and the start options it runs with."""
    kind: str  # "ComfyUI Desktop", or "the ComfyUI holding this pack"
    comfyui: Path  # what --comfyui would be
    code: Path | None = None  # ComfyUI's own folder (main.py), when found; None: not found, comfyui is the base
    base: Path | None = None  # --base-directory
    extra_paths: list = field(default_factory=list)  # --extra-model-paths-config files
    settings: Path | None = None  # Desktop's config.json
    base_from: str | None = None
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "comfyui": str(self.comfyui), "code": str(self.code) if self.code else None, "base": str(self.base) if self.base else None,
                "base_from": self.base_from, "settings": str(self.settings) if self.settings else None,
                "extra_model_paths": [str(p) for p in self.extra_paths], "notes": list(self.notes)}


def system() -> str:
    """sys.platform (a function, so tests can stand in for another system)."""
    return sys.platform


def _home(env) -> Path:
    home = env.get("HOME") or env.get("USERPROFILE")
    return Path(home) if home else Path.home()


def user_data_dir(platform: str | None = None, env=None) -> Path:
    """Desktop's user-data folder (Electron's ``userData`` for the app named ComfyUI)."""
    platform, env = platform or system(), os.environ if env is None else env
    if platform.startswith("win"):
        return Path(env.get("APPDATA") or _home(env) / "AppData" / "Roaming") / APP
    if platform == "darwin":
        return _home(env) / "Library" / "Application Support" / APP
    return Path(env.get("XDG_CONFIG_HOME") or _home(env) / ".config") / APP


WIN_APPS = ("@comfyorgcomfyui-electron", "comfyui-electron", APP)  # install folders under %LOCALAPPDATA%\Programs


def bundled_places(platform: str | None = None, env=None) -> list[Path]:
    """Where Desktop's bundled ComfyUI may be (its resources/ComfyUI); none on Linux (see the module's notes)."""
    platform, env = platform or system(), os.environ if env is None else env
    if platform.startswith("win"):
        local = env.get("LOCALAPPDATA") or _home(env) / "AppData" / "Local"
        return [Path(local) / "Programs" / n / "resources" / "ComfyUI" for n in WIN_APPS]
    if platform == "darwin":
        return [a / "Contents" / "Resources" / "ComfyUI"
                for a in (Path("/Applications/ComfyUI.app"), _home(env) / "Applications" / "ComfyUI.app")]
    return []


def bundled_comfyui(platform: str | None = None, env=None) -> Path | None:
    """The ComfyUI code Desktop ships (its main.py; the folder ComfyUI's own extra_model_paths.yaml would be in)."""
    return next((p for p in bundled_places(platform, env) if (p / "main.py").is_file()), None)


def _no_code_note(base: Path, yml: Path | None, platform: str, env) -> str:
    """Desktop's code folder not found: what that leaves unchecked, and the command that checks it."""
    places = bundled_places(platform, env)
    where = (f"not in {', '.join(map(str, places))}" if places else
             "ComfyUI Desktop installs no copy of it on Linux (its releases are for Windows and macOS; a development "
             "or AppImage build keeps it in its source tree or in the AppImage's mount while it runs)")
    cmd = echomimic("doctor", "--comfyui", "PATH", "--base-directory", base, *(["--extra-model-paths", yml] if yml else ()))
    return (f"Desktop's bundled ComfyUI folder (resources/ComfyUI) was not found: {where}. "
            f"Its folders are taken from the base directory {base}; ComfyUI's own extra_model_paths.yaml beside main.py "
            f"is not read. To check it too, give ComfyUI's folder (the one holding main.py) as PATH: {cmd}")


def _yaml_base(path: Path) -> str | None:
    conf, _ = load_yaml(path)  # pyyaml missing, not YAML, unreadable: comfy_paths reports the file itself when it applies it
    for name in SECTIONS if isinstance(conf, dict) else ():
        base = conf.get(name, {}).get("base_path") if isinstance(conf.get(name), dict) else None
        if isinstance(base, str) and base:
            return base
    return None


def _settings(path: Path) -> dict:
    """config.json's content, read only when it is small enough to be Desktop's (a few hundred bytes), or an
    :class:`EchoMimicError` saying ``<path>: not read (<the problem>); ...``."""
    return read_json(path, "not read", "it is not ComfyUI Desktop's settings (a small JSON object); its basePath is not "
                     "used", max_bytes=MAX_SETTINGS, expect=dict)


def find_desktop(platform: str | None = None, env=None) -> Found | None:
    """ComfyUI Desktop from its settings (None when neither config.json nor the yaml is there)."""
    platform, env = platform or system(), os.environ if env is None else env
    data = user_data_dir(platform, env)
    settings, yml = data / SETTINGS, data / YAML
    if not settings.is_file() and not yml.is_file():
        return None
    base, base_from, notes = None, None, []
    try:
        value = _settings(settings).get("basePath") if settings.is_file() else None
        if isinstance(value, str) and value:
            base, base_from = Path(value).expanduser(), f"basePath in {settings}"
    except EchoMimicError as exc:  # damaged, nested too deep for the parser, too large, not an object: not Desktop's
        notes.append(str(exc))
    from_yaml = _yaml_base(yml) if yml.is_file() else None
    if from_yaml is not None:
        other = Path(os.path.expandvars(from_yaml)).expanduser()
        if base is None:
            base, base_from = other, f"base_path in {yml}"
        elif os.path.normpath(other) != os.path.normpath(base):
            notes.append(f"{yml}'s base_path {other} differs from {settings}'s basePath {base}: Desktop starts ComfyUI "
                         "in the latter, its model folders come from the former")
    if base is None:
        raise EchoMimicError(f"ComfyUI Desktop's settings are in {data}, but neither {SETTINGS}'s basePath nor {YAML}'s "
                             "base_path names its folder (finish Desktop's setup once), or give --comfyui PATH.")
    notes += _venv_note(base, platform)
    code = bundled_comfyui(platform, env)
    if code is None:
        notes.append(_no_code_note(base, yml if yml.is_file() else None, platform, env))
    return Found("ComfyUI Desktop", code or base, code, base, [yml] if yml.is_file() else [],
                 settings if settings.is_file() else None, base_from, notes)


def _venv_note(base: Path, platform: str) -> list[str]:
    """Desktop runs ComfyUI on ``basePath/.venv`` (uv's default): when this doctor runs on another Python, its package
    checks and pip fixes are that other Python's."""
    venv = base / ".venv"
    python = venv / ("Scripts/python.exe" if platform.startswith("win") else "bin/python")
    if not python.exists() or os.path.normcase(os.path.realpath(sys.prefix)) == os.path.normcase(os.path.realpath(venv)):
        return []
    return [f"this doctor runs on {sys.executable}, not on Desktop's {python}: the packages and pip fixes above are "
            f"this Python's; for Desktop's, run from this pack's folder: {run(python, '-m', 'echomimic_lib.cli', 'doctor', '--comfyui', 'auto')}"]


def find_comfyui(platform: str | None = None, env=None, pack: Path | None = None) -> Found:
    """``--comfyui auto``: the ComfyUI this pack is a custom node of, else ComfyUI Desktop; an error naming both
    places looked at when neither is there."""
    pack = Path(pack) if pack is not None else PACK
    holder = pack.parent.parent
    if pack.parent.name == "custom_nodes" and (holder / "main.py").is_file():
        return Found("the ComfyUI holding this pack", holder, holder, base_from=None,
                     notes=[f"this pack is in {pack.parent}; ComfyUI Desktop is not looked for"])
    found = find_desktop(platform, env)
    if found is None:
        newer = (" (the newer Comfy Desktop keeps each install under ~/ComfyUI-Installs: give that install's folder "
                 "holding main.py)") if not (platform or system()).startswith(("win", "darwin")) else ""
        raise EchoMimicError(f"--comfyui auto: found no ComfyUI. This pack ({pack}) is not in a ComfyUI's custom_nodes/, "
                             f"and there is no ComfyUI Desktop setup in {user_data_dir(platform, env)} ({SETTINGS}, "
                             f"{YAML}). Give ComfyUI's folder: --comfyui PATH{newer}.")
    return found
