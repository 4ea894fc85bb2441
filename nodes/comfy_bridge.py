"""The only module of the pack that imports ComfyUI (``folder_paths``, ``comfy.*``, ``latent_preview``).

Every other module calls the small functions below. Outside ComfyUI (tests, scripts) stand-ins take over:
models under :data:`MODELS_DIR` (default ``./models``), inputs under :data:`INPUT_DIR`, the CPU device, a
progress bar that calls :data:`PROGRESS_HOOK` (ComfyUI's global hook does the same, and raises
``InterruptProcessingException`` there when the user presses Cancel), and a local
:class:`InterruptProcessingException`. Tests set or monkeypatch these module attributes.

Nothing happens at import: the ``echomimic`` model folder is registered (as path strings, no folder is
created) the first time a node asks for it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

try:  # ComfyUI puts its root on sys.path; outside it these imports fail and the stand-ins are used
    import folder_paths
except ImportError:
    folder_paths = None
try:
    import comfy.model_management as mm
    import comfy.utils as comfy_utils
except ImportError:
    mm = comfy_utils = None

FOLDER = "echomimic"
MODELS_DIR: str | os.PathLike | None = None  # stand-in for folder_paths.models_dir
INPUT_DIR: str | os.PathLike | None = None  # stand-in for folder_paths.get_input_directory()
PROGRESS_HOOK = None  # stand-in for ComfyUI's progress hook: callable(value, total, preview)
DEVICE: str | None = None  # stand-in torch device (default cpu)


class _StandInInterrupt(Exception):
    """Raised by the stand-in progress hook in tests, like ComfyUI's InterruptProcessingException."""


InterruptProcessingException = mm.InterruptProcessingException if mm is not None else _StandInInterrupt
_registered = False


def in_comfyui() -> bool:
    return folder_paths is not None and mm is not None


# ------------------------------------------------------------------------------------------ folders
def models_dir() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.models_dir)
    return Path(MODELS_DIR) if MODELS_DIR else Path.cwd() / "models"


def input_dir() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_input_directory())
    return Path(INPUT_DIR) if INPUT_DIR else Path.cwd() / "input"


def _register() -> None:
    """Add ``models/echomimic`` to folder_paths (kept after any extra_model_paths.yaml entries)."""
    global _registered
    if folder_paths is not None and not _registered:
        folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))
        _registered = True


def folder_roots(name: str) -> list[Path]:
    """Folders registered under ``name`` ('echomimic', 'vae'), in ComfyUI's search order."""
    if folder_paths is None:
        return [models_dir() / name]
    if name == FOLDER:
        _register()
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(name)]
    except KeyError:
        return [models_dir() / name]


def filename_list(name: str) -> list[str]:
    """Files of a model folder as ComfyUI lists them (relative names; cached by ComfyUI)."""
    if folder_paths is not None:
        return list(folder_paths.get_filename_list(name))
    names = set()
    for root in folder_roots(name):
        if root.is_dir():
            names.update(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(names)


# ------------------------------------------------------------------------------------------ devices
def torch_device() -> torch.device:
    """ComfyUI's compute device (honours --cpu, --directml, MPS, --cuda-device); stand-in: CPU."""
    if mm is not None:
        return torch.device(mm.get_torch_device())
    return torch.device(DEVICE or "cpu")


def offload_device() -> torch.device:
    if mm is not None:
        return torch.device(mm.unet_offload_device())
    return torch.device("cpu")


def low_vram() -> bool:
    """True under --lowvram / --novram: models are then never kept on the GPU between runs."""
    if mm is None:
        return False
    return mm.vram_state in (mm.VRAMState.LOW_VRAM, mm.VRAMState.NO_VRAM)


def free_memory(num_bytes: int, device: torch.device) -> None:
    """Ask ComfyUI to unload its own models until ``num_bytes`` fit on ``device``."""
    if mm is not None and device.type != "cpu":
        mm.free_memory(num_bytes, device)


def soft_empty_cache() -> None:
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device supports it, else fp16, else fp32; always fp32 on CPU and MPS."""
    if device.type in ("cpu", "mps"):
        return torch.float32
    if mm is not None:
        if mm.should_use_bf16(device):
            return torch.bfloat16
        return torch.float16 if mm.should_use_fp16(device) else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# ------------------------------------------------------------------------------------------ progress
def check_interrupt() -> None:
    """Raise InterruptProcessingException if the user pressed Cancel (no-op outside ComfyUI)."""
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


class _StandInProgressBar:
    def __init__(self, total: int):
        self.total, self.current = total, 0

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if PROGRESS_HOOK is not None:
            PROGRESS_HOOK(self.current, self.total, preview)


def progress_bar(total: int):
    """comfy.utils.ProgressBar: each update goes to the UI and raises on Cancel."""
    if comfy_utils is not None:
        return comfy_utils.ProgressBar(total)
    return _StandInProgressBar(total)


def latent_previewer(device: torch.device):
    """Callable (1, 4, F, h, w) scaled latents -> preview tuple for ProgressBar, or None when previews are off."""
    if mm is None:
        return None
    try:
        import comfy.latent_formats
        import latent_preview

        previewer = latent_preview.get_previewer(device, comfy.latent_formats.SD15())
    except Exception as exc:  # previews are a nicety; never fail a run for them
        log.debug("latent previews unavailable: %s", exc)
        return None
    if previewer is None:
        return None
    return lambda latents: previewer.decode_latent_to_preview_image("JPEG", latents[:, :, latents.shape[2] // 2].float())
