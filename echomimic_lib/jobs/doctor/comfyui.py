"""``echomimic doctor --comfyui PATH``: the model folders of a ComfyUI install that the pack's nodes read, and what
each workflow kind (V1 audio, V1 landmark, V2, V3 flash-pro) finds there.

The pack's own files live in ``models/echomimic`` (checked as the models folder, with the rest of the report). V3
flash-pro in ComfyUI also needs three of core's files, loaded by core's nodes: the umT5 text encoder
(``models/text_encoders``, or the older ``models/clip``; Load CLIP, type wan), the ViT-H vision tower
(``models/clip_vision``; Load CLIP Vision) and the Wan 2.1 VAE (``models/vae``; Load VAE). The EchoMimic V3 Loader
itself reads only ``models/echomimic/<folder>/`` (base transformer, flash-pro file, wav2vec2), never
``models/diffusion_models``. Only the default folders are looked at: roots that ``extra_model_paths.yaml`` adds are
not read (said in the report when that file is there). Read-only: listings and a weight file's header.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from ...errors import EchoMimicError
from .models import file_problem

SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt")
REPACKAGED = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
# the folders ComfyUI reads each kind from (folder_paths' defaults), and what the pack's workflows take from them
FOLDERS = (
    ("echomimic", ("echomimic",), "V1/V2/V3: the pack's weights, MediaPipe, DWPose, poses/ (the models folder above)"),
    ("vae", ("vae",), "V3: Wan 2.1 VAE (Load VAE); V1/V2: an SD VAE file may be picked in the loader"),
    ("clip_vision", ("clip_vision",), "V3: clip_vision_h (Load CLIP Vision)"),
    ("text_encoders", ("text_encoders", "clip"), "V3: umT5-xxl (Load CLIP, type wan)"),
    ("diffusion_models", ("diffusion_models", "unet"), "not read by the pack (the V3 Loader reads models/echomimic/<folder>)"),
    ("loras", ("loras",), "V3: Wan2.1 1.3B LoRAs (EchoMimic V3 LoRA node, optional)"),
)
# (part, folder kind, name patterns (lower case, letters and digits only), the file the shipped workflows select, what)
CORE = (
    ("text_encoder", "text_encoders", ("umt5",), "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "umT5-xxl text encoder"),
    ("clip_vision", "clip_vision", ("clipvisionh", "vith"), "clip_vision_h.safetensors", "CLIP ViT-H vision tower"),
    ("wan_vae", "vae", ("wan21vae",), "wan_2.1_vae.safetensors", "Wan 2.1 VAE"),
)
MAX_DIRS = 20000  # a listing guard (ComfyUI follows symlinks; so does this, up to here)


def comfy_models_dir(path) -> Path:
    """ComfyUI's ``models/`` folder from ``--comfyui PATH`` (ComfyUI's own folder, or its models folder)."""
    p = Path(path).expanduser()
    if (p / "models").is_dir():
        return p / "models"
    if p.name == "models" and p.is_dir():
        return p
    raise EchoMimicError(f"--comfyui {path}: no models/ folder there. Give ComfyUI's folder (the one holding main.py and "
                         "models/) or its models folder.")


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


def _folders(models: Path) -> list[dict]:
    rows = []
    for kind, names, used in FOLDERS:
        paths = [models / n for n in names]
        there = [p for p in paths if p.is_dir()]
        rows.append({"kind": kind, "paths": [str(p) for p in paths], "present": [str(p) for p in there],
                     "files": sum(len(model_files(p)) for p in there) if kind != "echomimic" else None, "used_for": used})
    return rows


def core_part(models: Path, part: str) -> dict:
    """One of core's V3 files: the workflow's own name first, else any file whose name fits; a broken one is named."""
    _, kind, patterns, wanted, what = next(c for c in CORE if c[0] == part)
    names = next(f[1] for f in FOLDERS if f[0] == kind)
    roots = [models / n for n in names]
    dest = roots[0] / wanted
    fix = f"curl -L --create-dirs -o {shlex.quote(str(dest))} {REPACKAGED}/{kind}/{wanted}"
    row = {"part": part, "what": what, "folder": str(roots[0]), "status": "missing", "path": None, "bytes": 0,
           "problem": None, "fix": fix, "workflow_file": wanted, "candidates": []}
    hits = [f for r in roots if r.is_dir() for f in model_files(r) if any(p in _norm(f.name) for p in patterns)]
    hits.sort(key=lambda f: f.name != wanted)  # the shipped workflows' file first
    row["candidates"] = [str(f) for f in hits]
    bad = []
    for f in hits:
        why = file_problem(f)
        if why is None:
            row.update(status="ready", path=str(f), bytes=f.stat().st_size, fix=None)
            if f.name != wanted:
                row["problem"] = f"the shipped workflows select {wanted}: pick {f.name} in the loader instead"
            return row
        bad.append((f, why))
    if bad:
        row.update(status="broken", path=str(bad[0][0]), problem="; ".join(f"{f}: {w}" for f, w in bad),
                   fix="rm -- " + " ".join(shlex.quote(str(f)) for f, _ in bad) + " && " + fix)
    return row


def _stray_v3(models: Path) -> list[str]:
    """EchoMimicV3 files put into models/diffusion_models (or unet/), where the pack's V3 Loader never looks."""
    found = [f for n in ("diffusion_models", "unet") if (models / n).is_dir() for f in model_files(models / n)
             if "echomimic" in _norm(f.relative_to(models / n).as_posix())]
    return [f"{f}: the EchoMimic V3 Loader does not read models/{f.relative_to(models).parts[0]}; its flash-pro file goes to "
            f"models/echomimic/v3-flash/echomimicv3-flash-pro/diffusion_pytorch_model.safetensors" for f in found]


