"""Peak GPU memory of one EchoMimicV3 flash-pro LoRA training step (``echomimic-train v3-fit``), computed without a GPU.

The step is the trainer's own code (:mod:`trainer.v3`) on the run's settings: the transformer in the mixed-precision
dtype, :func:`trainer.v3.lora.inject` (the run's rank and targets), :func:`trainer.v3.lora.cast_base_` (adapters
float32), the forward wrapped as ``Accelerator.prepare`` wraps it under mixed precision (autocast, outputs cast to
float32), a batch from :func:`trainer.v3.loop.make_batch` (``optim.batch_size`` encoded windows),
:func:`trainer.v3.flow.flow_loss`, backward, gradient clipping (``clip_grad_norm_``, as ``acc.clip_grad_norm_``),
AdamW over the adapters, ``zero_grad(set_to_none=True)``. AdamW's state is made first by a step on zero gradients,
so the measured step is a steady one (every step after the first). The peak counts the weights, the adapters and
their state, the batch, gradients and every activation; the encoders (VAE, CLIP, wav2vec2, umT5) are not on the
device during steps (the run encodes every window first and frees them). Per step: the peak of each stage (forward,
backward, optimizer), what is alive when backward starts (``kept``: with checkpointing, each block's input), and
the rest at the peak (``working``: with checkpointing, one block recomputed and its backward).

``device="fake"`` computes it without a GPU: fake tensors (``FakeTensorMode``: shapes, no memory) counted by
:class:`echomimic_lib.memory.tracker.StepTracker` (live storages, CUDA's 512-byte rounding, as
``torch.cuda.max_memory_allocated`` counts). The fake tensors are on the CPU: without a GPU, autograd's engine refuses
fake CUDA tensors (it asks the device for its context). What the GPU does differently is set as it does: AdamW runs
its ``foreach`` implementation (CUDA's default); SDPA picks its CPU flash kernel, which keeps what CUDA's flash kernel
keeps (output and log-sum-exp, no score matrix; a math-path softmax is refused); autocast follows the CPU's casting
rules, which for this network differ from CUDA's only in the LayerNorms of the CLIP and audio projections (CUDA's
keep the 769-token context in float32). Checked at full size: the forward alone (which fake CUDA tensors can run)
under CUDA's autocast and flash kernel keeps 0.02-0.05 GB more than on the fake CPU device (49 frames 512 px, 81
frames 768 px). The host-side tensors of the step (sigma draw, noise, float64 RoPE tables before their copy) are
counted too: tens of MB at the start of the forward, not at the peak. The network is built on the meta device (as
``load_v3_transformer`` builds it) with its adapters, then given fake weights (``module.to`` cannot move fake
parameters). Stand-ins, none holding device memory: the base fingerprint that ``inject`` stores (it reads values) is
empty, scalar reads (the sigma draw's seed, AdamW's step count) are answered 1 and the loss's finiteness True. Not
modelled: flash attention's float32 gradient accumulator in one attention's backward (batch x tokens x 1536 x 4
bytes: 0.3 GB at 81 frames 768 px), cuBLAS workspaces, the CUDA context (about 0.5 GB outside PyTorch's allocator),
allocator fragmentation (reserved - allocated), fp16's loss scaler (a few bytes).

``device="cuda"`` runs the same step with random weights and reads ``torch.cuda.max_memory_allocated`` (and the
reserved peak); ``device="cpu"`` runs it on the CPU for real, counted by the tracker (the check of the fake run: the
tiny transformer agrees to 0.1 %, ``tests/test_v3_train_memory.py``). ``bench/bench_v3_train_memory.py`` is the
command line over :func:`step_memory`; ``echomimic-train plan`` reports it for a run's config (:mod:`.v3`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from types import MethodType, SimpleNamespace

import torch

from echomimic_lib.devices import default_dtype

DEVICES = ("fake", "cuda", "cpu")
PROMPT_TOKENS = 16  # umT5 states of a short caption ("A person is speaking." and its end token, padded by the network)
VAE_SPATIAL = 8  # the Wan VAE's pixels per latent (each side)


@dataclass
class StepMemory:
    """Bytes of one steady training step; ``parts``: weights, adamw_state, batch, kept_activations, working_set."""

    peak: int
    stages: dict  # forward / backward / optimizer -> peak bytes
    saved: int  # alive when backward starts
    parts: dict
    tokens: int  # video tokens per sample
    lora_layers: int
    adapter_params: int
    base_params: int
    device: str
    gpu: str | None = None
    reserved: int | None = None  # CUDA's reserved peak (device cuda)
    losses: list = field(default_factory=list)  # real runs
    s_per_step: float | None = None  # with time_steps
    seconds: float = 0.0  # wall time of the computation

    @property
    def dominant(self) -> str:
        return max(self.parts, key=self.parts.get)


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
def latent_shape(net, frames: int, width: int, height: int) -> tuple[int, int, int]:
    """(T, h, w) latents of ``frames`` video frames at ``width`` x ``height``."""
    return (frames - 1) // net.vae_scale + 1, height // VAE_SPATIAL, width // VAE_SPATIAL


def encoded_window(net, frames: int, width: int, height: int) -> dict:
    """One window as :class:`trainer.v3.encode.EncodedWindows` stores it (shapes and dtypes of ``Encoders.encode``)."""
    t, h, w = latent_shape(net, frames, width, height)
    return {"latents": torch.zeros(16, t, h, w), "y": torch.zeros(20, t, h, w), "clip": torch.zeros(net.clip_tokens, net.clip_dim),
            "audio": torch.zeros(frames, net.audio.blocks, net.audio.channels, dtype=torch.float16)}


def host_batch(net, cfg, dtype) -> dict:
    """:func:`trainer.v3.loop.make_batch` over ``optim.batch_size`` cached windows (on the host; the step moves it)."""
    from ..v3.loop import make_batch

    d = cfg.data
    cache = SimpleNamespace(load=lambda i: encoded_window(net, d.frames, d.width, d.height))
    windows = [SimpleNamespace(prompt=d.prompt)]
    prompts = {d.prompt: torch.zeros(PROMPT_TOKENS, net.text_dim)}
    b = cfg.optim.batch_size
    return make_batch(cache, prompts, windows, [0] * b, torch.zeros(b, dtype=torch.bool), "cpu", dtype)


def train_step(model, optimizer, params, batch: dict, device, cfg, generator, sigmas, stage=None):
    """One step of :func:`trainer.v3.loop.fit_v3` (one process, no accumulation): the batch onto the device, the flow
    loss, backward, clipping, AdamW, gradients freed. ``stage(name)`` is told where the step is."""
    from ..v3.flow import flow_loss

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


def _build(net, cfg, dev, dtype, fake: bool, mode):
    """The transformer with the run's adapters, as fit_v3 sets it up (frozen base in ``dtype``, adapters float32)."""
    from echomimic_lib.models.wan import WanV3Transformer
    from ..v3.lora import cast_base_, inject

    if fake:  # module.to() cannot move fake parameters (torch swaps them, and fake tensors refuse the swap): the
        # network and its adapters are built on the meta device -- as load_v3_transformer builds it before it assigns
        # the weights --, then every tensor becomes a fake one of the same shape and dtype
        with torch.device("meta"), default_dtype(dtype), _no_fingerprint():
            model = WanV3Transformer(net).eval()
            model.checkpoint_blocks = cfg.gradient_checkpointing
            desc = inject(model, cfg)
            cast_base_(model, dtype)
        with mode:
            _fake_weights_(model, dev)
        return model.train(), desc
    with torch.device(dev), default_dtype(dtype):  # random weights on the device
        model = WanV3Transformer(net).eval()
    model.checkpoint_blocks = cfg.gradient_checkpointing
    desc = inject(model, cfg)
    cast_base_(model, dtype)
    return model.to(dev).train(), desc


