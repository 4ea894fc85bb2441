"""``echomimic doctor``: what this machine and a models folder can run, and the exact command that fixes each gap.

Read-only by design: it never downloads, writes or loads a network. It looks at file presence and sizes, a weight
file's first bytes and header, a detector model's container (a ``.task`` zip, a ``.tflite`` identifier, an ``.onnx``
file's top-level protobuf fields), package versions and importability, and PyTorch's devices. :func:`diagnose`
gathers everything (:mod:`.environment`, :mod:`.models`, :mod:`.detectors`, :mod:`.comfyui`); :mod:`.report` renders
it as a table.

What counts for the exit status (``ok``): the required packages, the weight sets asked for (all by default; ``tiny``
random-weight sets count as complete unless ``strict``), and what the asked-for sets need besides: for a V1 set the
MediaPipe face landmarker (animate's face crop), for a V1/V2 set an SD VAE the loaders can read, and with a ComfyUI
install (``comfyui``) for V3 flash-pro core's text encoder, vision tower and Wan VAE. A part is ``ready``,
``missing`` or ``broken``; only ``ready`` counts. DWPose, the face detector, the gesture library and the optional
packages are shown (with what needs them) but never make it fail.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import EchoMimicError
from ...modes import MODES, WEIGHT_SETS
from .comfy_paths import comfy_dirs, comfy_folders
from .environment import check_environment
from .desktop import find_comfyui
from .comfyui import check_comfyui, comfy_sets, comfy_vae, detectors_over_roots, gestures_over_roots
from .models import ALL_WEIGHTS, VARIANTS, V3_FOLDER, check_shared, check_v3, check_weight_set

USABLE = ("ready", "tiny")
AUTO = "auto"  # --comfyui auto


def diagnose(root, weights: str | None = None, variant: str | None = None, default_root=None, imports: bool = True,
             strict: bool = False, comfyui=None, extra_paths=(), base_directory=None, input_directory=None,
             output_directory=None) -> dict:
    """The whole report as plain data (the ``--json`` output). ``weights`` / ``variant`` limit it to one render's needs;
    ``strict``: tiny random-weight sets count as not ready; ``comfyui``: a ComfyUI folder (``root`` is then unused: the
    sets are looked for in its echomimic roots, as the nodes look, and its other model folders are checked too; "auto":
    found by itself, see :mod:`.desktop`);
    ``extra_paths``: the yaml files given to ComfyUI's --extra-model-paths-config (its own extra_model_paths.yaml is
    read anyway); ``base_directory``, ``input_directory``, ``output_directory``: ComfyUI's --base-directory,
    --input-directory, --output-directory (the folders move as ComfyUI moves them; one given but missing is a
    finding)."""
    if weights is not None and weights not in ALL_WEIGHTS:
        raise EchoMimicError(f"--weights {weights}: choose one of {', '.join(ALL_WEIGHTS)}.")
    if variant is not None and variant not in VARIANTS:
        raise EchoMimicError(f"--variant {variant}: use normal or acc.")
    if weights == V3_FOLDER and variant not in (None, "normal"):
        raise EchoMimicError(f"--variant {variant}: EchoMimicV3 flash-pro has one set of weights; drop --variant.")
    found = None
    if comfyui is not None and str(comfyui) == AUTO:  # ComfyUI Desktop, or the ComfyUI holding this pack (.desktop)
        found = find_comfyui()
        comfyui, base_directory = found.comfyui, base_directory or found.base
        extra_paths = [*found.extra_paths, *(extra_paths or ())]
    dirs = comfy_dirs(comfyui, base_directory, input_directory, output_directory) if comfyui is not None else None
    comfy_models = dirs.models if dirs is not None else None
    usable = ("ready",) if strict else USABLE
    env = check_environment(imports=imports)
    names = [weights] if weights else list(ALL_WEIGHTS)
    variants = [variant] if variant else list(VARIANTS)
    if comfy_models is not None:  # where the nodes look: every echomimic root, in ComfyUI's order
        folders = comfy_folders(dirs.install, comfy_models, extra_paths, output=dirs.output, custom_nodes=dirs.custom_nodes,
                                own_yaml=found is None or found.code is not None)  # Desktop's code folder not found
        root, sets = comfy_sets(folders, names, variants, default_root, usable)
    else:
        root = Path(root).expanduser()
        sets = [check_v3(root, default_root) if w == V3_FOLDER else check_weight_set(root, w, v, default_root)
                for w in names for v in ([None] if w == V3_FOLDER else variants)]
    shared = check_shared(root, sets, default_root)
    if comfy_models is not None:
        shared = detectors_over_roots([comfy_vae(p, folders) if p["part"] == "vae" else p for p in shared], folders, root)
        dw = next(p for p in shared if p["part"] == "dwpose").get("found_in")  # the root the nodes take DWPose from
        shared = [gestures_over_roots(p, folders, dirs.input, dw and Path(dw)) if p["part"] == "poses" else p
                  for p in shared]
    part = {p["part"]: p for p in shared}
    need_mp = any(s["weights"] in WEIGHT_SETS and s["weights"].startswith("v1") for s in sets)
    need_vae = any(s["weights"] in WEIGHT_SETS for s in sets)
    problems = [f"package {p['name']}: {p['problem']}" for p in env["packages"] if p["problem"] and p["required"]]
    if not env["torch"].get("installed"):
        problems.append(env["torch"]["problem"])
    problems += [f"{s['weights']}{' ' + s['variant'] if s['variant'] else ''}: {s['status']}"
                 + (" (random weights; --strict)" if s["status"] == "tiny" else "") for s in sets if s["status"] not in usable]
    if need_mp and part["mediapipe"]["status"] != "ready":
        problems.append(f"mediapipe face landmarker: {part['mediapipe']['status']}")
    # the CLI's sets carry a missing VAE; with --comfyui the sets leave it out (the loader may take a vae file): once here
    if need_vae and (part["vae"]["status"] == "broken" or comfy_models is not None and part["vae"]["status"] != "ready"):
        problems.append(f"vae: {part['vae']['status']}")
    vae, vae_ok = part["vae"], part["vae"]["status"] != "broken"
    vae_state = vae["status"]
    if comfy_models is not None:  # animate takes an sd-vae-ft-mse/ folder, never a file of ComfyUI's vae folders
        vae_ok = vae["status"] == "ready" and not vae.get("source")
        vae_state = "a file in a ComfyUI vae folder only (animate needs an sd-vae-ft-mse/ folder)" if vae.get("source") else vae_state
    modes = runnable(sets, part["mediapipe"]["status"] == "ready", usable, vae_ok=vae_ok, vae_state=vae_state)
    report = {"models": str(root), "read_only": True, "strict": strict, "environment": env, "weight_sets": sets,
              "shared": shared, "modes": modes}
    if comfy_models is not None:
        report["comfyui"] = check_comfyui(comfyui, folders, sets, shared, usable, dirs)
        if found is not None:
            report["comfyui"]["detected"] = found.as_dict()
        problems += [f"comfyui {p}" for p in dirs.problems + folders.problems]
        problems += [f"comfyui {c['part']}: {c['status']}" for c in report["comfyui"]["core"] if c["status"] != "ready"]
    report.update(problems=problems, ok=not problems)
    return report


def runnable(sets: list[dict], mediapipe: bool, usable=USABLE, vae_ok: bool = True, vae_state: str = "broken") -> list[dict]:
    """Each animate mode and variant among the checked sets: runnable now, or why not (``vae_ok``: the SD VAE the
    V1/V2 loaders take is not a broken one)."""
    by = {(s["weights"], s["variant"]): s for s in sets}
    out = []
    for mode in MODES.values():
        for v in VARIANTS:
            s = by.get((mode.weights, v))
            if s is None:
                continue
            notes = []
            if s["status"] in usable and mode.condition in ("face_mask", "landmarks") and not mediapipe:
                notes.append("with --no-face-crop (MediaPipe face landmarker missing or broken)")
            if s["status"] == "tiny":
                notes.append("tiny random weights: renders noise (smoke runs only)")
            note = "; ".join(notes) or None
            row = {"mode": mode.name, "variant": v, "weights": mode.weights, "ready": s["status"] in usable and vae_ok,
                   "status": s["status"], "note": note, "fix": s["fix"]}
            if s["status"] in usable and not vae_ok:
                row["why"] = f"the SD VAE is {vae_state}, see Shared parts"
            out.append(row)
    s = by.get((V3_FOLDER, None))
    if s is not None:
        out.append({"mode": V3_FOLDER, "variant": None, "weights": V3_FOLDER, "ready": s["status"] in usable,
                    "status": s["status"], "note": "tiny random weights" if s["status"] == "tiny" else None, "fix": s["fix"]})
    return out
