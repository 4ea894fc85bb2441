"""``python tests/_fsdp_cpu.py fit --config ...``: ``echomimic-train`` with accelerate's FSDP path forced onto CPU
processes (gloo), for tests/test_trainer_fsdp_cpu.py. accelerate selects FSDP only on accelerator devices; torch's
FSDP (version 1) itself runs on the CPU. Two things are bent, both test-only: the Accelerator reports FSDP when it
was given the plugin, and FSDP's compute-device check accepts the CPU ("cpu" vs "cpu:0")."""
from __future__ import annotations

import runpy
import sys

import torch


def main() -> None:
    import accelerate
    import torch.distributed.fsdp._init_utils as fsdp_init
    from accelerate.utils import DistributedType

    class Accelerator(accelerate.Accelerator):
        def __init__(self, *args, fsdp_plugin=None, **kwargs):
            super().__init__(*args, **kwargs)
            self._forced_fsdp = fsdp_plugin
            if fsdp_plugin is not None:
                self.state.fsdp_plugin = fsdp_plugin

        @property
        def distributed_type(self):
            return DistributedType.FSDP if getattr(self, "_forced_fsdp", None) is not None else self.state.distributed_type

        @property
        def is_fsdp2(self):
            return False

    accelerate.Accelerator = Accelerator
    fsdp_init._get_compute_device = lambda *a, **k: torch.device("cpu")
    sys.argv = ["trainer", *sys.argv[1:]]
    runpy.run_module("trainer", run_name="__main__")


if __name__ == "__main__":
    main()
