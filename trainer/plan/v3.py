"""``echomimic-train plan RUN.yaml`` for an EchoMimicV3 flash-pro LoRA config (``v3-fit``): memory per GPU, expected
speed, and whether the step fits ``--gpu-gib``, before a run.

- Which trainer a file is for (:func:`read_plan_mapping`): a key only the V3 config has (``model.path``,
  ``data.frames``, ``gradient_checkpointing`` at the top, ``noise.shift``, ...) makes it a V3 config, a key only the
  V1/V2 config has (``preset``, ``phases``, ``memory``, ``model.init``, ...) a V1/V2 one; a file with both is refused.
  One with neither (only shared keys) is told by its ``lora.targets``: only V3's layer names (``self_attn.q``, ...,
  which no V1/V2 UNet layer is called) make it a V3 config (it was read as V1/V2 and told to add ``lora.enabled``);
  otherwise it plans as V1/V2, as before.
- Memory: :func:`trainer.plan.v3_step.step_memory` -- the trainer's own step on fake tensors at the run's frames,
  size, batch, rank, targets, precision and checkpointing (the peak ``torch.cuda.max_memory_allocated`` would show,
  in parts) -- plus what it does not trace: flash attention's float32 gradient accumulator (batch x tokens x dim x 4
  bytes, one attention's backward), DDP's gradient buckets with several GPUs (a float32 copy of the adapters'
  gradients), and the V1/V2 plan's allowances (``ALLOCATOR_MARGIN`` on the activations, ``CONTEXT_GIB`` for the CUDA
  context and workspaces).
- Speed: the forward's FLOPs counted analytically (:func:`echomimic_lib.models.wan.flops.call_flops`, the audio
  projector included), forward + backward = 3 forwards, plus 1 recomputed with gradient checkpointing, times batch
  and accumulation, at ``--peak-tflops`` x ``--mfu``. ``FlopCounterMode`` over the trainer's step at 49 frames
  512x512 counts 3.81 forwards with checkpointing and 2.80 without (the frozen base computes no weight gradients,
  attention's backward costs 2.5 forwards): the rule is 5-7 % above it.
- ``--gpu-gib`` defaults to 24 (:data:`GPU_GIB`): a LoRA on the 1.3B transformer is what one trains on a single
  consumer or workstation card (RTX 3090 / 4090, A10, L4: 24 GB), where whether it fits is the question; the V1/V2
  default (80, an A100 / H100) would call nearly every checkpointed V3 config fine.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from ..config import ConfigError

GPU_GIB = 24.0
PLACEHOLDERS = {"output_dir": "(plan)", "model.path": "(plan: no files read)", "data.roots": ["(plan)"]}


# ------------------------------------------------------------------------------------------ which trainer a file is for
def _keys(cls, prefix: str = "") -> set[str]:
    """Dotted key paths of a config dataclass, two levels deep (``model``, ``model.path``)."""
    out = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        out.add(prefix + f.name)
        if not prefix and dataclasses.is_dataclass(hints[f.name]):
            out |= _keys(hints[f.name], f.name + ".")
    return out


def _present(data: dict) -> set[str]:
    return {k for k in map(str, data)} | {f"{k}.{s}" for k, v in data.items() if isinstance(v, dict) for s in map(str, v)}


def family_keys() -> tuple[set[str], set[str]]:
    """(keys only the V3 config has, keys only the V1/V2 config has)."""
    from ..config import TrainConfig
    from ..v3.config import V3TrainConfig

    v3, v12 = _keys(V3TrainConfig), _keys(TrainConfig)
    return v3 - v12, v12 - v3


def _v3_targets(data: dict) -> bool:
    """``lora.targets`` names only V3 layers (``self_attn.q``, ..., ``cross_attn.k_audio``): a V1/V2 UNet has none."""
    from ..v3.config import ALL_TARGETS

    lora = data.get("lora")
    targets = lora.get("targets") if isinstance(lora, dict) else None
    return isinstance(targets, list) and bool(targets) and all(isinstance(t, str) and t in ALL_TARGETS for t in targets)


def read_plan_mapping(path, overrides=None) -> tuple[str, dict, list[str]]:
    """("v3" or "v1v2", the file's mapping with ``--set`` overrides applied, the keys that decided a V3 config)."""
    from ..config_checks import read_yaml_mapping
    from ..config_file import apply_override

    data, failed = read_yaml_mapping(path), None
    for assignment in overrides or []:
        try:
            data = apply_override(data, assignment)
        except ConfigError as exc:  # a V1/V2 file's phases are the preset's merged with its own: the loader applies it
            failed = failed or exc
    only_v3, only_v12 = family_keys()
    keys = _present(data)
    v3, v12 = sorted(keys & only_v3), sorted(keys & only_v12)
    if failed is not None and (v3 or "preset" not in data):  # (no preset to merge: the error is the file's own)
        raise failed
    if not (v3 or v12) and _v3_targets(data):
        v3 = [f"lora.targets {', '.join(map(str, data['lora']['targets']))[:60]}"]
    if v3 and v12:
        raise ConfigError(f"{path}: it has keys of an EchoMimicV3 LoRA config ({', '.join(v3[:4])}) and of a V1/V2 config "
                          f"({', '.join(v12[:4])}); a config is for one trainer: keep the keys of `echomimic-train v3-fit` "
                          "(docs/training.md section 11) or of `fit` (section 2)")
    return ("v3" if v3 else "v1v2"), data, v3


def load_v3_plan_config(path, data: dict, decided_by: list[str]):
    """The V3 config a plan needs: read strictly and checked as ``v3-fit`` reads it, without files (``output_dir``,
    ``model.path`` and ``data.roots`` may be left out)."""
    import copy

    from ..v3.config import v3_config_from

    data = copy.deepcopy(data)
    for key, value in PLACEHOLDERS.items():
        section, _, leaf = key.rpartition(".")
        node = data.setdefault(section, {}) if section else data
        if isinstance(node, dict) and not node.get(leaf):
            node[leaf] = value
    try:
        return v3_config_from(data)
    except ConfigError as exc:
        raise ConfigError(f"{path} (read as an EchoMimicV3 LoRA config: it has {', '.join(decided_by[:3])}): {exc}") from None


# ------------------------------------------------------------------------------------------ the plan
@dataclass
class V3Plan:
    cfg: object
    network: str  # where the transformer's size came from
    gpus: int
    peak_tflops: float
    mfu: float
    budget_gib: float
    step: object  # trainer.plan.v3_step.StepMemory
    flash_buffer: int
    ddp_buckets: int
    margin: int  # the allocator margin on the activations
    context: int
    forward_flops: int  # one micro-batch's forward

    @property
    def step_flops(self) -> int:
        """One optimizer step: (forward + backward = 3 forwards, + 1 recomputed with checkpointing) x accumulation."""
        return self.forward_flops * (3 + int(self.cfg.gradient_checkpointing)) * self.cfg.optim.grad_accum

    @property
    def s_per_step(self) -> float:
        return self.step_flops / (self.peak_tflops * 1e12 * self.mfu)

    @property
    def total(self) -> int:
        return self.step.peak + self.flash_buffer + self.ddp_buckets + self.margin + self.context

    @property
    def fits(self) -> bool:
        from .memory import GIB

        return self.total <= self.budget_gib * GIB


def plan_v3(cfg, net=None, network: str = "the release's transformer", gpus: int = 1,
            peak_tflops: float = 312.0, mfu: float = 0.30, gpu_gib: float = GPU_GIB) -> V3Plan:
    """The plan of a checked V3 config on ``net`` (default ``WanV3Config()``, the release)."""
    from echomimic_lib.models.wan import WanV3Config
    from echomimic_lib.models.wan.flops import call_flops

    from .memory import ALLOCATOR_MARGIN, CONTEXT_GIB, GIB
    from .v3_step import latent_shape, step_memory

    if gpus < 1 or peak_tflops <= 0 or not 0 < mfu <= 1 or gpu_gib <= 0:
        raise ConfigError("plan: --gpus >= 1, --peak-tflops > 0, --mfu in (0, 1], --gpu-gib > 0")
    net = net or WanV3Config()
    step = step_memory(cfg, net, "fake")
    b = cfg.optim.batch_size
    acts = step.parts["kept_activations"] + step.parts["working_set"]
    latent = latent_shape(net, cfg.data.frames, cfg.data.width, cfg.data.height)
    return V3Plan(cfg, network, gpus, peak_tflops, mfu, gpu_gib, step,
                  flash_buffer=b * step.tokens * net.dim * 4, ddp_buckets=4 * step.adapter_params if gpus > 1 else 0,
                  margin=int(acts * (ALLOCATOR_MARGIN - 1)), context=int(CONTEXT_GIB * GIB),
                  forward_flops=call_flops(net, latent, batch=b, project_audio=True)["total"])


def short_targets(targets: list[str]) -> str:
    """``self_attn.q, self_attn.k, ffn.0`` -> ``self_attn.q/k, ffn.0``."""
    groups: dict[str, list[str]] = {}
    for t in targets:
        head, _, leaf = t.rpartition(".")
        groups.setdefault(head, []).append(leaf)
    return ", ".join(f"{h}.{'/'.join(leaves)}" if h else "/".join(leaves) for h, leaves in groups.items())


def format_v3_plan(plan: V3Plan, title: str) -> str:
    from .memory import ALLOCATOR_MARGIN, GIB

    c, s = plan.cfg, plan.step
    g = lambda n: f"{n / GIB:.2f}"  # noqa: E731
    fits = "yes" if plan.fits else f"**NO** (> {plan.budget_gib:g})"
    extra = [f"flash attention's float32 gradient buffer {g(plan.flash_buffer)}"]
    if plan.ddp_buckets:
        extra.append(f"DDP gradient buckets {g(plan.ddp_buckets)}")
    extra += [f"the allocator margin ({ALLOCATOR_MARGIN - 1:.0%} of the activations) {g(plan.margin)}",
              f"{g(plan.context)} for the CUDA context and workspaces (assumed)"]
    p = s.parts
    lines = [
        f"### {title}", "",
        f"EchoMimicV3 flash-pro LoRA on {plan.network} ({s.base_params / 1e6:.0f} M frozen parameters): "
        f"{c.data.frames} frames at {c.data.width}x{c.data.height} ({s.tokens} video tokens), batch {c.optim.batch_size} per "
        f"GPU x {c.optim.grad_accum} accumulation, LoRA rank {c.lora.rank} (alpha {c.lora.alpha:g}"
        f"{f', dropout {c.lora.dropout:g}' if c.lora.dropout else ''}) on {short_targets(c.lora.targets)} ({s.lora_layers} "
        f"layers, {s.adapter_params / 1e6:.1f} M parameters), mixed precision {c.mixed_precision}, gradient checkpointing "
        f"{'on' if c.gradient_checkpointing else 'off'}; {plan.gpus} GPU(s){', DDP' if plan.gpus > 1 else ''}. GiB per GPU. "
        f"Speed at {plan.peak_tflops:g} TFLOP/s peak x {plan.mfu:.0%} MFU (assumed; --peak-tflops, --mfu).", "",
        "| weights | AdamW | batch | kept activations | working | peak | total | fits | TFLOP/step | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {g(p['weights'])} | {g(p['adamw_state'])} | {g(p['batch'])} | {g(p['kept_activations'])} | {g(p['working_set'])} "
        f"| {g(s.peak)} | **{g(plan.total)}** | {fits} | {plan.step_flops / 1e12:.0f} | {plan.s_per_step:.3g} |", "",
        f"peak: the trainer's step on fake tensors, as torch.cuda.max_memory_allocated counts it: weights (the frozen base in "
        f"{c.mixed_precision if c.mixed_precision != 'no' else 'float32'}, the adapters in float32), AdamW's state, the "
        "batch, the activations kept from the forward for the backward, and the working set on top of them at the peak "
        f"({'one block recomputed and its backward' if c.gradient_checkpointing else 'the backward'}). total adds "
        f"{', '.join(extra)}. TFLOP/step: the forward ({plan.forward_flops / 1e12:.1f}, counted) x "
        f"{3 + int(c.gradient_checkpointing)} (backward = 2 forwards{', 1 recomputed' if c.gradient_checkpointing else ''})"
        f"{f' x {c.optim.grad_accum} accumulation' if c.optim.grad_accum > 1 else ''}.",
    ]
    return "\n".join(lines)


def advice(plan: V3Plan) -> str:
    """What to change when the step does not fit, the largest saving first."""
    from .memory import GIB

    c = plan.cfg
    tips = []
    if not c.gradient_checkpointing:
        tips.append("turn on gradient_checkpointing: true (5-10x less activation memory)")
    if c.optim.batch_size > 1:
        tips.append(f"optim.batch_size: 1 with optim.grad_accum: {c.optim.batch_size * c.optim.grad_accum} (the same samples per step)")
    if c.data.frames > 9:
        tips.append(f"fewer data.frames (e.g. {4 * ((c.data.frames - 1) // 8) + 1} instead of {c.data.frames})")
    if c.data.width * c.data.height > 384 * 384:
        w, h = (_smaller(v) for v in (c.data.width, c.data.height))
        tips.append(f"a smaller data.width / data.height (e.g. {w}x{h} instead of {c.data.width}x{c.data.height})")
    if c.mixed_precision == "no":
        tips.append("mixed_precision: bf16 (the frozen base in half the memory)")
    if c.lora.rank > 16:
        tips.append(f"a lower lora.rank (e.g. 16 instead of {c.lora.rank}: less adapter and AdamW memory)")
    if not tips:
        tips.append("a GPU with more memory")
    return (f"the step needs {plan.total / GIB:.1f} GiB per GPU, more than --gpu-gib {plan.budget_gib:g}: "
            + "; ".join(tips) + " (then run `echomimic-train plan` again)")


def _smaller(side: int) -> int:
    return 512 if side > 512 else 384 if side > 384 else side
