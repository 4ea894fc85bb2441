"""Benchmark: peak GPU memory of one EchoMimicV3 flash-pro LoRA training step (``echomimic-train v3-fit``).

    .venv/bin/python bench/bench_v3_train_memory.py --grid                      # the table: frames x size x checkpointing
    .venv/bin/python bench/bench_v3_train_memory.py --frames 81 --size 768 --checkpointing on --json
    python bench/bench_v3_train_memory.py --device cuda --frames 49 --size 512 --time-steps 3   # on a GPU
    python bench/bench_v3_train_memory.py --compare 49x512:on,81x768:on --time-steps 3 --out rows.jsonl

The command line over :func:`trainer.plan.v3_step.step_memory` (its docstring says how the step is run and counted;
``echomimic-train plan RUN.yaml`` reports the same figure for a run's config): the trainer's own step at the
release's size (``WanV3Config()``: dim 1536, 30 layers, the real audio projector), the transformer in bf16, rank 32
and the default targets (360 layers, 49.6 M adapter parameters; ``--rank``), batch 1, square frames (``--size``).
Per row: the peak of each stage (forward, backward, optimizer), what is alive when backward starts (``kept``: with
checkpointing, each block's input), and the rest at the peak (``working``: with checkpointing, one block recomputed
and its backward).

``--device fake`` (the default) computes it without a GPU (fake tensors, the allocation tracker).
``--device cuda`` runs the same step with random weights and reports ``torch.cuda.max_memory_allocated`` (and the
reserved peak); ``--device cpu`` runs it on the CPU for real, counted by the tracker (the check of the fake run: the
tiny preset agrees to 0.1 %). ``--compare`` computes each row (fake) and measures it in a fresh process
(``--measure-device``, default cuda, with ``--time-steps`` timed steps), and prints one JSON row each (``computed_gb``,
``measured_gb``, ``ratio`` = measured / computed, ``s_per_step``). GB = 1e9 bytes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echomimic_lib.models.wan import WanV3Config  # noqa: E402
from echomimic_lib.models.wan.tiny import TINY_V3  # noqa: E402
from trainer.plan.v3_step import DEVICES, step_memory  # noqa: E402

GB = 1e9
PRESETS = {"full": WanV3Config(), "tiny": TINY_V3}
GRID = [(f, s, ck) for f in (33, 49, 81) for s in (512, 768) for ck in (True, False)]


def train_config(rank: int, frames: int, size: int, checkpointing: bool, targets=None):
    """The run's settings of a row (the trainer's own checks: 4k+1 frames, size / 16)."""
    from trainer.v3.config import V3TrainConfig

    cfg = V3TrainConfig(output_dir="(bench)")
    cfg.model.path = "(random weights)"
    cfg.data.frames, cfg.data.width, cfg.data.height = frames, size, size
    cfg.lora.rank, cfg.lora.alpha = rank, float(rank)
    if targets:
        cfg.lora.targets = list(targets)
    cfg.gradient_checkpointing = checkpointing
    cfg.data.roots = ["(bench)"]
    return cfg.validate()


def measure(frames: int, size: int, checkpointing: bool, rank: int = 32, preset: str = "full", device: str = "fake",
            time_steps: int = 0, targets=None) -> dict:
    """One row: peak device memory of a steady training step, then ``time_steps`` more steps, timed. ``device``: fake
    (computed), cuda or cpu (measured)."""
    if device not in DEVICES:
        raise ValueError(f"device {device!r}: one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device here; --device fake computes the figure on the CPU")
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: one of {', '.join(PRESETS)}")
    if device == "cpu" and preset == "full":
        raise ValueError("--device cpu runs the step for real on the CPU: use --preset tiny (--device fake computes the "
                         "full size)")
    if device == "fake" and time_steps:
        raise ValueError("--time-steps times real steps: use it with --device cuda or cpu")
    cfg = train_config(rank, frames, size, checkpointing, targets)
    m = step_memory(cfg, PRESETS[preset], device, time_steps)
    out = {"frames": frames, "size": size, "checkpointing": checkpointing, "rank": rank, "preset": preset, "device": device,
           "gpu": m.gpu, "peak_gb": round(m.peak / GB, 3), "peak_bytes": m.peak,
           "stages_gb": {k: round(v / GB, 3) for k, v in m.stages.items()}, "saved_gb": round(m.saved / GB, 3),
           "parts_gb": {k: round(v / GB, 3) for k, v in m.parts.items()}, "parts_bytes": m.parts, "dominant": m.dominant,
           "tokens": m.tokens, "lora_layers": m.lora_layers, "adapter_params": m.adapter_params,
           "adapter_params_M": round(m.adapter_params / 1e6, 2), "base_params": m.base_params,
           "losses": m.losses, "seconds": round(m.seconds, 1)}
    if m.reserved is not None:
        out["reserved_gb"] = round(m.reserved / GB, 3)
    if m.s_per_step is not None:
        out["s_per_step"] = round(m.s_per_step, 3)
    return out


# ------------------------------------------------------------------------------------------ rows, table, CLI
def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args, "--json"], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"bench_v3_train_memory {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_rows(text: str) -> list[tuple[int, int, bool]]:
    """``49x512:on,81x768:on`` -> [(49, 512, True), (81, 768, True)]."""
    rows = []
    for item in filter(None, text.split(",")):
        try:
            shape, _, ck = item.partition(":")
            f, s = (int(x) for x in shape.split("x"))
            if ck not in ("", "on", "off"):
                raise ValueError
        except ValueError:
            raise SystemExit(f"--compare {item!r}: write FRAMESxSIZE:on|off, e.g. 49x512:on,81x768:on") from None
        rows.append((f, s, ck != "off"))
    return rows


def compare(rows, rank: int, preset: str, measure_device: str, time_steps: int, out_path: Path | None) -> list[dict]:
    """Each row computed (fake device, in this process) and measured (``measure_device``, in a fresh process: the
    allocator's peak is the step's alone)."""
    got = []
    for f, s, ck in rows:
        args = ["--rank", str(rank), "--preset", preset, "--frames", str(f), "--size", str(s), "--checkpointing", "on" if ck else "off"]
        row = {"frames": f, "size": s, "checkpointing": ck}
        try:
            c = measure(f, s, ck, rank, preset, "fake")
            m = _child([*args, "--device", measure_device, "--time-steps", str(time_steps)])
            row.update(computed_gb=c["peak_gb"], measured_gb=m["peak_gb"], ratio=round(m["peak_bytes"] / c["peak_bytes"], 4),
                       computed_bytes=c["peak_bytes"], measured_bytes=m["peak_bytes"],
                       measured_reserved_gb=m.get("reserved_gb"), s_per_step=m.get("s_per_step"), device=m["device"], gpu=m["gpu"], preset=m["preset"],
                       computed_stages_gb=c["stages_gb"], measured_stages_gb=m["stages_gb"], parts_gb=c["parts_gb"],
                       losses=m["losses"], seconds=[c["seconds"], m["seconds"]])
        except Exception as exc:  # noqa: BLE001  (the row records it; the next row still runs)
            row["error"] = f"{type(exc).__name__}: {exc}"[-1500:]
        print(json.dumps(row), flush=True)
        if out_path is not None:
            with out_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        got.append(row)
    return got


def table(rows: list[dict]) -> str:
    head = f"{'frames':>6} {'size':>9} {'ckpt':>4} {'tokens':>6} {'peak GB':>8} {'weights':>7} {'AdamW':>6} {'kept':>7} {'working':>7}  dominant"
    lines = [head]
    for r in rows:
        p = r["parts_gb"]
        lines.append(f"{r['frames']:>6} {r['size']:>4}x{r['size']:<4} {'on' if r['checkpointing'] else 'off':>4} {r['tokens']:>6} "
                     f"{r['peak_gb']:>8.2f} {p['weights']:>7.2f} {p['adamw_state']:>6.2f} {p['kept_activations']:>7.2f} "
                     f"{p['working_set']:>7.2f}  {r['dominant']}")
    return "\n".join(lines) + ("\nkept: activations held from the forward for the backward (checkpointing: each block's input); "
                               "working: on top of them at the peak (checkpointing: one block recomputed and its backward)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=49, help="video frames per sample, 4k+1 (33, 49, 81)")
    p.add_argument("--size", type=int, default=512, help="width = height, a multiple of 16")
    p.add_argument("--checkpointing", choices=["on", "off"], default="on", help="gradient_checkpointing (the default: on)")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--preset", choices=list(PRESETS), default="full", help="tiny: the test transformer (quick checks)")
    p.add_argument("--device", choices=DEVICES, default="fake",
                   help="fake: computed on the CPU (default); cuda: measured; cpu: measured on the CPU (tiny preset)")
    p.add_argument("--time-steps", type=int, default=0, help="further steps timed after the measured ones (s_per_step)")
    p.add_argument("--grid", action="store_true", help="every row of frames {33, 49, 81} x size {512, 768} x checkpointing")
    p.add_argument("--compare", metavar="ROWS", help="FRAMESxSIZE:on|off,...: each row computed and measured (fresh processes)")
    p.add_argument("--measure-device", choices=["cuda", "cpu"], default="cuda", help="with --compare")
    p.add_argument("--out", type=Path, help="with --compare: append each row to this JSON-lines file")
    p.add_argument("--json", action="store_true", help="one JSON object (--grid: {rows}) as the last line")
    a = p.parse_args(argv)
    try:
        return _run(a)
    except ValueError as exc:  # bad input (the trainer's ConfigError is one): the message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(a) -> int:
    if a.compare:
        rows = compare(parse_rows(a.compare), a.rank, a.preset, a.measure_device, a.time_steps, a.out)
        return 1 if any("error" in r for r in rows) else 0
    t0 = time.time()
    if a.grid:
        rows = [measure(f, s, ck, a.rank, a.preset, a.device) for f, s, ck in GRID]
    else:
        rows = [measure(a.frames, a.size, a.checkpointing == "on", a.rank, a.preset, a.device, time_steps=a.time_steps)]
    r0 = rows[0]
    print(f"EchoMimicV3 flash-pro LoRA step ({a.preset}, bf16, rank {a.rank}, {r0['lora_layers']} layers, "
          f"{r0['adapter_params_M']} M adapter parameters, batch 1) on {r0['gpu'] or a.device}: {time.time() - t0:.0f} s")
    print(table(rows))
    if "s_per_step" in r0:
        print(f"{r0['s_per_step']} s per step ({a.time_steps} timed)")
    if a.json:
        print(json.dumps({"rows": rows, "seconds": round(time.time() - t0, 1)} if a.grid else r0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
