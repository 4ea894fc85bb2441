"""The trained network and its optimizer, prepared by accelerate for the current phase's trainable set.

DistributedDataParallel registers the parameters that require gradients when it is built, so a phase that
trains another set (APDH's muted-audio phases, the motion-only temporal phase, a LoRA run's adapters) needs a
new wrapper. This goes through accelerate's public API only: ``unwrap_model(..., keep_fp32_wrapper=False)``
takes the DDP wrapper and the mixed-precision forward off the network, ``free_memory()`` drops the previously
prepared model and optimizer (so ``save_state`` writes exactly one of each), and ``prepare_model`` /
``prepare_optimizer`` wrap them again. The optimizer's state survives (the same ``torch.optim`` object is
re-wrapped). Consecutive phases with the same trainable set keep their wrapper.

A single process has no wrapper to replace: ``prepare_model`` returned the network itself, marked as prepared,
and preparing it again returns it unchanged. Its mixed-precision forward (autocast, outputs converted to
float32) therefore stays on it: taken off, it would not come back, and with bf16 / fp16 every phase after the
first change of the trainable set would return half-precision predictions, while a run started or resumed in
that phase returns float32 ones -- the gradients then differ in their last bits and resuming is no longer
bitwise exact (docs/training.md, "Training machinery").

Anything that changes which parameters train -- :func:`trainer.net.set_trainable`, adapter injection -- must
happen before :meth:`PhaseModel.enter`, which then wraps for exactly that set.

DeepSpeed cannot change the trainable set of an engine, nor FSDP the flat parameters it sharded: a run whose
phases train different sets is refused there at the first change (train one phase per run and ``--resume``).
The rest of the module: the Accelerator's multi-GPU / multi-node settings (``distributed:`` in the config).
"""
from __future__ import annotations

import torch
from torch import nn


class PhaseModel:
    def __init__(self, accelerator, net: nn.Module, optimizer: torch.optim.Optimizer):
        self.acc, self.net, self.raw_optimizer = accelerator, net, optimizer
        self.model = None  # what the loop calls (DDP / DeepSpeed wrapper, or the network itself)
        self.optimizer = None  # accelerate's wrapper of ``raw_optimizer``
        self._trainable: frozenset[str] | None = None
        self.wraps = 0  # how many times the model was (re)prepared (tests, logs)

    def trainable_names(self) -> frozenset[str]:
        return frozenset(n for n, p in self.net.named_parameters() if p.requires_grad)

    def enter(self) -> None:
        """Prepare for the parameters that require gradients now (a no-op when they are the ones already wrapped)."""
        from accelerate.utils import DistributedType

        names = self.trainable_names()
        if self.model is not None and names == self._trainable:
            return
        if self.acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            if self.model is not None:
                name = "DeepSpeed" if self.acc.distributed_type == DistributedType.DEEPSPEED else "FSDP"
                raise RuntimeError(f"{name} cannot change the trainable parameters inside one run: train each phase in its "
                                   "own run (--resume from the previous phase's checkpoint)")
            self.model, self.optimizer = self.acc.prepare(self.net, self.raw_optimizer)
        else:
            if self.model is not None:
                old, self.model, self.optimizer = self.model, None, None
                if old is not self.net:  # one process: the network itself keeps its mixed-precision forward (above)
                    self.acc.unwrap_model(old, keep_fp32_wrapper=False)
                del old  # the old DDP wrapper (and its gradient hooks) must be gone before the next backward:
                self.acc.free_memory()  # free_memory drops accelerate's references and runs the garbage collector
            self.model = self.acc.prepare_model(self.net)
            self.optimizer = self.acc.prepare_optimizer(self.raw_optimizer)
        self._trainable = names
        self.wraps += 1


# --- several GPUs and nodes (#26): the Accelerator's settings, the shared-output preflight, validation wait,
# --- optimizer state of frozen parameters, FSDP ---------------------------------------------------------------

