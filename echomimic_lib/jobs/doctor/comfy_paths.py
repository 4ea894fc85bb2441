"""``echomimic doctor --comfyui``: ComfyUI's model folders as ComfyUI itself builds them, so that doctor looks where
the nodes will look.

ComfyUI starts from ``folder_paths``' defaults (``models/vae``, ``models/text_encoders`` then ``models/clip``,
``models/unet`` then ``models/diffusion_models``, ...), then reads ``extra_model_paths.yaml`` in its own folder and
each ``--extra-model-paths-config`` file, in that order (``utils/extra_config.py``): every top-level section may have a
``base_path`` (``~`` and ``$VARS`` expanded; a relative one is relative to the yaml file's folder) and ``is_default``
(its paths go first), and its other keys name model folders (``clip`` and ``unet`` are the old names of
``text_encoders`` and ``diffusion_models``) with one path or several, one a line, each relative to ``base_path`` (else
to the yaml file's folder). A path already listed is not added twice (``is_default`` moves it first). The pack's
``models/echomimic`` is registered after all of that (``nodes/comfy_bridge``), so it comes after the yaml's
``echomimic:`` roots. Every folder keeps where it came from, for the report.

ComfyUI's ``--base-directory DIR`` (:func:`comfy_dirs`, as ``folder_paths``) moves models/, input/, output/ and
custom_nodes/ to ``DIR/...`` (the yaml files are still read from ComfyUI's own folder, their ``base_path`` as
before); ``--input-directory`` / ``--output-directory`` move those two again. ComfyUI's own folder is taken
through its links (``realpath``, as ComfyUI finds itself): a yaml's relative base_path starts there. ``main.apply_custom_paths`` then adds
``<output>/checkpoints, clip, vae, diffusion_models, loras`` as model folders after the yaml's (taken here where
they exist: a missing one holds nothing).

A yaml file that ComfyUI cannot apply (not YAML, not a mapping of sections, a folder key without a path) is a finding
here (ComfyUI stops at start with it); pyyaml is imported only when a file is there to read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import EchoMimicError
from .shell import make_dirs, python_pip

LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}  # folder_paths.map_legacy
# folder_paths' defaults for the folders the report shows, in ComfyUI's order
DEFAULTS = {"vae": ("vae",), "clip_vision": ("clip_vision",), "text_encoders": ("text_encoders", "clip"),
            "diffusion_models": ("unet", "diffusion_models"), "loras": ("loras",)}
ECHOMIMIC = "echomimic"
DEFAULT = "ComfyUI's default"
YAML_NAME = "extra_model_paths.yaml"
MAX_YAML_BYTES = 4 << 20  # an extra_model_paths.yaml is a few KB
MAX_YAML_VALUES = 100_000  # sections, keys and paths once its aliases are expanded
MAX_YAML_CHARS = 16 << 20  # characters of its keys and paths, aliases expanded (each alias of a long path list is split)
OUTPUT_FOLDERS = ("checkpoints", "clip", "vae", "diffusion_models", "loras")  # main.apply_custom_paths
OUTPUT_SOURCE = "ComfyUI's output folder"
PACK_FILES = ("nodes/comfy_bridge.py", "echomimic_lib/__init__.py")  # what makes a custom_nodes sub-folder this pack


class ComfyFolders:
    """Each model folder kind's roots in ComfyUI's search order, each with where it came from."""

    def __init__(self, models: Path):
        self.models = Path(models)
        self.kinds: dict[str, list[str]] = {k: [str(self.models / n) for n in names] for k, names in DEFAULTS.items()}
        self.sources: dict[tuple[str, str], str] = {(k, p): DEFAULT for k, ps in self.kinds.items() for p in ps}
        self.files: list[str] = []  # the yaml files read (applied or not)
        self.problems: list[str] = []  # what is wrong with them (each makes ComfyUI stop at start, or doctor blind)

    def add(self, kind: str, path: str, is_default: bool, source: str) -> None:
        """folder_paths.add_model_folder_path, step by step."""
        kind = LEGACY.get(kind, kind)
        paths = self.kinds.setdefault(kind, [])
        if path in paths:
            if is_default and paths[0] != path:
                paths.remove(path)
                paths.insert(0, path)
            return
        paths.insert(0, path) if is_default and paths else paths.append(path)
        self.sources[(kind, path)] = source

    def roots(self, kind: str) -> list[Path]:
        return [Path(p) for p in self.kinds.get(LEGACY.get(kind, kind), [])]

    def source(self, kind: str, path) -> str:
        return self.sources.get((LEGACY.get(kind, kind), str(path)), DEFAULT)

    def extra(self) -> bool:
        """Whether any yaml file added a folder."""
        return any(s != DEFAULT for s in self.sources.values())


def _load(path: Path):
    """(the parsed yaml, None) or (None, the problem)."""
    try:
        import yaml
    except ImportError:
        return None, (f"{path}: not read, the pyyaml package is not installed here, so the model folders it adds are not "
                      f"checked; install it: {python_pip('install', 'pyyaml')}")
    from ...io.yaml_file import expanded_size_over, file_size_over

    size = file_size_over(path, MAX_YAML_BYTES)
    if size is not None:
        return None, (f"{path}: {size} bytes is not a model-paths file (at most {MAX_YAML_BYTES >> 20} MiB; one is a few KB); "
                      "not read. Check that it is the right file, or remove it")
    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
        if expanded_size_over(config, MAX_YAML_VALUES, MAX_YAML_CHARS):
            return None, (f"{path}: its YAML aliases (*name) expand to more than {MAX_YAML_VALUES} values or {MAX_YAML_CHARS} "
                          "characters (a 'billion laughs' file); not read. Write the paths out, or alias only small sections")
        return config, None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return None, f"{path}: not valid YAML ({what}{at}); ComfyUI stops at start with it: fix or remove the file"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path}: unreadable ({exc})"
    except RecursionError:  # nested deeper than the parser goes: no model paths file
        return None, f"{path}: not valid YAML (nested too deep); ComfyUI stops at start with it: fix or remove the file"


def _sections(path: Path, config) -> tuple[list[tuple[str, dict]], str | None]:
    """The sections ComfyUI applies, or what makes ComfyUI fail on the file (then nothing of it is applied)."""
    stop = "ComfyUI stops at start with it"
    if not isinstance(config, dict):
        what = "empty" if config is None else f"a {type(config).__name__}, not a mapping of sections such as 'comfyui:'"
        return [], f"{path}: {what}; {stop}: fix or remove the file"
    out = []
    for name, conf in config.items():
        if conf is None:
            continue  # ComfyUI skips an empty section
        if not isinstance(conf, dict):
            return [], f"{path}: section '{name}' is a {type(conf).__name__}, not a mapping of folder: path; {stop}"
        base = conf.get("base_path", "")
        if "base_path" in conf and not isinstance(base, str):
            return [], f"{path}: section '{name}': base_path has no path (or not text); {stop}"
        for key, value in conf.items():
            if key not in ("base_path", "is_default") and not isinstance(value, str):
                return [], (f"{path}: section '{name}': '{key}' has no path (or not text: give one path, or several one a "
                            f"line with '|'); {stop}")
        out.append((str(name), conf))
    return out, None


def apply_file(folders: ComfyFolders, path: Path) -> None:
    """One yaml file into ``folders``, as utils/extra_config.load_extra_path_config does."""
    path = Path(path).expanduser()
    folders.files.append(str(path))
    if not path.is_file():
        folders.problems.append(f"{path}: no such file (ComfyUI stops at start when --extra-model-paths-config names one)")
        return
    config, problem = _load(path)
    if problem is None:
        sections, problem = _sections(path, config)
    if problem is not None:
        folders.problems.append(problem)
        return
    here = os.path.dirname(os.path.abspath(path))
    for name, conf in sections:
        base = conf.get("base_path") or None
        if base is not None:
            base = os.path.expandvars(os.path.expanduser(base))
            if not os.path.isabs(base):
                base = os.path.abspath(os.path.join(here, base))
        is_default = bool(conf.get("is_default", False))
        for key, value in conf.items():
            if key in ("base_path", "is_default"):
                continue
            for line in value.split("\n"):
                if not line:
                    continue
                full = os.path.join(base, line) if base else line if os.path.isabs(line) else os.path.join(here, line)
                folders.add(str(key), os.path.normpath(full), is_default, f"{path} ({name})")


def comfy_folders(comfy: Path, models: Path, configs=(), output: Path | None = None,
                  custom_nodes: Path | None = None, own_yaml: bool = True) -> ComfyFolders:
    """The folders ComfyUI reads: its defaults, ``<comfy>/extra_model_paths.yaml`` when there (``own_yaml`` False:
    ``comfy`` is not ComfyUI's code folder, so no yaml of its own is read), then ``configs`` (the files given to
    ComfyUI's --extra-model-paths-config), then ``output``'s model folders that exist, then the pack's
    models/echomimic (``custom_nodes``: ComfyUI's own custom_nodes folder, first of that kind)."""
    folders = ComfyFolders(models)
    if custom_nodes is not None:
        folders.kinds["custom_nodes"] = [str(custom_nodes)]
    own = Path(comfy).expanduser() / YAML_NAME
    if own_yaml and own.is_file():
        apply_file(folders, own)
    for c in configs or ():
        apply_file(folders, Path(c))
    for name in OUTPUT_FOLDERS if output is not None else ():
        if (Path(output) / name).is_dir():
            folders.add(name, str(Path(output) / name), False, OUTPUT_SOURCE)
    folders.add(ECHOMIMIC, str(Path(models) / ECHOMIMIC), False, DEFAULT)
    return folders


@dataclass
class ComfyDirs:
    """Where a ComfyUI install keeps its files, as ``folder_paths`` and ``main.py`` set them."""
    install: Path  # its own folder (main.py, extra_model_paths.yaml)
    models: Path
    input: Path
    output: Path
    custom_nodes: Path
    base: Path | None = None  # --base-directory, when given
    problems: list = field(default_factory=list)  # a folder given that is not there (ComfyUI fails with it)
    notes: list = field(default_factory=list)


def _install(path: Path, base) -> tuple[Path, Path]:
    """(ComfyUI's own folder, its models folder) from ``--comfyui PATH``: ComfyUI's folder, its models/, or the
    Windows portable build's folder (ComfyUI_windows_portable/ComfyUI/ inside)."""
    if (path / "models").is_dir() or base is not None and (path / "main.py").is_file():
        return path, path / "models"
    if path.name == "models" and path.is_dir():
        return (path.parent if (path.parent / "main.py").is_file() else path), path
    inner = path / "ComfyUI"  # the portable build: run_nvidia_gpu.bat, python_embeded/, ComfyUI/
    if (inner / "models").is_dir() or (inner / "main.py").is_file():
        return inner, inner / "models"
    if base is not None and path.is_dir():
        return path, path / "models"
    raise EchoMimicError(f"--comfyui {path}: no models/ folder there. Give ComfyUI's folder (the one holding main.py and "
                         "models/; in the Windows portable build ComfyUI_windows_portable/ComfyUI), or its models folder.")


def comfy_dirs(comfyui, base=None, input_dir=None, output_dir=None) -> ComfyDirs:
    """The install's folders; ``base``, ``input_dir``, ``output_dir``: ComfyUI's --base-directory, --input-directory,
    --output-directory (relative ones from the current folder, as ComfyUI takes them from the one it starts in)."""
    full = (lambda p: Path(os.path.abspath(os.path.expanduser(str(p)))) if p is not None else None)
    base, input_dir, output_dir = full(base), full(input_dir), full(output_dir)
    install, models = _install(Path(comfyui).expanduser(), base)
    real = Path(os.path.realpath(install))  # ComfyUI finds itself (and its yaml, and models/) through realpath(__file__)
    install, models = real, real if models == install else real / models.name if models.parent == install else models
    top = base if base is not None else install
    dirs = ComfyDirs(install, top / "models" if base is not None else models, input_dir or top / "input",
                     output_dir or top / "output", top / "custom_nodes", base)
    if base is not None and not base.is_dir():
        dirs.problems.append(f"--base-directory {base}: no such folder; ComfyUI started with it finds no models, custom "
                             f"nodes or inputs there (it creates only {base / 'input'}). Give the folder ComfyUI is "
                             "started with, or make it and move the models and this pack there: "
                             f"{make_dirs(base / 'models' / ECHOMIMIC, base / 'custom_nodes')}")
    if input_dir is not None and not input_dir.is_dir():
        dirs.problems.append(f"--input-directory {input_dir}: no such folder; ComfyUI does not make it (its Load Image "
                             f"node fails to list it, the gesture library's echomimic_poses/ is not there): "
                             f"{make_dirs(input_dir)}")
    if output_dir is not None and not output_dir.is_dir():
        dirs.notes.append(f"--output-directory {output_dir}: no such folder yet; ComfyUI makes it at the first save; to "
                          f"check now that it can be made: {make_dirs(output_dir)}")
    return dirs


def pack_in(roots) -> Path | None:
    """The sub-folder of a custom_nodes folder holding this pack (ComfyUI loads custom nodes only from those)."""
    for root in roots:
        try:
            for d in sorted(Path(root).iterdir()):
                if all((d / f).is_file() for f in PACK_FILES):
                    return d
        except OSError:
            continue
    return None
