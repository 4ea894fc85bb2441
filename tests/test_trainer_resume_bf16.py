"""Exact resume with bf16 autocast (the ``v2_apdh`` preset's mixed precision) on the CPU, across a phase change.

A single process keeps accelerate's mixed-precision forward (autocast, float32 outputs) when a phase changes the
trainable set (:class:`trainer.distributed.PhaseModel`). Taken off and not put back, the model returned bf16
predictions in every phase after the first change while a run resumed there returned float32 ones: the two
loss terms that read the prediction (latent and decoded-image) then reached the network as two gradients
rounded to bf16 and summed, instead of one float32 sum rounded once, and the resumed run drifted from the
uninterrupted one (docs/training.md, "Training machinery")."""
from __future__ import annotations

import shutil

import pytest
import torch

from tests.test_trainer_helpers import load_ckpt, rows, shared_dir, v1_config, write_yaml
from tests.test_trainer_v1 import fresh_accelerate_state  # noqa: F401  (a fixture: accelerate's state reset around the test)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_dir(tmp_path_factory)


class _Two(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.b(self.a(x))


def test_a_phase_change_keeps_the_mixed_precision_forward(fresh_accelerate_state):
    from accelerate import Accelerator

    from trainer.distributed import PhaseModel

    acc = Accelerator(cpu=True, mixed_precision="bf16")
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))

    def enter(pm, train_b):
        pm.net.b.requires_grad_(train_b)
        pm.enter()
        with acc.autocast():
            return pm.model(x)

    torch.manual_seed(1)
    net = _Two()
    pm = PhaseModel(acc, net, torch.optim.AdamW(net.parameters()))
    first = enter(pm, False)
    changed = enter(pm, True)  # the trainable set changes: the model is prepared again
    assert pm.wraps == 2 and pm.model is net
    torch.manual_seed(1)
    fresh_net = _Two()  # a run started (or resumed) in the second phase
    fresh = enter(PhaseModel(acc, fresh_net, torch.optim.AdamW(fresh_net.parameters())), True)
    assert first.dtype == changed.dtype == fresh.dtype == torch.float32  # accelerate's outputs in float32, every phase
    assert torch.equal(changed, fresh)


def test_bf16_resume_after_a_phase_change_is_exact(base, tmp_path, fresh_accelerate_state):
    """stage 1 (1 step) -> stage 2 (motion modules only, 2 steps) in bf16; the checkpoint after step 2 lies after
    the change, and the run resumed from it ends bitwise where the uninterrupted one ends."""
    from trainer.config_file import load_config
    from trainer.loop import fit

    def cfg(out):
        return load_config(write_yaml(tmp_path / f"{out.name}.yaml", v1_config(
            base, out, mixed_precision="bf16", optim={"batch_size": 1}, model={"motion_init": "random"},
            ema={"enabled": True, "decay": 0.5}, checkpoint={"every": 2, "keep_last": 5},
            phases=[{"name": "stage1", "steps": 1}, {"name": "stage2", "steps": 2, "kind": "temporal", "frames": 2, "train": ["motion"]}])))

    run, cut = tmp_path / "run", tmp_path / "cut"
    fit(cfg(run))
    shutil.copytree(run / "checkpoints" / "step-00000002", cut / "checkpoints" / "step-00000002")
    fit(cfg(cut), resume=True)
    final, resumed = run / "checkpoints" / "step-00000003", cut / "checkpoints" / "step-00000003"
    assert rows(cut)[-1]["grad_norm"] == rows(run)[-1]["grad_norm"]  # the first resumed step's gradients
    for name in ("model.safetensors", "custom_checkpoint_2.pkl"):  # weights, EMA
        assert (final / name).read_bytes() == (resumed / name).read_bytes(), name
    before, after = load_ckpt(run / "checkpoints" / "step-00000002"), load_ckpt(final)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all("motion_modules." in k for k in moved)  # the compared step trained (stage 2)
