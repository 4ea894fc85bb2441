"""A resumed run's optimizer.bin has the uninterrupted run's bytes, also when parameters first train after the resume
point: the loaded state's key strings are interned (trainer.checkpoint.intern_state_keys), so pickle writes them as
it writes the keys of a parameter stepped for the first time."""
from __future__ import annotations

import io
import shutil

import pytest
import torch

from tests.test_trainer_helpers import shared_dir, v1_config, write_yaml


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_dir(tmp_path_factory)


def _adamw_bytes(resume: bool, intern: bool) -> bytes:
    from trainer.checkpoint import intern_state_keys

    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([a, b], lr=0.1)

    def step(params):
        opt.zero_grad(set_to_none=True)
        sum((p ** 2).sum() for p in params).backward()
        opt.step()

    step([a])  # b has no state yet (a later phase trains it)
    if resume:
        buf = io.BytesIO()
        torch.save(opt.state_dict(), buf)
        buf.seek(0)
        opt = torch.optim.AdamW([a, b], lr=0.1)
        opt.load_state_dict(torch.load(buf, weights_only=True))
        if intern:
            intern_state_keys(opt)
    step([a, b])
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    return buf.getvalue()


def test_interned_keys_give_the_uninterrupted_bytes():
    whole = _adamw_bytes(resume=False, intern=False)
    assert _adamw_bytes(resume=True, intern=False) != whole  # unpickled and new key strings: pickled apart
    assert _adamw_bytes(resume=True, intern=True) == whole


def test_resume_before_a_phase_that_trains_new_parameters_writes_the_same_optimizer_bytes(base, tmp_path):
    from trainer.config_file import load_config
    from trainer.loop import fit

    def cfg(out):  # stage 1 (1 step) -> stage 2 (motion modules only, 2 steps); resumed after step 1
        return load_config(write_yaml(tmp_path / f"{out.name}.yaml", v1_config(
            base, out, optim={"batch_size": 1}, model={"motion_init": "random"}, checkpoint={"every": 1, "keep_last": 5},
            phases=[{"name": "stage1", "steps": 1}, {"name": "stage2", "steps": 2, "kind": "temporal", "frames": 2, "train": ["motion"]}])))

    run, cut = tmp_path / "run", tmp_path / "cut"
    fit(cfg(run))
    shutil.copytree(run / "checkpoints" / "step-00000001", cut / "checkpoints" / "step-00000001")
    fit(cfg(cut), resume=True)
    for name in ("optimizer.bin", "model.safetensors"):
        assert (run / "checkpoints" / "step-00000003" / name).read_bytes() == (cut / "checkpoints" / "step-00000003" / name).read_bytes(), name