def accelerator_kwargs(cfg) -> dict:
    """Keyword arguments of ``Accelerator`` for ``cfg.distributed``: the collective timeout
    (``InitProcessGroupKwargs``), per-node checkpoints (``ProjectConfiguration(save_on_each_node=True)``) with
    ``shared_fs: local``, and the FSDP plugin with ``strategy: fsdp``."""
    from datetime import timedelta

    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration

    d = cfg.distributed
    kw = {"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=cfg.ddp_find_unused),
                              InitProcessGroupKwargs(timeout=timedelta(seconds=d.timeout_s))],
          "project_config": ProjectConfiguration(project_dir=str(cfg.output_dir), save_on_each_node=d.shared_fs == "local")}
    if d.strategy == "fsdp":
        kw["fsdp_plugin"] = fsdp_plugin()
    return kw


# FSDP runs a unit's parameters only inside that unit's own forward, with gradients arriving through its
# outputs. The UNet blocks break both: the reference blocks hand their attention inputs to the denoiser through the
# reference bank (a side channel, not the block's output), the denoiser projects that bank through each block's
# ``attn1`` before its blocks run, and PhD calls the condition encoder on decoded frames after the forward. With
# a block as a unit the backward stops ("expected to be in states FORWARD_BACKWARD but current state is IDLE",
# found with the CPU forced into FSDP's path). The units are therefore the ResNet layers and the motion modules
# (plain input -> output layers, most of the parameters); attention layers, the condition encoder and the rest
# form the root unit, gathered for the whole step. Every parameter, gradient and optimizer state stays sharded.


def fsdp_units():
    from diffusers.models.resnet import ResnetBlock2D

    from echomimic_lib.models.unet.motion import MotionModule

    return (ResnetBlock2D, MotionModule)


def fsdp_plugin():
    """FSDP for phases that train whole UNets: every ResNet layer and motion module is its own shard unit (why: the
    comment above), parameters keep their names (``use_orig_params``: the phase's ``requires_grad`` choice and
    checkpoint key names hold), checkpoints are sharded (``SHARDED_STATE_DICT``: each rank writes its shard;
    :func:`trainer.checkpoint.save_checkpoint` adds the merged ``model.safetensors`` that export reads)."""
    import functools

    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    units = fsdp_units()
    policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda m: isinstance(m, units))
    return FullyShardedDataParallelPlugin(sharding_strategy="FULL_SHARD", auto_wrap_policy=policy, use_orig_params=True,
                                          state_dict_type="SHARDED_STATE_DICT", sync_module_states=False)


