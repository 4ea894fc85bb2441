"""``echomimic doctor --comfyui PATH``: the model folders of a ComfyUI install that the pack's nodes read, and what
each workflow kind (V1 audio, V1 landmark, V2, V3 flash-pro) finds there.

Every folder kind is looked up where ComfyUI looks: its default ``models/<folder>`` and every folder that
``extra_model_paths.yaml`` (and the ``--extra-model-paths-config`` files) add, in ComfyUI's order
(:mod:`.comfy_paths`); each file found is shown with the folder it came from. The pack's own files live in the
``echomimic`` roots (the yaml's ``echomimic:`` folders, then ``models/echomimic``); the V1/V2 loader takes the first
root holding a set, the EchoMimic V3 Loader any ``<root>/<folder>/`` holding the flash-pro file (its ``folder``
list), never ``models/diffusion_models``. V3 flash-pro in ComfyUI also needs three of core's files, loaded by core's
nodes: the umT5 text encoder (``text_encoders``, or the older ``clip``; Load CLIP, type wan), the ViT-H vision tower
(``clip_vision``; Load CLIP Vision) and the Wan 2.1 VAE (``vae``; Load VAE). V1/V2's SD VAE is the set's
``sd-vae-ft-mse/``, else (the loader's ``vae: auto``) a file in the ``vae`` folders named ``*ft-mse*`` or
``*echomimic*``. The gesture library is every root's ``poses/`` and ``<input>/echomimic_poses`` (the Gestures node's
'all pose folders'). A V3 fix names the Loader folder the files are in; a folder linked out of its root is refused
by the loader (nodes/paths.safe_child), so it is broken here. Read-only: listings and a weight file's header.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ...errors import EchoMimicError
from ...io.file_safety import resolved_outside
from ...models.wan.sources import COMFY_PARTS, V3_FOLDER
from .comfy_paths import DEFAULT, ECHOMIMIC, ComfyDirs, ComfyFolders, pack_in
from .models import _size, check_v3, check_weight_set, file_problem, poses_command
from .shell import copy, download, echomimic, fix as with_remarks, remove, then

SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt")
REPACKAGED = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
FLASH_FILE = "echomimicv3-flash-pro/diffusion_pytorch_model.safetensors"  # nodes/v3.py: what makes a V3 Loader folder
# the folder kinds shown, and what the pack's workflows take from them
FOLDERS = (
    ("echomimic", "V1/V2/V3: the pack's weights, MediaPipe, DWPose, poses/ (the models folder above)"),
    ("vae", "V3: Wan 2.1 VAE (Load VAE); V1/V2: an SD VAE file may be picked in the loader"),
    ("clip_vision", "V3: clip_vision_h (Load CLIP Vision)"),
    ("text_encoders", "V3: umT5-xxl (Load CLIP, type wan)"),
    ("diffusion_models", "not read by the pack (the V3 Loader reads <echomimic root>/<folder>)"),
    ("loras", "V3: Wan2.1 1.3B LoRAs (EchoMimic V3 LoRA node, optional)"),
)
# (part, folder kind, name patterns (lower case, letters and digits only), the file the shipped workflows select, what)
CORE = (
    ("text_encoder", "text_encoders", ("umt5",), "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "umT5-xxl text encoder"),
    ("clip_vision", "clip_vision", ("clipvisionh", "vith"), "clip_vision_h.safetensors", "CLIP ViT-H vision tower"),
    ("wan_vae", "vae", ("wan21vae",), "wan_2.1_vae.safetensors", "Wan 2.1 VAE"),
)
LOADER_NEED = ("reference", "denoiser", "motion", "cond", "whisper")  # nodes/loader.BASE_NEED: the VAE may come from elsewhere
INPUT_POSES = "echomimic_poses"  # nodes/paths.INPUT_POSE_FOLDER: pose folders in ComfyUI's input folder
MAX_DIRS = 20000  # a listing guard (ComfyUI follows symlinks; so does this, up to here)


def model_files(folder: Path) -> list[Path]:
    """Weight files under ``folder`` (sub-folders too, as ComfyUI lists them), sorted by their relative name."""
    out, seen = [], 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        seen += 1
        if seen > MAX_DIRS:
            break
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in filenames if f.lower().endswith(SUFFIXES) and not f.startswith(".")]
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _root_of(roots: list[Path], f: Path) -> Path:
    return next(r for r in roots if r == f or r in f.parents)


def _folders(folders: ComfyFolders) -> list[dict]:
    rows = []
    for kind, used in FOLDERS:
        roots = []
        for p in folders.roots(kind):
            there = p.is_dir()
            roots.append({"path": str(p), "source": folders.source(kind, p), "present": there,
                          "files": len(model_files(p)) if there and kind != ECHOMIMIC else None})
        rows.append({"kind": kind, "paths": [r["path"] for r in roots], "present": [r["path"] for r in roots if r["present"]],
                     "files": sum(r["files"] or 0 for r in roots) if kind != ECHOMIMIC else None, "roots": roots,
                     "used_for": used})
    return rows


def core_part(folders: ComfyFolders, part: str) -> dict:
    """One of core's V3 files: the workflow's own name first (in the first folder holding it, as ComfyUI's
    get_full_path), else any file whose name fits; a broken one is named; the folder it came from is said."""
    _, kind, patterns, wanted, what = next(c for c in CORE if c[0] == part)
    roots = folders.roots(kind)
    dest = roots[0] / wanted
    fix = download(dest, f"{REPACKAGED}/{kind}/{wanted}")
    row = {"part": part, "what": what, "folder": str(roots[0]), "status": "missing", "path": None, "bytes": 0,
           "problem": None, "fix": fix, "workflow_file": wanted, "candidates": [], "found_in": None, "source": None}
    hits = [f for r in roots if r.is_dir() for f in model_files(r) if any(p in _norm(f.name) for p in patterns)]
    hits.sort(key=lambda f: f.name != wanted)  # the shipped workflows' file first
    row["candidates"] = [str(f) for f in hits]
    bad = []
    for f in hits:
        why = file_problem(f)
        if why is None:
            root = _root_of(roots, f)
            row.update(status="ready", path=str(f), bytes=f.stat().st_size, fix=None, found_in=str(root),
                       source=folders.source(kind, root))
            if f.name != wanted:
                row["problem"] = f"the shipped workflows select {wanted}: pick {f.name} in the loader instead"
            return row
        bad.append((f, why))
    if bad:
        row.update(status="broken", path=str(bad[0][0]), problem="; ".join(f"{f}: {w}" for f, w in bad),
                   fix=then(remove(f for f, _ in bad), fix))
    return row


def _stray_v3(folders: ComfyFolders) -> list[str]:
    """EchoMimicV3 files put into the diffusion_models (or unet/) folders, where the pack's V3 Loader never looks."""
    roots = [r for r in folders.roots("diffusion_models") if r.is_dir()]
    found = [(r, f) for r in roots for f in model_files(r) if "echomimic" in _norm(f.relative_to(r).as_posix())]
    where = {r: f"models/{r.name}" if folders.source("diffusion_models", r) == DEFAULT else f"{r} (a diffusion_models folder)"
             for r in roots}
    return [f"{f}: the EchoMimic V3 Loader does not read {where[r]}; its flash-pro file goes to "
            f"{folders.roots(ECHOMIMIC)[0]}/v3-flash/{FLASH_FILE}" for r, f in found]


