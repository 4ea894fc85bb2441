"""How much of a small LoRA survives being applied to half-precision / fp8 weights (issue 26).

For a rank-16 adapter whose delta is 0.1 / 0.5 / 2 % of a 320 x 320 weight (Frobenius norm), the regression slope of
the layer's output change obtained on the exact (float32) change: 1 keeps the adapter, 0 loses it. Two ways of
putting the delta into the weight's dtype, side by side on the same layers:

- ``nearest``: ``(W + delta).to(dtype)``, what a plain merge (or ComfyUI's own cast of a patched weight) does;
- ``pack``: :class:`echomimic_lib.lora.LoraPatch`, float32 merge rounded without bias (stochastic rounding); the
  pack's ComfyUI patches hand ComfyUI values rounded the same way.

    python bench/bench_lora_precision.py [--seeds 8] [--json out.json]

Prints one row per dtype and size: mean slope over the seeds (min - max).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from echomimic_lib.lora import LoraAdapter, LoraInfo, LoraPatch

SIZES = (0.001, 0.005, 0.02)


def _slope(obtained: torch.Tensor, exact: torch.Tensor) -> float:
    return float((obtained * exact).sum() / (exact * exact).sum())


def measure(dtype: torch.dtype, relative: float, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(320, 320, generator=g) * 0.05
    a, b = torch.randn(16, 320, generator=g), torch.randn(320, 16, generator=g)
    b = b * (relative * w.norm() / (b @ a).norm())
    adapter = LoraAdapter(Path("bench.safetensors"), LoraInfo(weights="v1_audio", rank=16, alpha=16.0), {"denoiser.l": (a, b)})
    lin = torch.nn.Linear(320, 320, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w.to(dtype).float())
    lin.to(dtype)
    base = lin.weight.detach().float().clone()
    exact = adapter.delta("denoiser.l")
    nearest = (base + exact).to(dtype).float()
    LoraPatch(adapter, {"denoiser.l": lin}).set_strength(1.0)
    pack = lin.weight.detach().float()
    x = torch.randn(512, 320, generator=torch.Generator().manual_seed(seed + 1000))
    want = x @ exact.T
    return {"nearest": _slope(x @ (nearest - base).T, want), "pack": _slope(x @ (pack - base).T, want)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--json", help="write the rows here as JSON")
    args = p.parse_args()
    dtypes = [torch.bfloat16, torch.float16] + ([torch.float8_e4m3fn] if hasattr(torch, "float8_e4m3fn") else [])
    rows = []
    print(f"{'dtype':<14}{'adapter':>9}  {'nearest (min-max)':>22}  {'pack (min-max)':>22}")
    for dtype in dtypes:
        for rel in SIZES:
            runs = [measure(dtype, rel, s) for s in range(args.seeds)]
            row = {"dtype": str(dtype).replace("torch.", ""), "adapter_percent": rel * 100}
            cells = []
            for kind in ("nearest", "pack"):
                v = [r[kind] for r in runs]
                row[kind] = {"mean": sum(v) / len(v), "min": min(v), "max": max(v)}
                cells.append(f"{row[kind]['mean']:.2f} ({min(v):.2f}-{max(v):.2f})")
            rows.append(row)
            print(f"{row['dtype']:<14}{rel * 100:>8.1f}%  {cells[0]:>22}  {cells[1]:>22}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": args.seeds, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
