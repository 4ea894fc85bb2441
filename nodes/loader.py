"""EchoMimic Model Loader (the reference-net loader): finds a model set in the ComfyUI model folders, loads
it on ComfyUI's device, and keeps a small cache of loaded sets; plus the device placement every other
node uses (:func:`activate` before work, :func:`release` after, also after a failure or Cancel).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import torch

from ..echomimic_lib.download import ensure_weights
from ..echomimic_lib.errors import EchoMimicError, MissingWeightsError
from ..echomimic_lib.model_set import load_models, load_vae, resolve_files
from . import comfy_bridge as C
from . import paths
from .payloads import MODEL, ModelHandle

log = logging.getLogger(__name__)

VERSIONS = {"V1 audio": "v1_audio", "V1 landmark": "v1_pose", "V2": "v2"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BASE_NEED = ("reference", "denoiser", "motion", "cond", "whisper")
CACHE_SIZE = 2
_CACHE: "OrderedDict[tuple, ModelHandle]" = OrderedDict()


# ------------------------------------------------------------------------------------------ files
def _pick_vae(root: Path, weights: str, variant: str, choice: str) -> Path | None:
    if choice != "auto":
        found = paths.find_named(paths.vae_roots(), choice, "VAE")
        if found is None:
            raise EchoMimicError(f"VAE '{choice}' not found in {', '.join(map(str, paths.vae_roots()))}; pick another or 'auto'.")
        return found
    try:
        return Path(resolve_files(root, weights, variant, need=("vae",))["vae"])
    except MissingWeightsError:
        return paths.default_vae_file()  # None: reported with the other missing files


def _resolve_in(root: Path, weights: str, variant: str, vae: str, download: bool) -> tuple[dict, Path]:
    vae_path = _pick_vae(root, weights, variant, vae)
    files = ensure_weights(root, weights, variant, need=BASE_NEED + (() if vae_path else ("vae",)), download=download)
    return files, vae_path or Path(files["vae"])


def resolve(weights: str, variant: str, folder: str = "auto", vae: str = "auto", download: bool = False) -> tuple[Path, dict, Path]:
    """(model root, component files, VAE path); a MissingWeightsError lists every missing file and where to get it."""
    roots = paths.echomimic_roots()
    if folder != "auto":
        found = paths.find_named(roots, folder, "weights folder", want_dir=True)
        if found is None:
            raise EchoMimicError(f"weights folder '{folder}' not found in {', '.join(map(str, roots))}; pick 'auto' or an existing folder.")
        roots = [found]
    first = None
    for root in roots:
        try:
            return (root, *_resolve_in(root, weights, variant, vae, download=False))
        except MissingWeightsError as exc:
            first = first or exc
    if download:
        try:
            return (roots[0], *_resolve_in(roots[0], weights, variant, vae, download=True))
        except MissingWeightsError as exc:
            first = exc
    others = f"\nAlso looked in: {', '.join(map(str, roots[1:]))}." if len(roots) > 1 else ""
    raise MissingWeightsError(
        f"{first}{others}\nA single-file SD VAE in {', '.join(map(str, paths.vae_roots()))} (name containing 'ft-mse') "
        "also works, or pick one in the loader's 'vae' input.\nIn ComfyUI: switch on 'auto_download' in the EchoMimic "
        "Model Loader to fetch the files from Hugging Face, or copy them into the layout above (see docs/comfyui.md).",
        first.missing)


# ------------------------------------------------------------------------------------------ devices
def _nbytes(models) -> int:
    return sum(p.numel() * p.element_size() for m in models.modules().values() for p in m.parameters())


def move(models, device: torch.device) -> None:
    """Move every network of a set to ``device`` (dtypes untouched)."""
    for module in models.modules().values():
        module.to(device)


def activate(handle: ModelHandle) -> torch.device:
    """Move the model set to ComfyUI's compute device (making room among ComfyUI's own models)."""
    device = C.torch_device()
    if handle.models.device != device:
        C.free_memory(_nbytes(handle.models), device)
        move(handle.models, device)
    return device


def release(handle: ModelHandle) -> None:
    """Back to the offload device unless keep-loaded (never kept under --lowvram), then free the cache."""
    if not handle.keep_loaded or C.low_vram():
        move(handle.models, C.offload_device())
    C.soft_empty_cache()


# ------------------------------------------------------------------------------------------ loading
def load(version: str, variant: str, dtype: str = "auto", attention: str = "sdpa", keep_loaded: bool = False,
         weights_folder: str = "auto", vae: str = "auto", auto_download: bool = False) -> ModelHandle:
    if version not in VERSIONS:
        raise EchoMimicError(f"unknown version '{version}'; choose one of {', '.join(VERSIONS)}.")
    if dtype != "auto" and dtype not in DTYPES:
        raise EchoMimicError(f"unknown dtype '{dtype}'; choose auto, fp32, fp16 or bf16.")
    weights = VERSIONS[version]
    root, files, vae_path = resolve(weights, variant, weights_folder, vae, auto_download)
    device = C.torch_device()
    torch_dtype = C.auto_dtype(device) if dtype == "auto" else DTYPES[dtype]
    key = (str(root), weights, variant, str(torch_dtype), str(device), attention, str(vae_path))
    handle = _CACHE.pop(key, None)
    if handle is None:
        C.free_memory(sum(Path(p).stat().st_size for p in files.values() if p and Path(p).is_file()), device)
        models = load_models(root, weights, variant, device=device, dtype=torch_dtype, attention=attention, with_vae=False)
        models.vae = load_vae(vae_path, device, torch_dtype)
        handle = ModelHandle(models, weights, variant, keep_loaded, key)
        log.info("EchoMimic %s/%s loaded from %s on %s (%s)", weights, variant, root, device, torch_dtype)
    handle.keep_loaded = keep_loaded
    if keep_loaded:
        _CACHE[key] = handle
        while len(_CACHE) > CACHE_SIZE:
            _, old = _CACHE.popitem(last=False)
            move(old.models, C.offload_device())
    return handle


class EchoMimicModelLoader:
    CATEGORY = "EchoMimic"
    FUNCTION = "execute"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("One EchoMimic model set: reference UNet, denoiser + motion module, condition encoder, VAE, whisper-tiny.",)
    DESCRIPTION = "Loads an EchoMimic model set (the reference net loader) from models/echomimic/."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "version": (list(VERSIONS), {"default": "V1 audio", "tooltip": "V1 audio: talking head driven by audio. V1 landmark: "
                        "face landmarks (+ audio). V2: half-body driven by audio + hand poses."}),
            "variant": (["normal", "acc"], {"default": "normal", "tooltip": "normal: 30 steps, cfg 2.5. acc: the distilled "
                        "weights, 6 steps, cfg 1 (several times faster)."}),
            "dtype": (["auto", "fp32", "fp16", "bf16"], {"default": "auto", "tooltip": "Weight precision. auto: bf16 where the "
                      "GPU supports it, else fp16; fp32 on CPU and Apple MPS. Try fp32 if the video comes out black."}),
            "attention": (["sdpa", "xformers"], {"default": "sdpa", "tooltip": "Attention backend. xformers falls back to "
                          "PyTorch SDPA (with a log line) when it is not installed."}),
            "keep_loaded": ("BOOLEAN", {"default": False, "tooltip": "Keep the models on the GPU between runs (faster "
                            "re-runs, uses VRAM). Off: moved back to the offload device after sampling."}),
            "weights_folder": (["auto"] + paths.weight_folders(), {"default": "auto", "tooltip": "auto: models/echomimic/v1 "
                               "or v2 by version. Or a sub-folder of models/echomimic holding the weights (e.g. a fine-tune)."}),
            "vae": (["auto"] + paths.vae_files(), {"default": "auto", "tooltip": "auto: models/echomimic/sd-vae-ft-mse/, else an "
                    "'ft-mse' file in models/vae. Or pick an SD1.5 VAE from models/vae."}),
            "auto_download": ("BOOLEAN", {"default": False, "tooltip": "Download missing weights from Hugging Face "
                              "(BadToBest/EchoMimic, BadToBest/EchoMimicV2, stabilityai/sd-vae-ft-mse) into models/echomimic."}),
        }}

    def execute(self, version, variant, dtype, attention, keep_loaded, weights_folder, vae, auto_download):
        return (load(version, variant, dtype, attention, keep_loaded, weights_folder, vae, auto_download),)
