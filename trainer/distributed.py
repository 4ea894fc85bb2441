"""The trained network and its optimizer, prepared by accelerate for the current phase's trainable set.

DistributedDataParallel registers the parameters that require gradients when it is built, so a phase that
trains another set (APDH's muted-audio phases, the motion-only temporal phase, a LoRA run's adapters) needs a
new wrapper. This goes through accelerate's public API only: ``unwrap_model(..., keep_fp32_wrapper=False)``
takes the mixed-precision forward off the network, ``free_memory()`` drops the previously prepared model and
optimizer (so ``save_state`` writes exactly one of each), and ``prepare_model`` / ``prepare_optimizer`` wrap
them again. The optimizer's state survives (the same ``torch.optim`` object is re-wrapped). Consecutive phases
with the same trainable set keep their wrapper.

Anything that changes which parameters train -- :func:`trainer.net.set_trainable`, adapter injection -- must
happen before :meth:`PhaseModel.enter`, which then wraps for exactly that set.

DeepSpeed cannot change the trainable set of an engine: a run whose phases train different sets is refused
there at the first change (train one phase per run and ``--resume``).
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
        if self.acc.distributed_type == DistributedType.DEEPSPEED:
            if self.model is not None:
                raise RuntimeError("DeepSpeed cannot change the trainable parameters inside one run: train each phase in its "
                                   "own run (--resume from the previous phase's checkpoint)")
            self.model, self.optimizer = self.acc.prepare(self.net, self.raw_optimizer)
        else:
            if self.model is not None:
                old, self.model, self.optimizer = self.model, None, None
                self.acc.unwrap_model(old, keep_fp32_wrapper=False)
                del old  # the old DDP wrapper (and its gradient hooks) must be gone before the next backward:
                self.acc.free_memory()  # free_memory drops accelerate's references and runs the garbage collector
            self.model = self.acc.prepare_model(self.net)
            self.optimizer = self.acc.prepare_optimizer(self.raw_optimizer)
        self._trainable = names
        self.wraps += 1
