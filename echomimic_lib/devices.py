"""Device and dtype choice for the command line: ``auto`` picks CUDA, then Apple MPS, then the CPU, and
the precision that suits it: bf16 on a CUDA GPU that supports it, else fp16; fp16 on Apple MPS (ComfyUI's rule there,
``should_use_fp16``: the UNets / the DiT in half precision), with the VAE as ComfyUI keeps it (:func:`resolve_vae_dtype`);
fp32 on the CPU. Asking for a device that is not there is an :class:`EchoMimicError` that says which devices exist.
"""
from __future__ import annotations

import contextlib
import platform
import re

import torch

from .errors import EchoMimicError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_DEVICE = re.compile(r"^(cpu|mps|cuda)(?::(\d+))?$")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _cuda_summary() -> str:
    hip = getattr(torch.version, "hip", None)
    if hip:  # AMD's ROCm build reaches its GPUs through torch.cuda
        return f"PyTorch {torch.__version__} (ROCm/HIP {hip}) finds no usable AMD GPU (driver, HIP_VISIBLE_DEVICES?)"
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is built without CUDA"
    return f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable CUDA GPU (driver, CUDA_VISIBLE_DEVICES?)"


def parse_device(name) -> tuple[str, int | None] | None:
    """``cpu`` / ``mps`` / ``cuda`` / ``cuda:N`` (any case, spaces around) -> (kind, N or None); None for anything else
    (``auto`` included). The one reading of a device name: :func:`resolve_device`, the batch's ``--device`` list."""
    m = _DEVICE.match(str(name).strip().lower())
    return None if m is None else (m.group(1), None if m.group(2) is None else int(m.group(2)))


def resolve_device(name: str | None, flag: str = "--device") -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps`` -> an existing :class:`torch.device`."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    parsed = parse_device(name)
    if parsed is None:
        raise EchoMimicError(f"unknown device '{name}' for {flag}; use auto, cpu, cuda, cuda:N (N = GPU number) or mps.")
    kind, index = parsed
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise EchoMimicError(f"{flag} {name}: no CUDA GPU is available ({_cuda_summary()}); use {flag} cpu (or auto).")
        count = torch.cuda.device_count()
        i = index if index is not None else torch.cuda.current_device()
        if i >= count:
            raise EchoMimicError(f"{flag} {name}: this machine has {count} CUDA GPU(s) (cuda:0 .. cuda:{count - 1}); pick one of those.")
        return torch.device("cuda", i)
    if kind == "mps":
        if not _mps_available():
            raise EchoMimicError(f"{flag} mps: Apple's Metal (MPS) backend is not available here; use {flag} cpu (or auto).")
        return torch.device("mps")
    if index not in (None, 0):
        raise EchoMimicError(f"{flag} {name}: the CPU has no index; use {flag} cpu.")
    return torch.device("cpu")


def auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the CUDA GPU supports it, else fp16; fp16 on Apple MPS (as ComfyUI runs a diffusion model there:
    comfy/model_management.py ``should_use_fp16`` is true for MPS, and ``unet_dtype`` tries fp16 first for SD1.5 and
    Wan 2.1); fp32 on the CPU. The VAE's precision: :func:`resolve_vae_dtype`."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _macos_version() -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in platform.mac_ver()[0].split("."))
    except ValueError:  # not a Mac ('')
        return ()


def resolve_vae_dtype(name: str | None, device: torch.device, dtype: torch.dtype, vae: str = "sd") -> torch.dtype:
    """The VAE's precision: the networks' ``dtype``, except for ``auto`` on Apple MPS, where it is ComfyUI's
    (``vae_dtype``: the first of the VAE's working dtypes the device takes; bf16 on MPS from macOS 14): bf16 from
    macOS 14, before it fp32 for the SD VAE of V1/V2 (``vae="sd"``: working dtypes bf16, fp32; never fp16) and fp16
    for the Wan 2.1 VAE of V3 (``vae="wan"``: bf16, fp16, fp32). An explicit ``--dtype`` is every network's."""
    if (name or "auto").strip().lower() != "auto" or device.type != "mps":
        return dtype
    if _macos_version() >= (14,):
        return torch.bfloat16
    return torch.float16 if vae == "wan" else torch.float32


def resolve_dtype(name: str | None, device: torch.device, flag: str = "--dtype") -> torch.dtype:
    name = (name or "auto").strip().lower()
    if name == "auto":
        return auto_dtype(device)
    if name not in DTYPES:
        raise EchoMimicError(f"unknown precision '{name}' for {flag}; use auto, fp32, fp16 or bf16.")
    return DTYPES[name]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """``torch.set_default_dtype(dtype)`` for the block (networks built inside get parameters in ``dtype``)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
