"""What every GPU bench of bench/ times with (``gpu_suite.py``, ``gpu_v3.py``): the card's dense peak for the MFU
figures, the run's header (device, dtype, peak, common fields), a synchronised timer, a FLOP count and the SDPA
kernels allowed on CUDA (flash / memory-efficient / cuDNN: no silent math fallback)."""
from __future__ import annotations

import contextlib
import sys
import time

import torch

from bench_pipeline import _register_cpu_sdpa

# dense fp16/bf16 tensor-core peaks; the first name found in the device's name wins, so the PCIe / NVL variants
# (lower clocks and power) come before their family's SXM figure, and "A100" before "A10"
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H800 PCIe": 756.0, "H200 NVL": 835.0, "H200": 989.0, "H100": 989.0, "H800": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A800": 312.0,
               "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def run_header(args, default_dtype: str) -> tuple[torch.device, torch.dtype, float | None, dict]:
    """What every GPU bench starts with: the device, the dtype (``args.dtype``, else ``default_dtype`` on CUDA and
    fp32 elsewhere), the card's peak and the result's common fields; the CPU SDPA FLOP formula registered."""
    device = torch.device(args.device)
    name = args.dtype or (default_dtype if device.type == "cuda" else "fp32")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]
    _register_cpu_sdpa()
    peak = peak_tflops(device, args.peak_tflops)
    head = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "dtype": str(dtype),
            "peak_tflops": peak, "torch": torch.__version__, "tiny": args.tiny, "threads": torch.get_num_threads()}
    return device, dtype, peak, head


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernels(device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION])


def timed(fn, device, calls: int) -> list[float]:
    """Seconds of each of ``calls`` calls."""
    out = []
    for _ in range(calls):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def flops_of(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()
