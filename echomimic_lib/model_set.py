"""Find, fetch and load a complete EchoMimic model set: reference UNet, denoiser (+ motion modules),
condition encoder, VAE and the whisper-tiny audio encoder. Missing files are fetched from Hugging Face
(:func:`ensure_weights`, huggingface_hub, on demand only).

Folder layout (``root`` is e.g. ComfyUI's ``models/echomimic`` or the CLI cache)::

    root/v1/  reference_unet.pth denoising_unet.pth motion_module.pth face_locator.pth
              *_acc.pth  *_pose.pth  *_pose_acc.pth             (BadToBest/EchoMimic)
    root/v2/  reference_unet.pth denoising_unet.pth motion_module.pth pose_encoder.pth
              denoising_unet_acc.pth motion_module_acc.pth      (BadToBest/EchoMimicV2)
    root/sd-vae-ft-mse/                                         (stabilityai/sd-vae-ft-mse)
    root/audio_processor/whisper_tiny.pt                        (whisper tiny)
    root/unet/config.json, root/inference_config.json           (optional; SD1.5 defaults built in)
    root/v3-flash/                                              EchoMimicV3 flash-pro (:func:`ensure_v3`,
                                                                sources in models/wan/sources.py)

Each weight may be ``.safetensors`` or ``.pth``. Files are also found directly in ``root`` (a flat
folder), and the shared parts (VAE, whisper, configs) in ``root``'s parent.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import SD15_UNET_CONFIG, EchoConfig, additional_kwargs, config_from_documents, read_config_json
from .errors import MissingWeightsError, WeightsError
from .models.unet import ConditionEncoder, EchoUNet
from .modes import WEIGHT_SETS, WeightSet
from .io.hub import HubFile, fetch
from .io.model_files import (CLI_FETCH_HINT, HF_SOURCES, UNET_CONFIGS, VAE_DIRS, WHISPER_FILES,  # noqa: F401 (their home was here)
                             _downloads, _find, resolve_files, search_dirs)
from .io.weights import load_strict, read_state_dict
from .models.wan.sources import V3_FOLDER, missing_parts, resolved_files

log = logging.getLogger(__name__)


@dataclass
class EchoMimicModels:
    config: EchoConfig
    weight_set: WeightSet
    variant: str
    reference: EchoUNet
    denoiser: EchoUNet
    cond_encoder: ConditionEncoder
    vae: object | None = None
    audio_encoder: object | None = None
    files: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.denoiser.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def modules(self) -> dict:
        mods = {"reference": self.reference, "denoiser": self.denoiser, "cond_encoder": self.cond_encoder, "vae": self.vae}
        enc = getattr(self.audio_encoder, "model", self.audio_encoder)
        if isinstance(enc, torch.nn.Module):
            mods["audio_encoder"] = enc
        return {k: v for k, v in mods.items() if v is not None}

    def to(self, device=None, dtype=None) -> "EchoMimicModels":
        for name, mod in self.modules().items():
            # the audio encoder keeps its own dtype (its features are cast per window)
            mod.to(device=device, dtype=dtype if name != "audio_encoder" else None)
        return self

    def set_attention_backend(self, name: str | None) -> str:
        self.reference.set_attention_backend(name)
        return self.denoiser.set_attention_backend(name)


def read_config(files: dict) -> EchoConfig:
    """The networks' config from the set's optional ``unet/config.json`` and ``inference_config.json`` (SD1.5 defaults
    without them); a damaged or foreign one is a :class:`WeightsError` naming it and the fix."""
    unet, inference = files.get("unet_config"), files.get("inference_config")
    unet_cfg = read_config_json(unet, "UNet config.json") if unet else SD15_UNET_CONFIG
    add = additional_kwargs(read_config_json(inference, "inference config"), inference) if inference else None
    return config_from_documents(unet_cfg, add, " / ".join(str(p) for p in (unet, inference) if p) or "the SD1.5 config")


def build_denoiser(cfg: EchoConfig, motion: bool = True, device="meta") -> EchoUNet:
    with torch.device(device):
        return EchoUNet(cfg, "denoiser", motion=motion)


def _mmap(device) -> bool:
    """Memory-map .pth files only for a non-CPU target (see :mod:`.io.weights`)."""
    return torch.device(device).type != "cpu"


def load_reference(path, cfg: EchoConfig, device="cpu", dtype=torch.float32) -> EchoUNet:
    with torch.device("meta"):
        model = EchoUNet(cfg, "reference")
    return load_strict(model, read_state_dict(path, check_finite=False, mmap=_mmap(device)), f"{Path(path).name} (reference UNet)",
                       device, dtype).eval()


def load_denoiser(path, motion_path, cfg: EchoConfig, device="cpu", dtype=torch.float32) -> EchoUNet:
    mmap = _mmap(device)
    parts = [read_state_dict(path, check_finite=False, mmap=mmap)]
    label = Path(path).name
    if motion_path is not None:
        parts.append(read_state_dict(motion_path, check_finite=False, mmap=mmap))
        overlap = set(parts[0]) & set(parts[1])
        if overlap:
            raise WeightsError(f"{label} and {Path(motion_path).name} both define {len(overlap)} keys, e.g. {sorted(overlap)[0]}.")
        label = f"{label} + {Path(motion_path).name}"
    model = build_denoiser(cfg, motion=motion_path is not None)
    return load_strict(model, parts, f"{label} (denoising UNet)", device, dtype).eval()  # one file mapped at a time


def load_cond_encoder(path, cfg: EchoConfig, channels: int, device="cpu", dtype=torch.float32) -> ConditionEncoder:
    state = read_state_dict(path, check_finite=False)
    w = state.get("conv_in.weight")
    if w is not None and w.dim() == 4 and w.shape[1] != channels:
        kind = {1: "a 1-channel face locator (V1 audio-driven: face_locator.pth)",
                3: "a 3-channel encoder (V1 landmark face_locator_pose.pth or V2 pose_encoder.pth)"}.get(int(w.shape[1]), f"{w.shape[1]} input channels")
        need = {1: "the 1-channel V1 audio face locator", 3: "a 3-channel encoder (face_locator_pose.pth for V1 landmarks, pose_encoder.pth for V2)"}[channels]
        raise WeightsError(f"{Path(path).name} is {kind}, but this mode needs {need}. Check the version/mode and the file.")
    with torch.device("meta"):
        model = ConditionEncoder(channels, cfg.cond_out_channels, cfg.cond_block_channels)
    return load_strict(model, state, f"{Path(path).name} (condition encoder)", device, dtype).eval()


def load_vae(path, device="cpu", dtype=torch.float32):
    from diffusers import AutoencoderKL

    from importlib.util import find_spec

    path = Path(path)
    # without accelerate (a stock ComfyUI has none) diffusers would warn on every read that it falls back to this
    low_mem = {} if find_spec("accelerate") is not None else {"low_cpu_mem_usage": False}
    try:
        vae = (AutoencoderKL.from_pretrained(str(path), torch_dtype=dtype, **low_mem) if path.is_dir()
               else _vae_from_file(path, dtype, device))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot load the VAE ({exc}). Expected a diffusers folder (config.json + weights) such as stabilityai/sd-vae-ft-mse.") from exc
    return vae.to(device).eval()


def _vae_config(state: dict) -> dict:
    """The AutoencoderKL config of a single-file VAE, read from its tensor shapes (diffusers or LDM names)."""
    import re

    ldm = any(k.startswith("encoder.down.") for k in state)
    blocks, inner = (r"encoder\.down\.(\d+)\.block\.(\d+)\.conv2\.weight", "block") if ldm else (
        r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.conv2\.weight", "resnets")
    chans, layers = {}, {}
    for k, v in state.items():
        m = re.fullmatch(blocks, k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            chans[i] = int(v.shape[0])
            layers[i] = max(layers.get(i, 0), j + 1)
    if not chans or "encoder.conv_out.weight" not in state:
        raise WeightsError("not a VAE: no encoder down blocks / conv_out found. Choose an SD1.5 VAE such as sd-vae-ft-mse.")
    n = max(chans) + 1
    return dict(block_out_channels=[chans[i] for i in range(n)], down_block_types=["DownEncoderBlock2D"] * n,
                up_block_types=["UpDecoderBlock2D"] * n, latent_channels=int(state["encoder.conv_out.weight"].shape[0]) // 2,
                layers_per_block=layers[0], norm_num_groups=min(32, chans[0]))


def _vae_from_file(path: Path, dtype, device="cpu"):
    """A single-file SD VAE (diffusers or original LDM key names, e.g. ComfyUI's models/vae)."""
    from diffusers import AutoencoderKL

    state = read_state_dict(path, check_finite=False)
    try:
        config = _vae_config(state)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from exc
    if any(k.startswith("encoder.down.") for k in state):
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        state = convert_ldm_vae_checkpoint(state, config)
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    return load_strict(vae, state, f"{path.name} (VAE)", device, dtype)


def load_audio_encoder(path, device="cpu", dtype=torch.float32):
    from .audio.whisper import load_whisper_encoder as _load

    return _load(path, device=device, dtype=dtype)


def load_models(
    root: str | Path,
    weights: str = "v1_audio",
    variant: str = "normal",
    device="cpu",
    dtype: torch.dtype = torch.float32,
    attention: str | None = "sdpa",
    with_vae: bool = True,
    with_audio: bool = True,
    vae_dtype: torch.dtype | None = None,
) -> EchoMimicModels:
    """Load one complete model set from ``root`` (see the module docstring for the layout); the VAE in ``vae_dtype``
    (default ``dtype``)."""
    ws = WEIGHT_SETS[weights]
    need = ["reference", "denoiser", "motion", "cond"] + (["vae"] if with_vae else []) + (["whisper"] if with_audio else [])
    files = resolve_files(root, weights, variant, need)
    cfg = read_config(files)
    models = EchoMimicModels(
        config=cfg,
        weight_set=ws,
        variant=variant,
        reference=load_reference(files["reference"], cfg, device, dtype),
        denoiser=load_denoiser(files["denoiser"], files["motion"], cfg, device, dtype),
        cond_encoder=load_cond_encoder(files["cond"], cfg, ws.cond_channels, device, dtype),
        vae=load_vae(files["vae"], device, vae_dtype or dtype) if with_vae else None,
        audio_encoder=load_audio_encoder(files["whisper"], device) if with_audio else None,
        files=files,
    )
    models.set_attention_backend(attention)
    log.info("loaded EchoMimic %s/%s from %s", weights, variant, root)
    return models


# ---------------------------------------------------------------------------------------------- fetching
def ensure_weights(root: str | Path, weights: str, variant: str = "normal", need=None, download: bool = True,
                   force: bool = False) -> dict:
    """Resolve the files of a model set (``v1_audio``, ``v1_pose``, ``v2``, or ``v3-flash``: the EchoMimicV3
    flash-pro set in ``root/v3-flash``, see :func:`ensure_v3`); download the missing ones when ``download`` is true.

    A file that is already there is never replaced (a component found incomplete only gets its missing
    files), unless ``force``. On failure the error lists every missing file, where it was looked for, and
    where to get it."""
    root = Path(root)
    if weights == V3_FOLDER:
        return ensure_v3(root / V3_FOLDER, download=download, force=force)
    kw = {} if need is None else {"need": need}
    try:
        return resolve_files(root, weights, variant, **kw)
    except MissingWeightsError as err:
        if not download:
            raise
        first = err
    files = [f for detail in getattr(first, "details", []) for f in _downloads(root, weights, detail)]
    fetch(files, root, str(first), force=force)
    return resolve_files(root, weights, variant, **kw)


def resolve_v3(folder: str | Path, parts: tuple[str, ...] | None = None) -> dict:
    """The EchoMimicV3 flash-pro files in ``folder`` (``<models>/v3-flash``, layout in :mod:`.models.wan.sources`;
    ``parts``: only these need to be there, e.g. ``COMFY_PARTS``); raise :class:`MissingWeightsError` listing every
    missing file, where it was looked for and where to get it."""
    folder = Path(folder)
    try:
        missing = missing_parts(folder, parts=parts)
    except ValueError as exc:  # an unreadable weight index
        raise WeightsError(str(exc)) from exc
    if not missing:
        return resolved_files(folder)
    lines = [f"EchoMimicV3 flash-pro files missing under {folder}:"]
    for m in missing:
        src = m.source
        names = ", ".join(f"{src.folder}/{n}" for n in m.files)
        more = " and the weight shards its index lists" if m.shards_unknown else ""
        alt = f" (or a diffusers folder {folder / src.or_folder})" if src.or_folder else ""
        lines.append(f"  - {src.what}: {names}{more}{alt} (looked in {folder / src.folder}); get "
                     f"{'them' if len(m.files) > 1 or more else 'it'} from https://huggingface.co/{src.repo}"
                     f"{f' folder {src.remote}/' if src.remote else ''} ({src.size})")
    lines.append(f"{CLI_FETCH_HINT} --weights {V3_FOLDER} --models {folder.parent} (or animate without --offline).")
    err = MissingWeightsError("\n".join(lines), missing=[f"{m.source.folder}/{n}" for m in missing for n in m.files])
    err.details = [{"component": m.source.name, "files": m.files, "repo": m.source.repo, "remote": m.source.remote} for m in missing]
    raise err


def check_not_nested(folder: Path) -> None:
    """``--models`` given the EchoMimicV3 set itself (``.../v3-flash``) instead of the folder above it: the set was
    looked for in ``v3-flash/v3-flash/`` and, found missing there, downloaded again (about 20 GB). Refused, naming the
    folder to give."""
    from .models.wan.sources import FLASH

    if folder.exists() or not (folder.parent / FLASH).is_file():
        return
    fix = (f"pass --models {folder.parent.parent}" if folder.parent.name == folder.name else
           f"rename or link it as {folder.parent.parent / folder.name} (the command line reads the set from a "
           f"{folder.name}/ sub-folder) and pass --models {folder.parent.parent}")
    raise WeightsError(f"--models {folder.parent} is an EchoMimicV3 set itself (it holds {FLASH}); --models takes the "
                       f"folder above the set, where it is the {folder.name}/ sub-folder: {fix}. (Nothing was downloaded.)")


def ensure_v3(folder: str | Path, download: bool = True, force: bool = False, parts: tuple[str, ...] | None = None) -> dict:
    """:func:`resolve_v3`, downloading what is missing first when ``download`` (sharded weights take a second round:
    their index names the shards). With ``force`` every file of an incomplete part is fetched again, also those that
    are there; a complete part is never touched."""
    folder = Path(folder)
    check_not_nested(folder)
    done: set[Path] = set()
    for _ in range(3):
        try:
            return resolve_v3(folder, parts)
        except MissingWeightsError as err:
            if not download:
                raise
            files = [HubFile(m.source.repo, m.source.remote_path(n), folder / m.source.folder / n,
                             f"{m.source.what}, {m.source.size} in all" if n.endswith((".safetensors", ".pth", ".bin")) else m.source.what)
                     for m in missing_parts(folder, every=force, parts=parts) for n in m.files if folder / m.source.folder / n not in done]
            if not files:  # what was missing is there now (another batch worker fetched it meanwhile): look again
                return resolve_v3(folder, parts)
            done.update(fetch(files, folder, str(err), force=force))
    return resolve_v3(folder, parts)