def v3_folders(roots: list[Path]) -> list[tuple[str, Path]]:
    """The EchoMimic V3 Loader's ``folder`` choices and the folder each opens: every sub-folder of an echomimic root
    holding the flash-pro file (else 'v3-flash'), each taken from the first root where it is a folder (find_named)."""
    names = set()
    for r in roots:
        try:
            names.update(p.name for p in r.iterdir() if (p / FLASH_FILE).is_file())
        except OSError:  # not there, or unreadable: nothing to list (as the node's list)
            continue
    names = sorted(names) or ["v3-flash"]
    return [(n, next((r / n for r in roots if (r / n).is_dir()), roots[0] / n)) for n in names]


def vae_file(folders: ComfyFolders) -> Path | None:
    """The loader's ``vae: auto`` fallback (nodes/paths.default_vae_file): the first name, over the sorted names of
    every vae folder, with 'ft-mse' or 'echomimic' in it, from the first folder holding it."""
    roots = [r for r in folders.roots("vae") if r.is_dir()]
    names = sorted({f.relative_to(r).as_posix() for r in roots for f in model_files(r)})
    for name in names:
        if "ft-mse" in name.lower() or "echomimic" in name.lower():
            return next(r / name for r in roots if (r / name).is_file())
    return None


def comfy_vae(row: dict, folders: ComfyFolders) -> dict:
    """The shared 'vae' row as the V1/V2 loader finds it in ComfyUI: the models root's sd-vae-ft-mse/ (``row``), else a
    file in the vae folders."""
    if row["status"] != "missing":  # root's own sd-vae-ft-mse/ (check_shared looked where the loader looks first)
        return row
    f = vae_file(folders)
    if f is None:
        where = folders.roots("vae")[0]
        return dict(row, fix=with_remarks(row["fix"], "or put an SD ft-mse VAE file, e.g. "
                                          f"vae-ft-mse-840000-ema-pruned.safetensors, into {where}"))
    r = _root_of(folders.roots("vae"), f)
    out = dict(row, what=row["what"] + " (here: the loader's vae 'auto' file)", path=str(f), bytes=f.stat().st_size,
               missing=[], fix=None, found_in=str(r), source=folders.source("vae", r), status="ready")
    if real := _escape(r, f):  # nodes/paths.default_vae_file takes it through safe_child, which refuses it
        out.update(status="broken", broken=[{"path": str(f), "problem": (
            f"a link to {real}, outside {r}: the loader's vae 'auto' refuses a file that leaves its vae folder")}],
            fix=with_remarks(then(remove([f]), copy(real, f)), f"or add {real.parent} as a 'vae:' folder in "
                             "extra_model_paths.yaml and remove the link"))
    elif why := file_problem(f):
        out.update(status="broken", broken=[{"path": str(f), "problem": why}], fix=remove([f]))
    return out


