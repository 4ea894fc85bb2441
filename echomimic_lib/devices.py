"""Device and dtype choice for the command line: ``auto`` picks CUDA, then Apple MPS, then the CPU, and
the precision that suits it (the same rule as the ComfyUI loader's ``auto``): bf16 on a CUDA GPU that
supports it, else fp16; fp32 on the CPU and on MPS. Asking for a device that is not there is an
:class:`EchoMimicError` that says which devices exist.
"""
from __future__ import annotations

import contextlib
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


def resolve_device(name: str | None, flag: str = "--device") -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps`` -> an existing :class:`torch.device`."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    m = _DEVICE.match(name)
    if not m:
        raise EchoMimicError(f"unknown device '{name}' for {flag}; use auto, cpu, cuda, cuda:N (N = GPU number) or mps.")
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise EchoMimicError(f"{flag} {name}: no CUDA GPU is available ({_cuda_summary()}); use {flag} cpu (or auto).")
        count = torch.cuda.device_count()
        i = int(index) if index is not None else torch.cuda.current_device()
        if i >= count:
            raise EchoMimicError(f"{flag} {name}: this machine has {count} CUDA GPU(s) (cuda:0 .. cuda:{count - 1}); pick one of those.")
        return torch.device("cuda", i)
    if kind == "mps":
        if not _mps_available():
            raise EchoMimicError(f"{flag} mps: Apple's Metal (MPS) backend is not available here; use {flag} cpu (or auto).")
        return torch.device("mps")
    if index not in (None, "0"):
        raise EchoMimicError(f"{flag} {name}: the CPU has no index; use {flag} cpu.")
    return torch.device("cpu")


def auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the CUDA GPU supports it, else fp16; fp32 on the CPU and MPS."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


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
