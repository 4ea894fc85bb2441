"""``echomimic doctor``, the environment: Python, PyTorch and its devices, and each package the pack needs, checked
against the bounds the pack declares (pyproject.toml / requirements.txt, else the installed package's metadata).

Only looks: versions come from the installed distributions' metadata; a package is imported only to see that it
imports (OpenCV, MediaPipe, onnxruntime: a broken wheel often installs fine and fails here). Nothing is written.
"""
from __future__ import annotations

import importlib
import os
import sys
from importlib import metadata
from pathlib import Path

from .shell import fix as with_remarks, python_pip, then

# (distribution, import name, what it is for, required). The bounds come from the pack's declared dependencies.
PACKAGES = (
    ("numpy", "numpy", "arrays", True),
    ("diffusers", "diffusers", "V1/V2 VAE and UNet blocks", True),
    ("transformers", "transformers", "whisper / V3 encoders", True),
    ("safetensors", "safetensors", "weight files", True),
    ("huggingface_hub", "huggingface_hub", "echomimic download", True),
    ("einops", "einops", "tensor reshapes", True),
    ("av", "av", "audio and video files", True),
    ("soxr", "soxr", "audio resampling", True),
    ("scipy", "scipy", "V3 loudness", True),
    ("tqdm", "tqdm", "progress bars", True),
    ("mediapipe", "mediapipe", "V1 face crop and landmarks", True),
    ("opencv-contrib-python", "cv2", "images, drawing", True),
    ("onnxruntime", "onnxruntime", "DWPose (V2 poses from a video)", True),
    ("accelerate", "accelerate", "faster diffusers loads; training", False),
    ("peft", "peft", "training LoRAs", False),
    ("xformers", "xformers", "an optional attention backend", False),
)
OPENCV_DISTS = ("opencv-python", "opencv-contrib-python", "opencv-python-headless", "opencv-contrib-python-headless")
ONNX_DISTS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-silicon")
OPTIONAL_BOUNDS = {"accelerate": "accelerate>=1.0", "peft": "peft>=0.13"}  # pyproject's [train] extra
PROJECT = "comfyui-echomimic"


def _canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def declared_requirements() -> dict[str, str]:
    """{canonical name: requirement text} the pack declares (torch aside: ComfyUI's own build is used)."""
    texts: list[str] = []
    pyproject = Path(__file__).resolve().parents[3] / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        try:
            texts = list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
        except (OSError, ValueError, KeyError):
            texts = []
    if not texts:
        try:
            texts = [r for r in (metadata.requires(PROJECT) or []) if "extra ==" not in r]
        except metadata.PackageNotFoundError:
            texts = []
    out = {}
    for t in texts:
        t = t.split(";", 1)[0].strip()
        name = t
        for sep in "<>=!~[ (":
            name = name.split(sep, 1)[0]
        if name and _canon(name) != "torch":
            out[_canon(name)] = t.replace(" ", "")
    for name, req in OPTIONAL_BOUNDS.items():
        out.setdefault(name, req)
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _in_bounds(req: str, version: str) -> bool | None:
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version

        return Requirement(req).specifier.contains(Version(version), prereleases=True)
    except Exception:  # packaging missing or an odd version string: cannot tell
        return None


def pip(*args: str) -> str:
    """A pip command for this very Python (the one ComfyUI runs on, when doctor runs there)."""
    return python_pip(*args)


def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken wheel raising anything while it loads
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return None


def _installed(dists) -> list[str]:
    return [d for d in dists if _version(d) is not None]