# ------------------------------------------------------------------------------------------ one measurement
def step_memory(cfg, net, device: str = "fake", time_steps: int = 0) -> StepMemory:
    """Peak device memory of a training step of the checked V3 config ``cfg`` on the transformer ``net``
    (:class:`~echomimic_lib.models.wan.WanV3Config`; the release's is ``WanV3Config()``) with AdamW's state in place
    (as every step after the first has it), then ``time_steps`` more steps, timed. ``device``: fake (computed), cuda
    or cpu (measured)."""
    import diffusers.training_utils  # noqa: F401  (the sigma draw's import, done here: imported first inside the fake
    # mode, the modules it loads would make their module-level tensors fake, and count them in the first step only)
    from torch._subclasses.fake_tensor import FakeTensorMode

    from echomimic_lib.memory.estimate import weight_bytes
    from echomimic_lib.memory.tracker import StepTracker
    from ..loop import DTYPES, step_seed
    from ..v3.flow import training_sigmas

    if device not in DEVICES:
        raise ValueError(f"device {device!r}: one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: no CUDA device here; device fake computes the figure on the CPU")
    if device == "fake" and time_steps:
        raise ValueError("time_steps times real steps: use device cuda or cpu")
    dtype = DTYPES[cfg.mixed_precision]
    fake, cuda = device == "fake", device == "cuda"
    dev = torch.device("cuda" if cuda else "cpu")  # fake: CPU fake tensors stand in for CUDA ones (see the docstring)
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    t0 = time.time()
    model, desc = _build(net, cfg, dev, dtype, fake, mode)
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
    t, h, w = latent_shape(net, cfg.data.frames, cfg.data.width, cfg.data.height)
    patch = net.patch_size
    return StepMemory(
        peak=int(peak), stages=dict(meter.peaks), saved=int(meter.saved), parts=parts,
        tokens=(t // patch[0]) * (h // patch[1]) * (w // patch[2]), lora_layers=desc["layers"], adapter_params=trainable,
        base_params=sum(p.numel() for p in model.parameters()) - trainable, device=device,
        gpu=torch.cuda.get_device_name() if cuda else None, reserved=meter.reserved if cuda else None, losses=losses,
        s_per_step=sum(seconds) / len(seconds) if seconds else None, seconds=time.time() - t0)