def comfy_sets(folders: ComfyFolders, names, variants, default_root, usable) -> tuple[Path, list[dict]]:
    """Each asked-for set as the nodes find it over the echomimic roots (V1/V2: the first root holding the set's files;
    V3: the V3 Loader's folder choices, the first usable one shown), and the root the shared parts are checked in
    (the first set's, else the first root there)."""
    roots = folders.roots(ECHOMIMIC)
    sets, found = [], []
    for w in names:
        if w == V3_FOLDER:
            choices = [(n, f, _v3_choice(roots, n, f, default_root)) for n, f in v3_folders(roots)]
            n, f, row = next((c for c in choices if c[2]["status"] in usable), None) or _closest(choices)
            r = _root_of(roots, f)
            row.update(found_in=f"{f} (the V3 Loader's folder '{n}'; {folders.source(ECHOMIMIC, r)})",
                       choices=[{"folder": c[0], "path": str(c[1]), "status": c[2]["status"]} for c in choices])
            sets.append(row)
            found += [r] if row["status"] != "missing" else []
            continue
        for v in variants:
            rows = [(r, check_weight_set(r, w, v, default_root, need=LOADER_NEED)) for r in roots]
            r, row = next((x for x in rows if x[1]["status"] != "missing"), rows[0])
            if row["status"] != "missing":
                row["found_in"] = f"{r} ({folders.source(ECHOMIMIC, r)})"
                found.append(r)
            sets.append(row)
    primary = found[0] if found else next((r for r in roots if r.is_dir()), roots[0])
    return primary, sets


def detectors_over_roots(shared: list[dict], folders: ComfyFolders, primary: Path) -> list[dict]:
    """MediaPipe's and DWPose's rows as the nodes find them: in the first echomimic root holding them whole (the
    nodes pass every root), else the models root's row (its fix lines point there)."""
    from .detectors import COMFY_REMARK, dwpose_row, mediapipe_row

    roots = [r for r in folders.roots(ECHOMIMIC) if r.is_dir()]
    out = []
    for p in shared:
        if p["part"] == "mediapipe":  # the nodes' way to fetch the landmarker, not the command line's
            p = mediapipe_row(primary, COMFY_REMARK)
        fn = {"mediapipe": lambda r: mediapipe_row(r, COMFY_REMARK), "dwpose": dwpose_row}.get(p["part"])
        for r in roots if fn is not None else ():
            row = p if r == primary else fn(r)
            if row["status"] == "ready":
                p = dict(row, found_in=str(r), source=folders.source(ECHOMIMIC, r))
                break
        out.append(p)
    return out


