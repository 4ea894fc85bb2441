"""EchoMimic Model Loader: finds a model set in the ComfyUI model folders, reads it into RAM (the offload
device) and hands each network to ComfyUI's model manager; plus the placement every other node uses
(:func:`placement`: per stage, only the networks the stage needs are loaded on ComfyUI's device, through
``load_models_gpu``, so "Unload Models", /free, --lowvram/--novram and eviction work on them).

No private cache: a loaded set lives as long as ComfyUI caches the loader's output (like a core
checkpoint loader), and keep_loaded only decides whether the networks are unloaded after their stage.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..echomimic_lib.devices import resolve_vae_dtype
from ..echomimic_lib.errors import EchoMimicError, MissingWeightsError
from ..echomimic_lib.lora import load_checked
from ..echomimic_lib.memory import Placement, check_fp8, to_fp8
from ..echomimic_lib.model_set import CLI_FETCH_HINT, ensure_weights, load_models, load_vae, resolve_files
from ..echomimic_lib.speed import OptionNames, check_speed_options, compile_denoiser
from . import comfy_bridge as C
from . import names, paths
from .base import Node, switch
from .lora import add_lora, node_strength
from .payloads import MODEL, ModelHandle

log = logging.getLogger(__name__)

VERSIONS = {"V1 audio": "v1_audio", "V1 landmark": "v1_pose", "V2": "v2"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BASE_NEED = ("reference", "denoiser", "motion", "cond", "whisper")
KEY_FIELDS = ("root", "weights", "variant", "dtype", "device", "attention", "vae", "low_vram", "fp8", "compile")  # a handle's key
NODE_NAMES = OptionNames("'compile' (EchoMimic Model Loader)", "'cuda_graphs' (EchoMimic Sampler)",
                         "'low_vram' (EchoMimic Model Loader)", "start ComfyUI on an NVIDIA GPU (without --cpu)")


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
    listing = "\n".join(line for line in str(first).splitlines() if not line.startswith(CLI_FETCH_HINT))  # no CLI steps here
    raise MissingWeightsError(
        f"{listing}{others}\nA single-file SD VAE in {', '.join(map(str, paths.vae_roots()))} (name containing 'ft-mse') "
        "also works, or pick one in the loader's 'vae' input.\nIn ComfyUI: switch on 'auto_download' in the EchoMimic "
        "Model Loader to fetch the files from Hugging Face, or copy them into the layout above (see docs/comfyui.md).",
        first.missing)


# ------------------------------------------------------------------------------------------ placement
class ComfyBackend:
    """:class:`~echomimic_lib.memory.Placement` backend over ComfyUI's model manager (the bridge's stand-in
    outside ComfyUI): one managed model (ModelPatcher) per network."""

    def __init__(self, handle: ModelHandle):
        self.patchers = handle.patchers
        self.streamed = handle.patchers["denoiser"] if handle.low_vram and "denoiser" in handle.patchers else None

    def is_loaded(self, name: str) -> bool:
        return C.is_loaded(self.patchers[name])

    def load(self, names, extra_bytes: int = 0) -> None:
        C.load_models([self.patchers[n] for n in names], extra_bytes)

    def unload(self, names) -> None:
        C.unload_models([self.patchers[n] for n in names])

    def reserve(self, nbytes: int) -> None:
        C.free_memory(int(nbytes), C.torch_device())


def placement(handle: ModelHandle, settings=None) -> Placement:
    """Stage placement for one node run. keep_loaded never holds VRAM under --lowvram / --novram; with --cpu
    the networks stay registered (their offload device is the compute device: unloading frees nothing)."""
    keep = (handle.keep_loaded and not C.low_vram()) or not C.offload_frees_memory()
    backend = ComfyBackend(handle)
    if backend.streamed is not None:  # ComfyUI never loads the streamed denoiser: its LoRA patches go in here
        C.patch_for_streaming(backend.streamed)
    return Placement(handle.models, C.torch_device(), backend, keep_loaded=keep, stream_denoiser=handle.low_vram,
                     settings=settings, offload_device=C.offload_device())


def finish(place: Placement) -> None:
    """End of a node run, also after a failure or Cancel: unload per keep_loaded, then free the cache."""
    try:
        place.close()
    finally:
        streamed = getattr(place.backend, "streamed", None)
        try:
            if streamed is not None:
                C.unpatch_streamed(streamed)
        finally:
            C.soft_empty_cache()


# ------------------------------------------------------------------------------------------ loading
def load(version: str, variant: str, dtype: str = "auto", attention: str = "sdpa", keep_loaded: bool = False,
         weights_folder: str = "auto", vae: str = "auto", auto_download: bool = False, low_vram: bool = False,
         fp8: bool = False, lora: str = "none", lora_strength: float = 1.0, compile: bool = False) -> ModelHandle:
    if version not in VERSIONS:
        raise EchoMimicError(f"unknown version '{version}'; choose one of {', '.join(VERSIONS)}.")
    if dtype != "auto" and dtype not in DTYPES:
        raise EchoMimicError(f"unknown dtype '{dtype}'; choose auto, fp32, fp16 or bf16.")
    weights = VERSIONS[version]
    adapter = None
    if lora not in (None, "", "none"):  # checked (file, version, strength) before any weight is read
        node_strength(lora_strength, "lora_strength")
        adapter = load_checked(paths.resolve_lora(lora), weights, variant, lora_strength)
    device, host = C.torch_device(), C.offload_device()
    check_speed_options(device, compile=bool(compile), low_vram=bool(low_vram), names=NODE_NAMES)
    if fp8:
        check_fp8(device)
    root, files, vae_path = resolve(weights, variant, weights_folder, vae, auto_download)
    torch_dtype = C.auto_dtype(device) if dtype == "auto" else DTYPES[dtype]
    models = load_models(root, weights, variant, device=host, dtype=torch_dtype, attention=attention, with_vae=False)
    models.vae = load_vae(vae_path, host, resolve_vae_dtype(dtype, device, torch_dtype, "sd"))  # fp32/bf16 on MPS
    if fp8:
        to_fp8(models.reference), to_fp8(models.denoiser)
    for module in models.modules().values():  # inference only; ComfyUI's LoRA patches are requires_grad=False too
        module.requires_grad_(False)  # (a compiled network's guards then hold across patched and unpatched weights)
    patchers = {name: C.managed_model(name, module) for name, module in models.modules().items()}
    if compile:  # once, on the networks ComfyUI will load (its LoRA patches change weights, not the traced code)
        compile_denoiser(models)
    key = (str(root), weights, variant, str(torch_dtype), str(device), attention, str(vae_path), bool(low_vram), bool(fp8),
           bool(compile))  # (KEY_FIELDS names them; an EchoMimic LoRA appends ("lora", path, strength))
    log.info("EchoMimic %s/%s read from %s (%s%s%s%s); ComfyUI loads it on %s stage by stage", weights, variant, root,
             torch_dtype, ", fp8 UNets" if fp8 else "", ", low-VRAM streaming" if low_vram else "",
             ", compiled denoiser" if compile else "", device)
    handle = ModelHandle(models, weights, variant, keep_loaded, key, patchers=patchers, low_vram=bool(low_vram), fp8=bool(fp8),
                         compiled=bool(compile))
    # The LoRA widget goes the EchoMimic LoRA node's way: ComfyUI patches (strength 0: the plain set), so the
    # weights read here stay the base ones and the adapter is in the handle's `key`.
    return add_lora(handle, adapter, lora_strength) if adapter is not None else handle


class EchoMimicModelLoader(Node):
    OUTPUTS = (
        (MODEL, "model", "The whole EchoMimic model set: reference UNet, denoiser + motion module, condition encoder, VAE, "
                         "whisper-tiny (each managed by ComfyUI; loaded on the GPU only for the stage that needs it)."),
    )
    DESCRIPTION = ("Loads the whole EchoMimic model set from models/echomimic/: reference UNet, denoiser + motion module, "
                   "condition encoder (face locator / pose encoder), VAE and whisper-tiny. The networks are handed to "
                   "ComfyUI's model manager, so 'Unload Models', --lowvram and --novram work on them.")

    @classmethod
    def inputs(cls):
        return {
            "version": (list(VERSIONS), {"default": "V1 audio", "tooltip": "V1 audio: talking head driven by audio. V1 landmark: "
                        "face landmarks (+ audio). V2: half-body driven by audio + hand poses."}),
            "variant": (["normal", "acc"], {"default": "normal", "tooltip": "normal: 30 steps, cfg 2.5. acc: the distilled "
                        "weights, 6 steps, cfg 1 (several times faster)."}),
            "dtype": (["auto", "fp32", "fp16", "bf16"], {"default": "auto", "tooltip": "Weight precision. auto: bf16 where the "
                      "GPU supports it, else fp16; fp16 on Apple MPS (its VAE fp32, bf16 from macOS 14), as ComfyUI; fp32 on CPU. "
                      "Try fp32 if the video comes out black."}),
            "attention": (["sdpa", "xformers"], {"default": "sdpa", "tooltip": "Attention backend. xformers falls back to "
                          "PyTorch SDPA (with a log line) when it is not installed."}),
            "keep_loaded": switch("Keep the networks on the GPU after their stage and between runs: re-runs skip the "
                                  "transfers, but the whole set stays in VRAM (about 4.4 GB in fp16/bf16, 8.9 GB in "
                                  "fp32, 2.3 GB with fp8) and the peak of a run grows by the networks that would have "
                                  "left (V1 512 px fp16: 4.5 -> 6.3 GB). ComfyUI still evicts them when another model "
                                  "needs the room, and 'Unload Models' frees them. Off: each network leaves the GPU as "
                                  "soon as its stage is done. Ignored under --lowvram / --novram."),
            "weights_folder": (["auto"] + paths.weight_folders(), {"default": "auto", "tooltip": "auto: models/echomimic/v1 "
                               "or v2 by version. Or a sub-folder of models/echomimic holding the weights (e.g. a fine-tune)."}),
            "vae": (["auto"] + paths.vae_files(), {"default": "auto", "tooltip": "auto: models/echomimic/sd-vae-ft-mse/, else an "
                    "'ft-mse' file in models/vae. Or pick an SD1.5 VAE from models/vae."}),
            "auto_download": switch("Download missing weights from Hugging Face (BadToBest/EchoMimic, "
                                    "BadToBest/EchoMimicV2, stabilityai/sd-vae-ft-mse) into models/echomimic."),
        }

    @classmethod
    def optional_inputs(cls):  # widgets added after the first release: optional, so saved API prompts without them still run
        return {
            "low_vram": switch("Low-VRAM mode for small cards: the denoiser stays in RAM and is streamed to the GPU block "
                               "by block while it runs (V2 768 px fp16 peak about 4.5 GB instead of 6.9 GB; same "
                               "output). Costs the transfer of the denoiser's weights (2.6 GB fp16) per denoiser call "
                               "over PCIe."),
            "fp8": switch("Store the UNet weights in fp8 (e4m3fn; upcast layer by layer): about 2.1 GB less RAM/VRAM for "
                          "the set (fp16), a small change of the output. Needs PyTorch >= 2.1; not on Apple MPS."),
            "lora": (["none"] + paths.lora_files(), {"default": "none", "tooltip": "A LoRA adapter from models/echomimic/loras/ "
                     "(a .safetensors written by `echomimic-train export` of a LoRA run, e.g. fine-tuned on one person). It must "
                     "have been trained for this version; applied through ComfyUI's patches like the EchoMimic LoRA node (chain that node for "
                     "more adapters)."}),
            "lora_strength": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.05, "tooltip": "How much of the LoRA "
                              "is applied: 1 = as trained, 0 = the base model exactly."}),
            "compile": switch("Speed (GPU): regional torch.compile of the denoiser. The first run at each size and "
                              "batch shape compiles its blocks first (about a minute on a GPU, several minutes on a "
                              "CPU); later runs are about 20-25 % faster per denoiser call (H200). The output differs "
                              "only by float rounding. Not with low_vram. Applied once, when the set is loaded."),
        }

    @classmethod
    def IS_CHANGED(cls, lora=None, **_):
        """The LoRA file's path, size and time (as the EchoMimic LoRA node's): exported again under the same name, the
        set is made again (ComfyUI cached the node's output while its inputs had not changed)."""
        return paths.file_stamp(paths.lora_roots(), lora) if lora not in (None, "none") else "no lora"

    @classmethod
    def VALIDATE_INPUTS(cls, weights_folder=None, vae=None, lora=None):
        """The picked names, when queued: either path separator (a workflow from Windows on Linux, or the reverse); any
        other name is refused with the close match named (:mod:`.names`)."""
        return names.check(cls, {"weights_folder": "models/echomimic", "vae": "models/vae",
                                 "lora": "models/echomimic/loras"}, weights_folder=weights_folder, vae=vae, lora=lora)

    def execute(self, version, variant, dtype, attention, keep_loaded, weights_folder, vae, auto_download, low_vram=False, fp8=False,
                lora="none", lora_strength=1.0, compile=False):
        return (load(version, variant, dtype, attention, keep_loaded, weights_folder, vae, auto_download, low_vram, fp8, lora,
                     lora_strength, compile),)
