"""Where each file of an EchoMimic V1/V2 model set is found in a models folder, and what ``echomimic download``
fetches for a missing one: plain file checks, no network, no weights read (the layout: :mod:`echomimic_lib.model_set`).

Kept apart from the loaders so that a look at a folder (``echomimic doctor``) needs neither diffusers nor a network.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import MissingWeightsError
from ..modes import WEIGHT_SETS, WeightSet
from .hub import HubFile

VAE_DIRS = ("sd-vae-ft-mse", "vae")
WHISPER_FILES = ("audio_processor/whisper_tiny.pt", "audio_processor/tiny.pt", "whisper_tiny.pt", "tiny.pt",
                 "whisper_tiny_encoder.pt", "whisper-tiny", "audio_processor/whisper-tiny")
UNET_CONFIGS = ("unet/config.json", "sd-image-variations-diffusers/unet/config.json")
CLI_FETCH_HINT = "Fetch them with: echomimic download"  # the command-line way; ComfyUI's message drops this line
TINY_MARKER = "echomimic-tiny.json"  # written into every tiny folder (echomimic_lib.tiny): random weights, never real ones
HF_SOURCES = {
    "vae": ("stabilityai/sd-vae-ft-mse", ["config.json", "diffusion_pytorch_model.safetensors"]),
    "whisper": ("BadToBest/EchoMimic", ["audio_processor/whisper_tiny.pt"]),
}


def _find(dirs: list[Path], names) -> Path | None:
    for d in dirs:
        for n in names:
            p = d / n
            if p.exists():
                return p
    return None


def _find_vae(dirs: list[Path]) -> Path | None:
    """The first diffusers VAE folder (one with its config.json) or VAE file under ``dirs``. A folder without a
    config is passed over: in ComfyUI ``models/vae`` holds single VAE files (it sits beside ``models/echomimic``)."""
    for d in dirs:
        for n in VAE_DIRS:
            p = d / n
            if (p / "config.json").is_file() or p.is_file():
                return p
    return None


def is_tiny_folder(root: str | Path) -> bool:
    return (Path(root) / TINY_MARKER).is_file()


def search_dirs(root: Path, ws: WeightSet) -> list[Path]:
    root = Path(root)
    return [root / ws.folder, root, root.parent]


def resolve_files(root: str | Path, weights: str, variant: str = "normal", need=("reference", "denoiser", "motion", "cond", "vae", "whisper")) -> dict:
    """Map each needed component to its file; raise :class:`MissingWeightsError` listing every missing
    file, the folders searched and where to download it."""
    root = Path(root)
    ws = WEIGHT_SETS[weights]
    dirs = search_dirs(root, ws)[:2]
    shared = search_dirs(root, ws)
    found, missing = {}, []
    for comp, stem in ws.files(variant).items():
        if comp not in need:
            continue
        p = _find(dirs, [stem + s for s in (".safetensors", ".pth", ".pt", ".bin")])
        if p is None:
            missing.append((comp, f"{stem}.pth", ws.hf_repo, f"{stem}.pth"))
        else:
            found[comp] = p
    if "vae" in need:
        p = _find_vae(shared)
        if p is None:
            missing.append(("vae", "sd-vae-ft-mse/", HF_SOURCES["vae"][0], "config.json + diffusion_pytorch_model.safetensors"))
        else:
            found["vae"] = p
    if "whisper" in need:
        p = _find(shared, WHISPER_FILES)
        if p is None:
            missing.append(("whisper", "audio_processor/whisper_tiny.pt", HF_SOURCES["whisper"][0], "audio_processor/whisper_tiny.pt"))
        else:
            found["whisper"] = p
    found["unet_config"] = _find(shared, UNET_CONFIGS)
    found["inference_config"] = _find(shared, ("inference_config.json",))
    if missing:
        where = ", ".join(str(d) for d in dirs)
        lines = [f"EchoMimic weights missing for '{weights}' ({variant}):"]
        for comp, name, repo, remote in missing:
            lines.append(f"  - {comp}: {name} (looked in {where if comp not in ('vae', 'whisper') else ', '.join(map(str, shared))}); "
                         f"get it from https://huggingface.co/{repo} ({remote})")
        lines.append(f"Expected layout: {root}/{ws.folder}/<weights>, {root}/sd-vae-ft-mse/, {root}/audio_processor/whisper_tiny.pt.")
        lines.append(f"{CLI_FETCH_HINT} --weights {weights} --variant {variant} --models {root}")
        err = MissingWeightsError("\n".join(lines), missing=[m[1] for m in missing])
        err.details = [{"component": c, "name": n, "repo": r, "remote": rem} for c, n, r, rem in missing]
        raise err
    return found


def _downloads(root: Path, weights: str, detail: dict) -> list[HubFile]:
    """The files of one missing component, each with its final place."""
    comp = detail["component"]
    if comp == "vae":
        repo, files = HF_SOURCES["vae"]
        return [HubFile(repo, f, root / "sd-vae-ft-mse" / f) for f in files]
    if comp == "whisper":
        repo, files = HF_SOURCES["whisper"]
        return [HubFile(repo, f, root / f) for f in files]
    ws = WEIGHT_SETS[weights]
    return [HubFile(ws.hf_repo, detail["name"], root / ws.folder / detail["name"])]