@torch.no_grad()
def materialize_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer state of every parameter that trains (a step at learning rate 0 on zero gradients:
    nothing moves). accelerate's FSDP resume reads the sharded optimizer checkpoint into the keys of the current
    ``FSDP.optim_state_dict``: with a fresh optimizer those hold no per-parameter state, so the AdamW moments would
    be silently dropped (seen with the CPU forced into FSDP's path: the resumed step 3 matched the uninterrupted
    run, step 4 did not). Call before ``load_state``; the loaded values replace these zeros."""
    saved = [g["lr"] for g in optimizer.param_groups]
    touched = []
    for g in optimizer.param_groups:
        g["lr"] = 0.0
        for p in g["params"]:
            if p.requires_grad and p.grad is None and not optimizer.state.get(p):
                p.grad = torch.zeros_like(p)
                touched.append(p)
    try:
        optimizer.step()
    finally:
        for g, lr in zip(optimizer.param_groups, saved):
            g["lr"] = lr
        for p in touched:
            p.grad = None


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def place_optimizer_state(optimizer: torch.optim.Optimizer, device) -> tuple[int, int]:
    """AdamW state of the parameters that train now on ``device``, of the frozen ones in CPU memory (they
    take it back when a later phase trains them). Returns (bytes on device, bytes in CPU memory). Optimizers
    other than torch's (bitsandbytes' 8-bit state) are left as they are."""
    if type(optimizer).__module__.split(".")[0] != "torch":
        return 0, 0
    on, off = 0, 0
    cpu = torch.device("cpu")
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            where = torch.device(device) if p.requires_grad else cpu
            for k, v in state.items():
                if torch.is_tensor(v) and k != "step":
                    if v.device != where:
                        state[k] = v.to(where, non_blocking=where.type != "cpu")
                    if p.requires_grad:
                        on += v.numel() * v.element_size()
                    else:
                        off += v.numel() * v.element_size()
    return on, off


class OutputNotShared(RuntimeError):
    pass


def check_shared_output(accelerator, out_dir, mode: str) -> None:
    """Preflight of ``distributed.shared_fs: check``: every rank writes a token file into ``out_dir`` and checks
    that it sees every other rank's; a node that does not would write checkpoints that no other node can resume
    from. Collective (every process calls it); a no-op for one process or ``shared_fs: local``."""
    import os
    import secrets
    import socket
    from pathlib import Path

    from accelerate.utils import broadcast_object_list, gather_object

    if accelerator.num_processes < 2 or mode != "check":
        return
    nonce = [secrets.token_hex(8) if accelerator.is_main_process else None]
    broadcast_object_list(nonce)
    root = Path(out_dir) / ".preflight"
    root.mkdir(parents=True, exist_ok=True)
    mine = root / f"{nonce[0]}-rank{accelerator.process_index}"
    mine.write_text(socket.gethostname())
    accelerator.wait_for_everyone()
    missing = [r for r in range(accelerator.num_processes) if not (root / f"{nonce[0]}-rank{r}").is_file()]
    views = gather_object([(accelerator.process_index, socket.gethostname(), missing)])
    accelerator.wait_for_everyone()
    mine.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            os.rmdir(root)
        except OSError:
            pass
    blind = [(r, host, miss) for r, host, miss in views if miss]
    if blind:
        who = "; ".join(f"rank {r} on {host} does not see the files of rank(s) {', '.join(map(str, miss))}" for r, host, miss in blind)
        raise OutputNotShared(
            f"output_dir {out_dir} is not one shared folder for all processes ({who}): checkpoints written there could not "
            "be resumed on every node. Put output_dir on a file system every node mounts (NFS, Lustre, ...), or set "
            "distributed.shared_fs: local so that each node keeps its own complete checkpoints.")


class ValidationWait:
    """Rank 0 renders the validation video alone; the other ranks wait for it here -- a barrier on a gloo group of
    its own, which gives up after ``distributed.validation_timeout_s`` -- instead of inside the next training
    collective, so that a long render never trips the collective timeout (``distributed.timeout_s``, which the
    config keeps larger). The group itself is made with the default timeout: making it is a rendezvous of all ranks,
    which must not fail because one rank reached it a little later than the others."""

    def __init__(self, accelerator, timeout_s: float):
        import torch.distributed as dist

        self.acc, self.timeout_s, self.group = accelerator, timeout_s, None
        if accelerator.num_processes > 1 and dist.is_available() and dist.is_initialized():
            self.group = dist.new_group(backend="gloo")  # collective: all ranks

    def wait(self) -> None:
        from datetime import timedelta

        import torch.distributed as dist

        if self.group is None:
            return
        try:
            opts = dist.BarrierOptions()
            opts.timeout = timedelta(seconds=self.timeout_s)  # this barrier's own timeout, not the group's
            self.group.barrier(opts).wait()
        except RuntimeError as exc:
            raise RuntimeError(f"rank {self.acc.process_index}: the validation on rank 0 took longer than "
                               f"distributed.validation_timeout_s ({self.timeout_s:g} s): raise it (and distributed.timeout_s), or "
                               f"render less (validation.frames / validation.steps) ({exc})") from exc