def v3_fix(root: Path) -> str:
    return ("switch on auto_download in the EchoMimic V3 Loader (fetches only these three parts, about 7.2 GB), or: "
            f"echomimic download --weights v3-flash --models {shlex.quote(str(root))} (also fetches the command line's "
            "own text and image encoders, about 13 GB more)")


def check_comfyui(path, models: Path, sets: list[dict], shared: list[dict], usable=("ready", "tiny")) -> dict:
    """The ComfyUI section: folders, core's V3 files, and per asked-for set what a workflow of that kind finds."""
    comfy = Path(path).expanduser()
    core = [core_part(models, c[0]) for c in CORE] if any(s["weights"] == "v3-flash" for s in sets) else []
    part = {p["part"]: p for p in shared}
    notes = _stray_v3(models)
    if (comfy / "extra_model_paths.yaml").is_file():
        notes.append(f"{comfy / 'extra_model_paths.yaml'} is there: the roots it adds are not checked (only ComfyUI's "
                     "default folders are)")
    labels = {"v1_audio": "V1 audio", "v1_pose": "V1 landmark", "v2": "V2"}
    modes = []
    for s in sets:
        if s["weights"] == "v3-flash":
            needs = [("v3-flash folder", s["status"] in usable)] + [(c["part"], c["status"] == "ready") for c in core]
            label, extra = "V3 flash-pro", []
        else:
            needs = [(f"{s['weights']} {s['variant']} weights", s["status"] in usable), ("vae", part["vae"]["status"] == "ready")]
            label, extra = labels[s["weights"]], []
            if part["vae"]["status"] != "ready":
                extra.append("or an SD ft-mse VAE file in models/vae (the loader's 'vae' input; 'auto' takes a name with "
                             "'ft-mse' in it)")
            if s["weights"].startswith("v1"):
                needs.append(("mediapipe face landmarker", part["mediapipe"]["status"] == "ready"))
            elif part["dwpose"]["status"] != "ready":
                extra.append("DWPose missing: pose-video and half-body-crop workflows will not run (pose folders do)")
        if s["status"] == "tiny":
            extra.append("tiny random weights: renders noise")
        modes.append({"mode": label, "variant": s["variant"], "ready": all(ok for _, ok in needs),
                      "missing": [n for n, ok in needs if not ok], "notes": extra})
    return {"path": str(comfy), "models_dir": str(models), "folders": _folders(models), "core": core, "modes": modes,
            "notes": notes}