def gestures_over_roots(row: dict, folders: ComfyFolders, input_dir: Path, dwpose_root: Path | None = None) -> dict:
    """The gesture library as the Gestures from Audio node reads it ('all pose folders', nodes/gestures): the pose
    sequences of every ``<echomimic root>/poses`` and of ``<input>/echomimic_poses``, each root said with its count
    (``dwpose_root``: the echomimic root holding DWPose, the ``--models`` of the fix's ``echomimic poses``)."""
    from ...pose.gestures.library import find_sources

    roots = [(r / "poses", folders.source(ECHOMIMIC, r)) for r in folders.roots(ECHOMIMIC)]
    roots.append((input_dir / INPUT_POSES, "ComfyUI's input folder"))
    found = []
    for lib, source in roots:
        try:
            seqs = find_sources(lib)
        except EchoMimicError:  # not there, or nothing in it (the node skips it too)
            continue
        linked = [q.name for q in seqs if q != lib and _escape(lib, q) is not None]  # picked by name: refused
        found.append({"path": str(lib), "source": source, "sequences": len(seqs), "bytes": _size(lib), "linked_out": linked})
    out = dict(row, roots=found, sequences=sum(f["sequences"] for f in found), bytes=sum(f["bytes"] for f in found))
    if not found:
        first = roots[0][0]
        return dict(out, status="missing", path=None, missing=[f"{lib}/<name>/0.npy, 1.npy, ..." for lib, _ in roots],
                    fix=with_remarks(poses_command(first, ['--models', dwpose_root or first.parent]), "or copy "
                                     f"EchoMimicV2's assets/halfbody_demo/pose/* into {first} or {roots[-1][0]}"))
    where = "; ".join(f"{f['path']} ({f['source']}): {f['sequences']}" for f in found)
    linked = [f"{f['path']}/{n}" for f in found for n in f["linked_out"]]
    note = (f"linked from outside its folder: {', '.join(linked)}; 'all pose folders' takes it, but picked by name (the "
            "Gestures node's library, the pose folder loader) the node refuses it: copy the folder in instead of the "
            "link, or add its folder to extra_model_paths.yaml as an echomimic root's poses/") if linked else None
    return dict(out, status="ready", path=found[0]["path"], missing=[], fix=None, source=found[0]["source"],
                found_in=where, problem=note)


def v3_fix(root: Path, names=(V3_FOLDER,)) -> str:
    """The line that fills a V3 Loader folder (``names``: its choice, or the choices nothing tells apart): the loader's
    auto_download fills the folder picked; ``echomimic download`` fills ``<root>/v3-flash`` only."""
    which = " or ".join(f"'{n}'" for n in names)
    cli = echomimic("download", "--weights", "v3-flash", "--models", root)
    if V3_FOLDER in names:
        return with_remarks(cli, f"switch on auto_download in the EchoMimic V3 Loader with folder {which} (fetches only "
                            "these three parts, about 7.2 GB), or run the command below: it fills "
                            f"{root / V3_FOLDER} and also fetches the command line's own text and image encoders, about "
                            "13 GB more")
    return with_remarks(cli, f"switch on auto_download in the EchoMimic V3 Loader with folder {which} (fetches only these "
                        "three parts into that folder, about 7.2 GB), or run the command below (about 20 GB): the command "
                        f"line fills a folder named v3-flash, not {which}, so then pick folder 'v3-flash'")


def _escape(root: Path, child: Path) -> Path | None:
    """Where ``child`` really is when a link takes it out of ``root`` (nodes/paths.safe_child refuses it), else None."""
    try:
        return resolved_outside(root, child)
    except (OSError, RuntimeError):
        return None


def _v3_choice(roots: list[Path], name: str, folder: Path, default_root) -> dict:
    """One V3 Loader folder choice, checked as the loader opens it (a link out of its root is refused there)."""
    row = check_v3(folder.parent, default_root, COMFY_PARTS, v3_fix(folder.parent, [name]), folder=folder)
    real = _escape(folder.parent, folder) if folder.is_dir() else None
    if real is not None:
        row.update(status="broken", broken=row["broken"] + [{"component": "folder", "path": str(folder), "problem": (
            f"a link to {real}, outside {folder.parent}: the V3 Loader refuses a folder that leaves its echomimic root")}],
            fix=with_remarks(None, f"add {real.parent} as an echomimic root in extra_model_paths.yaml (a section with "
                             f"'echomimic: {real.parent}'; the loader's folder is then '{real.name}'), or move {real} "
                             f"itself to {folder}"))
    return row


