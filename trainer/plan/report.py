"""The plan as text: one Markdown table per run (readable in a terminal, pasted as is into docs/training.md)."""
from __future__ import annotations

from .memory import ALLOCATOR_MARGIN, CONTEXT_GIB, GIB, RunPlan


def _g(n: int | float) -> str:
    return f"{n / GIB:.1f}"


def format_plan(run: RunPlan, title: str, data: str) -> str:
    lines = [f"### {title}", "",
             f"{data}; {run.gpus} GPU(s), {run.strategy}; networks: {run.arch}. GiB per GPU. Speed at "
             f"{run.peak_tflops:g} TFLOP/s peak x {run.mfu:.0%} MFU (assumed).", "",
             "| phase | trains (M params) | frozen (M) | weights | grads | optimizer GPU (CPU) | EMA | activations: none / block / "
             "layer ckpt | used | total | fits | TFLOP/step | steps/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in run.phases:
        weights = " + ".join(f"{_g(v)} {k}" for k, v in p.weights.items() if v)
        extra = f" (+{_g(p.fsdp_gather)} FSDP gather)" if p.fsdp_gather else ""
        acts = " / ".join(_g(p.activations[g]) for g in ("none", "block", "layer"))
        fits = "yes" if p.total <= run.budget_gib * GIB else f"**NO** (> {run.budget_gib:g})"
        opt = _g(p.optimizer) + (f" ({_g(p.optimizer_cpu)})" if p.optimizer_cpu else "")
        lines.append(f"| {p.name} ({p.kind}, {p.batch}x{p.frames} fr{' x' + str(p.grad_accum) + ' acc' if p.grad_accum > 1 else ''}) "
                     f"| {p.trainable / 1e6:.1f} | {p.frozen / 1e6:.1f} | {weights}{extra} | {_g(p.gradients)} | {opt} | {_g(p.ema)} "
                     f"| {acts} | {_g(p.activation_bytes)} ({p.checkpointing}) | **{_g(p.total)}** | {fits} "
                     f"| {p.flops / 1e12:.0f} | {p.steps_per_s:.3g} |")
    lines += ["", f"used = activations as configured x {ALLOCATOR_MARGIN} (allocator margin); total adds {CONTEXT_GIB:g} GiB "
              "(CUDA context, workspaces)."]
    return "\n".join(lines)
