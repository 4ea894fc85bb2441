"""``echomimic doctor``: what this machine and a models folder can run, and the exact command that fixes each gap.

Read-only by design: it never downloads, writes or loads a network. It looks at file presence and sizes (a weight
file's first bytes at most), package versions and importability, and PyTorch's devices. :func:`diagnose` gathers
everything (:mod:`.environment`, :mod:`.models`); :mod:`.report` renders it as a table.

What counts for the exit status (``ok``): the required packages, the weight sets asked for (all by default; ``tiny``
random-weight sets count as complete), and the MediaPipe face landmarker when a V1 set is asked for (animate's face
crop). DWPose, the gesture library and the optional packages are shown but never make it fail.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import EchoMimicError
from ...modes import MODES, WEIGHT_SETS
from .environment import check_environment
from .models import ALL_WEIGHTS, VARIANTS, V3_FOLDER, check_shared, check_v3, check_weight_set

USABLE = ("ready", "tiny")


def diagnose(root, weights: str | None = None, variant: str | None = None, default_root=None, imports: bool = True) -> dict:
    """The whole report as plain data (the ``--json`` output). ``weights`` / ``variant`` limit it to one render's needs."""
    if weights is not None and weights not in ALL_WEIGHTS:
        raise EchoMimicError(f"--weights {weights}: choose one of {', '.join(ALL_WEIGHTS)}.")
    if variant is not None and variant not in VARIANTS:
        raise EchoMimicError(f"--variant {variant}: use normal or acc.")
    if weights == V3_FOLDER and variant not in (None, "normal"):
        raise EchoMimicError(f"--variant {variant}: EchoMimicV3 flash-pro has one set of weights; drop --variant.")
    root = Path(root).expanduser()
    env = check_environment(imports=imports)
    names = [weights] if weights else list(ALL_WEIGHTS)
    variants = [variant] if variant else list(VARIANTS)
    sets = [check_v3(root, default_root) if w == V3_FOLDER else check_weight_set(root, w, v, default_root)
            for w in names for v in ([None] if w == V3_FOLDER else variants)]
    shared = check_shared(root, sets, default_root)
    mediapipe = next(s for s in shared if s["part"] == "mediapipe")
    need_mp = any(s["weights"] in WEIGHT_SETS and s["weights"].startswith("v1") for s in sets)
    problems = [f"package {p['name']}: {p['problem']}" for p in env["packages"] if p["problem"] and p["required"]]
    if not env["torch"].get("installed"):
        problems.append(env["torch"]["problem"])
    problems += [f"{s['weights']}{' ' + s['variant'] if s['variant'] else ''}: {s['status']}" for s in sets if s["status"] not in USABLE]
    if need_mp and mediapipe["status"] != "ready":
        problems.append("mediapipe face landmarker: missing")
    return {"models": str(root), "read_only": True, "environment": env, "weight_sets": sets, "shared": shared,
            "modes": runnable(sets, mediapipe["status"] == "ready"), "problems": problems, "ok": not problems}


def runnable(sets: list[dict], mediapipe: bool) -> list[dict]:
    """Each animate mode and variant among the checked sets: runnable now, or why not."""
    by = {(s["weights"], s["variant"]): s for s in sets}
    out = []
    for mode in MODES.values():
        for v in VARIANTS:
            s = by.get((mode.weights, v))
            if s is None:
                continue
            notes = []
            if s["status"] in USABLE and mode.condition in ("face_mask", "landmarks") and not mediapipe:
                notes.append("with --no-face-crop (MediaPipe face landmarker missing)")
            if s["status"] == "tiny":
                notes.append("tiny random weights: renders noise (smoke runs only)")
            note = "; ".join(notes) or None
            out.append({"mode": mode.name, "variant": v, "weights": mode.weights, "ready": s["status"] in USABLE,
                        "status": s["status"], "note": note, "fix": s["fix"]})
    s = by.get((V3_FOLDER, None))
    if s is not None:
        out.append({"mode": V3_FOLDER, "variant": None, "weights": V3_FOLDER, "ready": s["status"] in USABLE,
                    "status": s["status"], "note": "tiny random weights" if s["status"] == "tiny" else None, "fix": s["fix"]})
    return out