def _closest(choices: list) -> tuple:
    """None usable: the choice the files point to (the fewest files missing or broken); ties are named together."""
    gap = [len(c[2]["missing"]) + len(c[2]["broken"]) for c in choices]
    tied = [c for c, g in zip(choices, gap) if g == min(gap)]
    n, f, row = tied[0]
    if len(tied) > 1 and row["status"] == "missing":
        row["fix"] = v3_fix(f.parent, [c[0] for c in tied])
    return n, f, row


def check_comfyui(path, folders: ComfyFolders, sets: list[dict], shared: list[dict], usable=("ready", "tiny"),
                  dirs: ComfyDirs | None = None) -> dict:
    """The ComfyUI section: folders, core's V3 files, and per asked-for set what a workflow of that kind finds."""
    comfy = Path(path).expanduser()
    core = [core_part(folders, c[0]) for c in CORE] if any(s["weights"] == "v3-flash" for s in sets) else []
    part = {p["part"]: p for p in shared}
    notes = _stray_v3(folders) + [f"read {f}" for f in folders.files if not any(p.startswith(f"{f}:") for p in folders.problems)]
    notes += _v3_name_notes(sets) + (dirs.notes if dirs is not None else [])
    labels = {"v1_audio": "V1 audio", "v1_pose": "V1 landmark", "v2": "V2"}
    modes = []
    for s in sets:
        if s["weights"] == "v3-flash":
            needs = [("v3-flash folder", s["status"] in usable)] + [(c["part"], c["status"] == "ready") for c in core]
            label, extra = "V3 flash-pro", []
        else:  # the set's own files and whisper; the VAE once, as the loader finds it
            needs = [(f"{s['weights']} {s['variant']} weights", s["status"] in usable), ("vae", part["vae"]["status"] == "ready")]
            label, extra = labels[s["weights"]], []
            if part["vae"]["status"] != "ready":
                extra.append("or an SD ft-mse VAE file in the vae folder (the loader's 'vae' input; 'auto' takes a name "
                             "with 'ft-mse' in it)")
            if s["weights"].startswith("v1"):
                needs.append(("mediapipe face landmarker", part["mediapipe"]["status"] == "ready"))
            elif part["dwpose"]["status"] != "ready":
                extra.append("DWPose missing: pose-video and half-body-crop workflows will not run (pose folders do)")
        if s["status"] == "tiny":
            extra.append("tiny random weights: renders noise")
        modes.append({"mode": label, "variant": s["variant"], "ready": all(ok for _, ok in needs),
                      "missing": [n for n, ok in needs if not ok], "notes": extra})
    out = {"path": str(comfy), "models_dir": str(folders.models), "folders": _folders(folders), "core": core,
           "modes": modes, "notes": notes, "extra_model_paths": {"files": folders.files, "problems": folders.problems}}
    if dirs is not None:  # where ComfyUI's start options put things, whether the pack is there, and what is wrong
        roots = folders.roots("custom_nodes")
        pack = pack_in(roots)
        out["directories"] = {"base": str(dirs.base) if dirs.base is not None else None, "install": str(dirs.install),
                              "input": str(dirs.input), "output": str(dirs.output),
                              "custom_nodes": [str(r) for r in roots], "pack": str(pack) if pack else None,
                              "problems": dirs.problems}
        if pack is None and dirs.base is not None and dirs.base.is_dir():
            own = dirs.install / "custom_nodes"
            other = f" (not from {own})" if own not in roots else ""  # the same folder when ComfyUI's own is not known
            dirs.problems.append(
                f"custom_nodes: the EchoMimic pack is in none of {', '.join(map(str, roots))}; ComfyUI started with "
                f"--base-directory {dirs.base} loads custom nodes from there only{other}: "
                f"move or link the pack's folder into {roots[0]}")
    return out


def _v3_name_notes(sets: list[dict]) -> list[str]:
    """A V3 Loader folder choice other than the shipped workflows' 'v3-flash' (their loader then fails validation)."""
    v3 = next((s for s in sets if s["weights"] == V3_FOLDER and s.get("choices")), None)
    names = [c["folder"] for c in v3["choices"]] if v3 else []
    if not names or V3_FOLDER in names:
        return []
    return [f"the shipped V3 workflows select the V3 Loader folder 'v3-flash'; this install offers {', '.join(names)}: "
            "pick it in the loader (or rename the folder to v3-flash)"]
