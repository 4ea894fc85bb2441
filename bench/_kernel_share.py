"""Where one denoiser call's device time goes (issue 23): ``torch.profiler`` over a few calls, kernels grouped by kind.

The figure that says what CUDA graphs and fusion can still win is ``busy_s_per_call`` (the time the GPU runs kernels,
overlaps counted once) beside the call's wall time: the difference is the host launching kernels or the GPU
waiting. ``share`` splits the kernel time by kind (GEMM, convolution, attention, normalisation, fused Triton,
copies, other pointwise), ``top`` names the heaviest kernels. On the CPU the same function groups the operators'
self CPU time, which checks the script, not a GPU figure.
"""
from __future__ import annotations

import re
import time

import torch

# First match wins (case-insensitive), on CUDA kernel names or on aten operator names (CPU). cuDNN's convolution
# kernels are "implicit GEMMs" (``..._fprop_implicit_gemm_...``), so convolution is matched before GEMM.
KINDS = [
    ("attention", r"flash|fmha|attention|sdpa|attn"),
    ("conv", r"conv|fprop|dgrad|wgrad|implicit_gemm|winograd"),
    ("gemm", r"gemm|cutlass|nvjet|xmma|cublas|aten::(mm|addmm|bmm|matmul|linear|baddbmm)$"),
    ("norm", r"norm|moments|welford"),
    ("fused (triton)", r"^triton_"),
    ("copy", r"copy|memcpy|memset|transpose|permute|aten::(cat|contiguous|clone)$|catarraybatched"),
]


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, name, re.IGNORECASE)), "pointwise / other")


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals: kernels on two streams at once count once."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernel_share(fn, device: torch.device, calls: int = 2, top: int = 8, warm: bool = True) -> dict:
    """Profile ``calls`` calls of ``fn`` (after one unprofiled call; ``warm=False``: none, for a caller that has just
    run ``fn`` itself): wall and busy seconds per call, kernels per call, the share of each kind, the ``top``
    heaviest kernels (ms per call)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    if warm:
        fn()
    _sync(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        wall = time.perf_counter() - t
    per_name: dict[str, float] = {}
    if cuda:  # kernel (and memcpy / memset) records on the device's timeline
        kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        for e in kernels:
            per_name[e.name] = per_name.get(e.name, 0.0) + e.time_range.elapsed_us()
        busy_us, count = _union_us([(e.time_range.start, e.time_range.end) for e in kernels]), len(kernels)
    else:  # operators' self CPU time (the nested calls' time is their own)
        for e in prof.key_averages():
            if e.self_cpu_time_total > 0:
                per_name[e.key] = e.self_cpu_time_total
        busy_us, count = sum(per_name.values()), sum(e.count for e in prof.key_averages())
    total = sum(per_name.values()) or 1.0
    share: dict[str, float] = {}
    for name, us in per_name.items():
        share[kind_of(name)] = share.get(kind_of(name), 0.0) + us / total
    heaviest = sorted(per_name.items(), key=lambda kv: -kv[1])[:top]
    return {"calls": calls, "wall_s_per_call": round(wall / calls, 5), "busy_s_per_call": round(busy_us / 1e6 / calls, 5),
            "busy_fraction": round(busy_us / 1e6 / wall, 3) if wall > 0 else None,
            "records_per_call": round(count / calls), "timeline": "kernels" if cuda else "cpu operators (a check)",
            "share": {k: round(v, 3) for k, v in sorted(share.items(), key=lambda kv: -kv[1])},
            "top": [[name[:80], round(us / 1e3 / calls, 3)] for name, us in heaviest]}