def check_package(dist: str, module: str, purpose: str, required: bool, bounds: dict[str, str], imports: bool = True) -> dict:
    """One row: version, the declared bound, and a problem with the pip line that fixes it."""
    req = bounds.get(_canon(dist), dist)
    alts = {"cv2": OPENCV_DISTS, "onnxruntime": ONNX_DISTS}.get(module, (dist,))
    present = _installed(alts)
    row = {"name": dist, "module": module, "purpose": purpose, "required": required, "requirement": req,
           "distribution": present[0] if present else None, "version": _version(present[0]) if present else None,
           "status": "ok", "problem": None, "fix": None}
    if not present:
        row["status"] = "missing" if required else "optional"
        if required:
            row["problem"] = "not installed"
            row["fix"] = pip("install", req)
        return row
    if module == "cv2" and len(present) > 1:
        row["status"] = "conflict"
        row["problem"] = (f"{len(present)} OpenCV distributions installed ({', '.join(present)}); they overwrite each other's "
                          "cv2 files, so which one you get (and whether it works) depends on the install order")
        row["fix"] = then(pip("uninstall", "-y", *present), pip("install", req))  # gone: a plain install, deps kept
        return row
    ok = _in_bounds(req, row["version"]) if req != dist else True
    if ok is False:
        row["status"] = "out of bounds"
        row["problem"] = f"{row['distribution']} {row['version']} is outside the pack's bound {req}"
        row["fix"] = pip("install", req)
        return row
    error = _import_error(module) if imports else None
    if error:
        row["status"] = "broken"
        row["problem"] = f"installed but `import {module}` fails ({error})"
        # --no-deps: the package's own files only (a bare --force-reinstall reinstalls every dependency too, at the
        # newest versions allowed, which can change numpy and others under ComfyUI's other nodes)
        row["fix"] = pip("install", "--force-reinstall", "--no-deps",
                         req if module != "cv2" else bounds.get("opencv-contrib-python", req))
    return row


def torch_info() -> dict:
    """PyTorch's version, CUDA / cuDNN (or AMD's ROCm/HIP: ``torch.version.hip``; such a build reaches its GPUs through
    ``torch.cuda``), each visible GPU (name, memory) and Apple MPS."""
    try:
        import torch
    except Exception as exc:
        return {"installed": False, "problem": f"PyTorch does not import ({exc})",
                "fix": with_remarks(None, "install PyTorch for your GPU from https://pytorch.org (in ComfyUI: use "
                                    "ComfyUI's own environment)")}
    info = {"installed": True, "version": torch.__version__, "cuda": torch.version.cuda,
            "hip": getattr(torch.version, "hip", None), "cudnn": None, "gpus": [], "mps": False, "problem": None, "fix": None}
    try:
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # cuDNN missing from a CUDA build: reported as none
        info["cudnn"] = None
    try:
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                arch = getattr(props, "gcnArchName", None) if info["hip"] else None  # AMD: e.g. gfx942
                info["gpus"].append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                                     "capability": arch or f"{props.major}.{props.minor}"})
    except Exception as exc:  # a driver that does not match the build
        info["problem"] = f"CUDA is present but unusable ({str(exc).splitlines()[0]})"
    if (info["cuda"] or info["hip"]) and not info["gpus"] and not info["problem"]:
        info["problem"] = _hidden_by()
    mps = getattr(torch.backends, "mps", None)
    info["mps"] = bool(mps is not None and mps.is_available())
    return info


VISIBLE_DEVICES = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


def _hidden_by() -> str | None:
    """No GPU seen while a *_VISIBLE_DEVICES variable is set (a scheduler's or a script's empty, -1, or a wrong index):
    said, with the variable and its value, as the first thing to check; None when none is set."""
    for name in VISIBLE_DEVICES:
        value = os.environ.get(name)
        if value is not None:
            return (f"{name} is set to {value!r}, which hides every GPU unless it lists valid indices (e.g. 0 or 0,1); "
                    f"check it, or unset it")
    return None


def check_environment(imports: bool = True) -> dict:
    """Everything the environment section shows; ``problems`` counts what needs fixing (optional packages aside)."""
    bounds = declared_requirements()
    rows = [check_package(d, m, p, r, bounds, imports) for d, m, p, r in PACKAGES]
    info = torch_info()
    problems = sum(1 for r in rows if r["problem"] and r["required"]) + (1 if info.get("problem") and not info.get("installed") else 0)
    return {"python": {"version": sys.version.split()[0], "executable": sys.executable}, "torch": info,
            "packages": rows, "problems": problems}
