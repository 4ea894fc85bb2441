"""Benchmark: peak GPU memory of one EchoMimicV3 flash-pro LoRA training step (``echomimic-train v3-fit``).

    .venv/bin/python bench/bench_v3_train_memory.py --grid                      # the table: frames x size x checkpointing
    .venv/bin/python bench/bench_v3_train_memory.py --frames 81 --size 768 --checkpointing on --json
    python bench/bench_v3_train_memory.py --device cuda --frames 49 --size 512 --time-steps 3   # on a GPU
    python bench/bench_v3_train_memory.py --compare 49x512:on,81x768:on --time-steps 3 --out rows.jsonl

The step is the trainer's own code (:mod:`trainer.v3`) at the release's size (``WanV3Config()``: dim 1536, 30 layers,
the real audio projector): the transformer in bf16, :func:`trainer.v3.lora.inject` (rank 32, the default targets: 360
layers, 49.6 M adapter parameters), :func:`trainer.v3.lora.cast_base_` (adapters float32), the forward wrapped as
``Accelerator.prepare`` wraps it for ``mixed_precision: bf16`` (autocast, outputs cast to float32), a batch from
:func:`trainer.v3.loop.make_batch` (one encoded window), :func:`trainer.v3.flow.flow_loss`, backward, gradient
clipping (``clip_grad_norm_``, as ``acc.clip_grad_norm_``), AdamW over the adapters, ``zero_grad(set_to_none=True)``. AdamW's state is made first by a step on zero
gradients, so the measured step is a steady one (every step after the first). The peak counts the weights, the
adapters and their state, the batch, gradients and every activation; the encoders (VAE, CLIP, wav2vec2, umT5) are not
on the device during steps (the run encodes every window first and frees them). Per row: the peak of each stage
(forward, backward, optimizer), what is alive when backward starts (``kept``: with checkpointing, each block's input),
and the rest at the peak (``working``: with checkpointing, one block recomputed and its backward).

``--device fake`` (the default) computes it without a GPU: fake tensors (``FakeTensorMode``: shapes, no memory) and
the project's allocation tracker (:class:`echomimic_lib.memory.tracker.VramTracker`: live storages, CUDA's 512-byte
rounding; :class:`StepTracker` drops dead storages by callback, a training step keeps thousands alive). The fake
tensors are on the CPU: without a GPU, autograd's engine refuses fake CUDA tensors (it asks the device for its
context). What the GPU does differently is set as it does: AdamW runs its ``foreach`` implementation (CUDA's
default); SDPA picks its CPU flash kernel, which keeps what CUDA's flash kernel keeps (output and log-sum-exp, no
score matrix; a math-path softmax is refused); autocast follows the CPU's casting rules, which for this network differ
from CUDA's only in the LayerNorms of the CLIP and audio projections (CUDA's keep the 769-token context in float32).
Checked at full size: the forward alone (which fake CUDA tensors can run) under CUDA's autocast and flash kernel keeps
0.02-0.05 GB more than on the fake CPU device (49 frames 512 px, 81 frames 768 px). The host-side tensors of the step
(sigma draw, noise, float64 RoPE tables before their copy) are counted too: tens of MB at the start of the forward,
not at the peak. The network is built on the meta device (as ``load_v3_transformer`` builds it) with its adapters,
then given fake weights (``module.to`` cannot move fake parameters). Stand-ins, none holding device memory: the base
fingerprint that ``inject`` stores (it reads values) is empty, scalar reads (the sigma draw's seed, AdamW's step count)
are answered 1 and the loss's finiteness True. Not modelled: flash attention's float32 gradient accumulator in one
attention's backward (tokens x 1536 x 4 bytes: 0.3 GB at 81 frames 768 px), cuBLAS workspaces, the CUDA context
(about 0.5 GB outside PyTorch's allocator), allocator fragmentation (reserved - allocated).

``--device cuda`` runs the same step with random weights and reports ``torch.cuda.max_memory_allocated`` (and the
reserved peak); ``--device cpu`` runs it on the CPU for real, counted by the tracker (the check of the fake run: the
tiny preset agrees to 0.1 %). ``--compare`` computes each row (fake) and measures it in a fresh process
(``--measure-device``, default cuda, with ``--time-steps`` timed steps), and prints one JSON row each (``computed_gb``,
``measured_gb``, ``ratio`` = measured / computed, ``s_per_step``). GB = 1e9 bytes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import MethodType, SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vram import _default_dtype  # noqa: E402  (the V1/V2 meter's default-dtype context)
from echomimic_lib.memory.estimate import weight_bytes  # noqa: E402
from echomimic_lib.memory.tracker import VramTracker, _rounded  # noqa: E402
from echomimic_lib.models.wan import WanV3Config, WanV3Transformer  # noqa: E402
from echomimic_lib.models.wan.tiny import TINY_V3  # noqa: E402

GB = 1e9
PRESETS = {"full": WanV3Config(), "tiny": TINY_V3}
GRID = [(f, s, ck) for f in (33, 49, 81) for s in (512, 768) for ck in (True, False)]
PROMPT_TOKENS = 16  # umT5 states of a short caption ("A person is speaking." and its end token, padded by the network)
DEVICES = ("fake", "cuda", "cpu")


# ------------------------------------------------------------------------------------------ stand-ins for fake tensors
class _FakeReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Answers the step's scalar reads of fake tensors (they hold no values): numbers 1 (the seed the sigma draw takes
    from the run's generator, AdamW's step count, the logged mean sigma), booleans True (the loss is finite). Refuses
    attention's math path (a softmax over a score matrix): the GPU runs a fused kernel."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            t = args[0]
            return True if t.dtype == torch.bool else 1.0 if t.is_floating_point() else 1
        if func in (torch.ops.aten._softmax.default, torch.ops.aten._safe_softmax.default):
            raise RuntimeError("attention took SDPA's math path (a score matrix): the figure would not be the GPU's")
        return func(*args, **(kwargs or {}))


class StepTracker(VramTracker):
    """The allocation tracker (rounding, resident weights, stages, ignored storages) with dead storages dropped by a
    finalizer when they die, instead of a sweep over every live storage after each operator: a training step keeps
    thousands of storages alive (saved activations), and the sweep made it quadratic (minutes per step)."""

    def _sweep(self) -> None:
        pass

    def _drop(self, key: int) -> None:
        self.created -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_flatten

        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and self._on_device(t):
                st = t.untyped_storage()
                key = StorageWeakRef(st).cdata
                if key in self._ignore or key in self._live:
                    continue
                n = _rounded(st.nbytes())
                self._live[key] = (None, n)
                self.created += n
                weakref.finalize(st, self._drop, key)
        self._note()
        return out


@contextlib.contextmanager
def _no_fingerprint():
    """:func:`trainer.v3.lora.inject` stores a fingerprint of a few base weight values (for resume); fake tensors have none."""
    import echomimic_lib.lora as lib_lora

    real = lib_lora.fingerprint
    lib_lora.fingerprint = lambda layers: {}
    try:
        yield
    finally:
        lib_lora.fingerprint = real


def _fake_weights_(model, device) -> None:
    """Every meta parameter / buffer replaced by a fake tensor of its shape and dtype on ``device`` (in FakeTensorMode)."""
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                                           requires_grad=p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)


def prepare_forward(model, device_type: str, dtype) -> None:
    """What ``Accelerator.prepare`` does to the model under mixed precision (accelerate 1.x ``prepare_model``): the
    forward runs in autocast and its outputs are cast to float32."""
    from accelerate.utils import convert_outputs_to_fp32

    if dtype != torch.float32:
        model.forward = MethodType(convert_outputs_to_fp32(torch.autocast(device_type, dtype=dtype)(type(model).forward)), model)


# ------------------------------------------------------------------------------------------ the run's pieces
def train_config(rank: int, frames: int, size: int, checkpointing: bool, targets=None):
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


def encoded_window(net: WanV3Config, frames: int, size: int) -> dict:
    """One window as :class:`trainer.v3.encode.EncodedWindows` stores it (shapes and dtypes of ``Encoders.encode``)."""
    t, h = (frames - 1) // net.vae_scale + 1, size // 8
    return {"latents": torch.zeros(16, t, h, h), "y": torch.zeros(20, t, h, h), "clip": torch.zeros(net.clip_tokens, net.clip_dim),
            "audio": torch.zeros(frames, net.audio.blocks, net.audio.channels, dtype=torch.float16)}


def host_batch(net: WanV3Config, cfg, dtype) -> dict:
    """:func:`trainer.v3.loop.make_batch` over one cached window (on the host; the step moves it to the device)."""
    from trainer.v3.loop import make_batch

    cache = SimpleNamespace(load=lambda i: encoded_window(net, cfg.data.frames, cfg.data.width))
    windows = [SimpleNamespace(prompt=cfg.data.prompt)]
    prompts = {cfg.data.prompt: torch.zeros(PROMPT_TOKENS, net.text_dim)}
    return make_batch(cache, prompts, windows, [0] * cfg.optim.batch_size, torch.zeros(cfg.optim.batch_size, dtype=torch.bool),
                      "cpu", dtype)


def train_step(model, optimizer, params, batch: dict, device, cfg, generator, sigmas, stage=None):
    """One step of :func:`trainer.v3.loop.fit_v3` (one process, no accumulation): the batch onto the device, the flow
    loss, backward, clipping, AdamW, gradients freed. ``stage(name)`` is told where the step is."""
    from trainer.v3.flow import flow_loss

    stage = stage or (lambda name: None)
    stage("forward")
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    loss, _ = flow_loss(model, batch, cfg.noise, generator, sigmas)
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {float(loss)}")
    stage("backward")
    loss.backward()
    stage("optimizer")
    if cfg.optim.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)  # what acc.clip_grad_norm_ calls (bf16: no unscale)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


class _Meter:
    """Peak per stage of the measured step (forward, backward, optimizer) and the bytes alive when backward starts
    (weights, AdamW state, batch and the activations kept for backward): the tracker's, or CUDA's allocator statistics."""

    def __init__(self, tracker):
        self.tracker, self.current, self.peaks, self.saved, self.reserved = tracker, None, {}, 0, 0

    def stage(self, name) -> None:
        t = self.tracker
        if t is not None:
            t.set_stage(name or "after")
            if name == "backward":
                self.saved = t.live
            self.peaks = {k: v for k, v in t.stage_peaks.items() if k in ("forward", "backward", "optimizer")}
            return
        torch.cuda.synchronize()
        if self.current is not None:
            self.peaks[self.current] = torch.cuda.max_memory_allocated()
            self.reserved = max(self.reserved, torch.cuda.max_memory_reserved())
        if name == "backward":
            self.saved = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self.current = name


# ------------------------------------------------------------------------------------------ one measurement
def measure(frames: int, size: int, checkpointing: bool, rank: int = 32, preset: str = "full", device: str = "fake",
            time_steps: int = 0, targets=None) -> dict:
    """Peak device memory of a training step with AdamW's state in place (as every step after the first has it), then
    ``time_steps`` more steps, timed. ``device``: fake (computed), cuda or cpu (measured)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from trainer.loop import step_seed
    from trainer.v3.flow import training_sigmas
    from trainer.v3.lora import cast_base_, inject

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
    net, dtype = PRESETS[preset], torch.bfloat16
    cfg = train_config(rank, frames, size, checkpointing, targets)  # the trainer's own checks (4k+1 frames, size / 16)
    fake, cuda = device == "fake", device == "cuda"
    dev = torch.device("cuda" if cuda else "cpu")  # fake: CPU fake tensors stand in for CUDA ones (see the docstring)
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    t0 = time.time()
    if fake:  # module.to() cannot move fake parameters (torch swaps them, and fake tensors refuse the swap): the
        # network and its adapters are built on the meta device -- as load_v3_transformer builds it before it assigns
        # the weights --, then every tensor becomes a fake one of the same shape and dtype
        with torch.device("meta"), _default_dtype(dtype), _no_fingerprint():
            model = WanV3Transformer(net).eval()
            model.checkpoint_blocks = cfg.gradient_checkpointing
            desc = inject(model, cfg)
            cast_base_(model, dtype)
        with mode:
            _fake_weights_(model, dev)
        model.train()
    else:  # as fit_v3: the transformer in bf16 on the device (random weights), adapters, base cast, train mode
        with torch.device(dev), _default_dtype(dtype):
            model = WanV3Transformer(net).eval()
        model.checkpoint_blocks = cfg.gradient_checkpointing
        desc = inject(model, cfg)
        cast_base_(model, dtype)
        model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                  foreach=None if cuda else True)  # CUDA's default: the foreach implementation
    prepare_forward(model, dev.type, dtype)
    sigmas = training_sigmas(cfg.noise.shift)
    host = host_batch(net, cfg, dtype)
    trainable = sum(p.numel() for p in params)
    weights = weight_bytes(model)
    batch = sum(v.numel() * v.element_size() for v in host.values() if isinstance(v, torch.Tensor))
    with mode, (_FakeReads() if fake else contextlib.nullcontext()):
        for p in params:  # AdamW's state as the first step leaves it: the measured step is a steady one
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    state = [st[k] for st in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")]  # its step counts: host
    adam = sum(t.numel() * t.element_size() for t in state)
    # weights, AdamW state and batch are counted as resident (on the CPU the batch's move to the device is no copy);
    # the RoPE angle tables stay in host memory on a GPU too (not counted)
    tracker = None if cuda else StepTracker(dev, ignore=[*model.parameters(), *model.buffers(), *model._angles, *state])
    meter = _Meter(tracker)
    losses, seconds = [], []
    with mode, (tracker or contextlib.nullcontext()), (_FakeReads() if fake else contextlib.nullcontext()):
        if tracker is not None:
            tracker.set_resident(weights + adam + batch)
        for i in range(1 + time_steps):
            g = torch.Generator().manual_seed(step_seed(cfg.seed, 0, i, 0))
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = train_step(model, optimizer, params, host, dev, cfg, g, sigmas, meter.stage if i == 0 else None)
            if cuda:
                torch.cuda.synchronize()
            if i == 0:
                meter.stage(None)
            else:
                seconds.append(time.perf_counter() - start)
            if not fake:
                losses.append(round(float(loss), 5))
    peak = max(meter.peaks.values())
    parts = {"weights": weights, "adamw_state": adam, "batch": batch,
             "kept_activations": meter.saved - weights - adam - batch,  # held from the forward for the backward
             "working_set": peak - meter.saved}  # on top, at the peak: a block recomputed, gradients, kernel outputs
    out = {"frames": frames, "size": size, "checkpointing": checkpointing, "rank": rank, "preset": preset, "device": device,
           "gpu": torch.cuda.get_device_name() if cuda else None, "peak_gb": round(peak / GB, 3), "peak_bytes": int(peak),
           "stages_gb": {k: round(v / GB, 3) for k, v in meter.peaks.items()}, "saved_gb": round(meter.saved / GB, 3),
           "parts_gb": {k: round(v / GB, 3) for k, v in parts.items()}, "parts_bytes": parts, "dominant": max(parts, key=parts.get),
           "tokens": ((frames - 1) // net.vae_scale + 1) * (size // 16) ** 2,
           "lora_layers": desc["layers"], "adapter_params": trainable, "adapter_params_M": round(trainable / 1e6, 2),
           "base_params": sum(p.numel() for p in model.parameters()) - trainable,
           "losses": losses, "seconds": round(time.time() - t0, 1)}
    if cuda:
        out["reserved_gb"] = round(meter.reserved / GB, 3)
    if seconds:
        out["s_per_step"] = round(sum(seconds) / len(seconds), 3)
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
