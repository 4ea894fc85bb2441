"""The only module of the pack that imports ComfyUI (``folder_paths``, ``comfy.*``, ``latent_preview``).

Every other module calls the small functions below. Outside ComfyUI (tests, scripts) stand-ins take over:
models under :data:`MODELS_DIR` (default ``./models``), inputs under :data:`INPUT_DIR`, outputs under
:data:`OUTPUT_DIR` (numbered like ComfyUI's ``get_save_image_path``; the naming rules in :mod:`.output_names`), the CPU device, a
progress bar that calls :data:`PROGRESS_HOOK` (ComfyUI's global hook does the same, and raises
``InterruptProcessingException`` there when the user presses Cancel: the stand-in when :data:`INTERRUPTED` is set), a local
:class:`InterruptProcessingException`, and a small model manager (:data:`MODEL_MANAGER`) that keeps the
same books as ``comfy.model_management`` (see :mod:`._model_manager`). Tests set or monkeypatch these
module attributes.

Nothing happens at import: the ``echomimic`` model folder is registered (as path strings, no folder is
created) the first time a node asks for it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..echomimic_lib.devices import auto_dtype as _lib_auto_dtype
from ..echomimic_lib.errors import EchoMimicError
from . import output_names as _names
from ._model_manager import (KEEP_WHOLE, MANAGED_NAMES, LoraWeightPatch, ManagedNetwork, StandInCallbacksMP,  # noqa: F401
                             StandInModelManager, StandInPatcher, make_castable)
from .output_names import MAX_PREFIX_PART, stand_in_save_path as _stand_in_save_path  # noqa: F401 (MAX_PREFIX_PART: tests)

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
try:
    import comfy.model_patcher as comfy_model_patcher
    import comfy.ops as comfy_ops
    from comfy.patcher_extension import CallbacksMP
except ImportError:
    comfy_model_patcher = comfy_ops = None
    CallbacksMP = StandInCallbacksMP
try:
    from comfy.weight_adapter import WeightAdapterBase
except ImportError:
    WeightAdapterBase = None

FOLDER = "echomimic"
MODELS_DIR: str | os.PathLike | None = None  # stand-in for folder_paths.models_dir
INPUT_DIR: str | os.PathLike | None = None  # stand-in for folder_paths.get_input_directory()
OUTPUT_DIR: str | os.PathLike | None = None  # stand-in for folder_paths.get_output_directory()
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


def output_dir() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return Path(OUTPUT_DIR) if OUTPUT_DIR else Path.cwd() / "output"


def prefix_problem(prefix) -> str | None:
    """Why a ``filename_prefix`` cannot be used in the output folder, or None (:func:`.output_names.prefix_problem`)."""
    return _names.prefix_problem(prefix, output_dir)


def save_path(prefix: str, ext: str, width: int = 0, height: int = 0) -> tuple[Path, dict]:
    """The next file for ``filename_prefix`` in the output folder, as core's Save nodes name theirs
    (``<prefix>_00001_.<ext>``; ComfyUI's ``folder_paths.get_save_image_path``), and the entry the frontend shows it
    by (``{"filename", "subfolder", "type": "output"}``; the sub-folder relative to the output folder, also for an
    absolute prefix inside it). A prefix outside the output folder raises, with the fix."""
    problem = prefix_problem(prefix)
    if problem:
        raise EchoMimicError(problem)
    root = output_dir()
    try:
        if folder_paths is not None:
            folder, name, counter, _, _ = folder_paths.get_save_image_path(prefix, str(root), width, height)
        else:
            folder, name, counter, _ = _stand_in_save_path(prefix, root, width, height)
    except OSError as exc:  # a file where a folder goes (made since the check), no permission, a read-only disk
        raise _names.save_failed(exc, prefix, root) from exc
    return _names.saved_entry(folder, name, counter, ext, root)


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


def offload_frees_memory() -> bool:
    """False when the compute device is the offload device (--cpu): unloading a network would free nothing."""
    return torch_device() != offload_device()


def low_vram() -> bool:
    """True under --lowvram / --novram: models are then never kept on the GPU between runs."""
    if mm is None:
        return False
    return mm.vram_state in (mm.VRAMState.LOW_VRAM, mm.VRAMState.NO_VRAM)


def free_memory(num_bytes: int, device: torch.device) -> None:
    """Ask ComfyUI to unload models until ``num_bytes`` fit on ``device``."""
    if mm is not None:
        if device.type != "cpu":
            mm.free_memory(num_bytes, device)
    else:
        MODEL_MANAGER.free_memory(num_bytes, device)


def soft_empty_cache() -> None:
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def auto_dtype(device: torch.device) -> torch.dtype:
    """The diffusion networks' precision for dtype ``auto``: ComfyUI's choice (bf16 where the device supports it, else
    fp16, else fp32; fp16 on Apple MPS, as ComfyUI runs SD1.5 and Wan 2.1 there); always fp32 on the CPU. Stand-in: the
    command line's rule (``echomimic_lib.devices.auto_dtype``). The SD VAE's: ``devices.resolve_vae_dtype``."""
    if device.type == "cpu":
        return torch.float32
    if mm is not None:
        if device.type != "mps" and mm.should_use_bf16(device):
            return torch.bfloat16
        return torch.float16 if mm.should_use_fp16(device) else torch.float32
    return _lib_auto_dtype(device)


# ------------------------------------------------------------------------------------------ progress
INTERRUPTED = False  # stand-in for ComfyUI's interrupt flag: a test "presses Cancel" by setting it


def check_interrupt() -> None:
    """Raise InterruptProcessingException if the user pressed Cancel (ComfyUI's
    ``throw_exception_if_processing_interrupted``; stand-in: :data:`INTERRUPTED`, cleared as it raises, as ComfyUI's)."""
    global INTERRUPTED
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
    elif INTERRUPTED:
        INTERRUPTED = False
        raise InterruptProcessingException()


class _StandInProgressBar:
    def __init__(self, total: int):
        self.total, self.current = total, 0

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if PROGRESS_HOOK is not None:
            PROGRESS_HOOK(self.current, self.total, preview)
        check_interrupt()  # (ComfyUI's global hook does the same)


def progress_bar(total: int):
    """comfy.utils.ProgressBar: each update goes to the UI and raises on Cancel."""
    if comfy_utils is not None:
        return comfy_utils.ProgressBar(total)
    return _StandInProgressBar(total)


def latent_previewer(device: torch.device, latent_format: str = "SD15"):
    """Callable (1, C, F, h, w) latents -> preview tuple (its middle frame) for ProgressBar, or None when previews
    are off. ``latent_format``: the class in ``comfy.latent_formats`` (``SD15`` for V1/V2's scaled latents, ``Wan21``
    for V3's normalised ones)."""
    if mm is None:
        return None
    try:
        import comfy.latent_formats
        import latent_preview

        previewer = latent_preview.get_previewer(device, getattr(comfy.latent_formats, latent_format)())
    except Exception as exc:  # previews are a nicety; never fail a run for them
        log.debug("latent previews unavailable: %s", exc)
        return None
    if previewer is None:
        return None
    return lambda latents: previewer.decode_latent_to_preview_image("JPEG", latents[:, :, latents.shape[2] // 2].float())


# ------------------------------------------------------------------------------------------ model manager
# Each network of a model set is handed to ComfyUI as a model it manages: a ModelPatcher around a thin,
# named container (ComfyUI logs "Requested to load EchoMimicDenoiser"; diffusers' read-only ``device``
# property stays untouched), loaded with load_models_gpu and an estimate of the stage's activations, so
# "Unload Models", /free, --lowvram, --novram, --reserve-vram and eviction treat it like a core model.
MODEL_MANAGER = StandInModelManager()  # stand-in for comfy.model_management outside ComfyUI


def managed_model(name: str, module: torch.nn.Module):
    """A ModelPatcher (stand-in outside ComfyUI) for one network; ``name`` is its role in the set."""
    container = MANAGED_NAMES[name](module)
    if comfy_model_patcher is None or mm is None:
        patcher = StandInPatcher(container, torch_device(), offload_device())
    else:
        make_castable(module, comfy_ops, KEEP_WHOLE)
        patcher = comfy_model_patcher.ModelPatcher(container, load_device=torch_device(), offload_device=offload_device())
    patcher.add_callback(CallbacksMP.ON_LOAD, _whole_to_device)
    return patcher


def _patch_inner_parameters(patcher, device_to) -> None:
    """ModelPatcher.load patches the parameters of leaf modules only; a patched parameter that sits next to
    sub-modules (a Wan block's ``modulation``, which a V3 LoRA's full delta may change) is patched here, once
    (its backup marks it: unpatch_model restores it with the others)."""
    for key in list(getattr(patcher, "patches", {})):
        owner = patcher.model.get_submodule(key.rpartition(".")[0])
        if key not in patcher.backup and any(p is not None for c in owner.children() for p in c.parameters()):
            patcher.patch_weight_to_device(key, device_to=device_to)


def _whole_to_device(patcher, device_to, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
    """After a load: patches on parameters of non-leaf modules (:func:`_patch_inner_parameters`); after a partial
    load: tensors ComfyUI cannot cast per layer (buffers, layers read outside their forward) must still be on the
    device."""
    _patch_inner_parameters(patcher, device_to)
    if device_to is None or full_load:
        return
    device = torch.device(device_to)
    for module in patcher.model.modules():
        for key, b in module._buffers.items():
            if b is not None and b.device != device:
                module._buffers[key] = b.to(device)
        if not hasattr(module, "comfy_cast_weights"):
            for p in module._parameters.values():
                if p is not None and p.device != device:
                    p.data = p.data.to(device)


def load_models(patchers: list, memory_required: int = 0) -> None:
    """comfy.model_management.load_models_gpu: load these networks, leaving ``memory_required`` free."""
    if not patchers:
        return
    if mm is not None and comfy_model_patcher is not None:
        mm.load_models_gpu(patchers, memory_required=int(memory_required))
    else:
        MODEL_MANAGER.load_models_gpu(patchers, memory_required=int(memory_required))


def unload_models(patchers: list) -> None:
    """Take these networks off the compute device (only them: ComfyUI has no call for one model)."""
    if mm is not None and comfy_model_patcher is not None:
        ids = {id(p) for p in patchers}
        for loaded in [m for m in mm.current_loaded_models if id(m.model) in ids]:
            loaded.model_unload()
            mm.current_loaded_models.remove(loaded)
    else:
        MODEL_MANAGER.unload(patchers)


def is_loaded(patcher) -> bool:
    models = mm.current_loaded_models if (mm is not None and comfy_model_patcher is not None) else MODEL_MANAGER.current_loaded_models
    return any(m.model is patcher for m in models)


def unload_all_models() -> None:
    """What ComfyUI's "Unload Models" (POST /free {"unload_models": true}) does."""
    if mm is not None:
        mm.unload_all_models()
    else:
        MODEL_MANAGER.unload_all_models()


# ------------------------------------------------------------------------------------------ LoRA patches
# Adapters are ModelPatcher patches (add_patches on a clone): ComfyUI puts them into the weights when it loads
# the network and restores the base weights when it unloads it. comfy.lora.calculate_weight only hands a patch
# object the weight if it is a WeightAdapterBase, hence the subclass inside ComfyUI.
_LoraPatchClass = LoraWeightPatch if WeightAdapterBase is None else type("EchoMimicLoraWeightPatch", (LoraWeightPatch, WeightAdapterBase), {})


def lora_weight_patch(adapter, layer: str, dtype: torch.dtype):
    """The patch value for ``ModelPatcher.add_patches`` of one adapted layer stored in ``dtype``."""
    return _LoraPatchClass(adapter, layer, dtype)


def _loaded_patchers() -> list:
    models = mm.current_loaded_models if (mm is not None and comfy_model_patcher is not None) else MODEL_MANAGER.current_loaded_models
    return [m.model for m in models]


def patch_for_streaming(patcher) -> None:
    """Low-VRAM mode streams the denoiser itself (ComfyUI never loads it): its patches go into the weights in RAM
    (other clones of the same network that ComfyUI holds are unloaded first, their patches taken out)."""
    unload_models([p for p in _loaded_patchers() if p is not patcher and patcher.is_clone(p)])
    if patcher.model.current_weight_patches_uuid not in (None, patcher.patches_uuid):
        patcher.unpatch_model(patcher.offload_device)
    if patcher.patches and patcher.model.current_weight_patches_uuid is None:
        for key in patcher.patches:
            patcher.patch_weight_to_device(key)
        patcher.model.current_weight_patches_uuid = patcher.patches_uuid


def unpatch_streamed(patcher) -> None:
    """After a streamed run: the base weights back (the next load, of any clone, starts from them)."""
    if patcher.patches and not is_loaded(patcher):
        patcher.unpatch_model(patcher.offload_device)
