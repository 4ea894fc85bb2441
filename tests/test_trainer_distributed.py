"""Several GPUs / nodes: the Accelerator's settings, the frozen optimizer state off the device, FSDP's plugin and
sharded checkpoints (merged into full weights; the resume check reads their index safely), and two CPU
processes (gloo) playing two nodes with separate output folders: refused by the preflight, or each node keeping
its own complete checkpoints and resuming from them, with validation on rank 0 bounded by its own timeout.

accelerate enables FSDP only for accelerator devices (CUDA, XPU, NPU ...), not for CPU processes: here the FSDP
tests cover its configuration, checkpoint format and merge; tests/test_trainer_fsdp_cpu.py forces FSDP's path onto
two CPU processes for a sharded training run, and tests/test_cuda_train.py runs it on a GPU.
"""
from __future__ import annotations

import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.config import ConfigError

from .test_trainer_helpers import ENV, ROOT, events, shared_dir, v1_config, write_yaml


def test_optimizer_state_of_frozen_parameters_waits_in_cpu_memory():
    from trainer.distributed import place_optimizer_state

    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(8))
    opt = torch.optim.AdamW([a, b], lr=0.1)
    (a.sum() + b.sum()).backward()
    opt.step()
    b.requires_grad_(False)  # a phase that freezes b
    on, off = place_optimizer_state(opt, torch.device("meta"))  # "meta" stands for the GPU here
    assert {v.device.type for k, v in opt.state[a].items() if k != "step"} == {"meta"}
    assert {v.device.type for k, v in opt.state[b].items() if k != "step"} == {"cpu"}
    assert (on, off) == (2 * 4 * 4, 2 * 8 * 4)  # exp_avg + exp_avg_sq, float32


def test_accelerator_settings_from_the_config():
    from accelerate.utils import InitProcessGroupKwargs

    from trainer.distributed import accelerator_kwargs
    from trainer.plan import load_plan_config

    cfg = load_plan_config(preset="v1_stage1", overrides=["distributed.timeout_s=4000", "distributed.shared_fs=local"])
    kw = accelerator_kwargs(cfg)
    (init,) = [h for h in kw["kwargs_handlers"] if isinstance(h, InitProcessGroupKwargs)]
    assert init.timeout.total_seconds() == 4000 and kw["project_config"].save_on_each_node and "fsdp_plugin" not in kw
    kw = accelerator_kwargs(load_plan_config(preset="v1_stage1", overrides=["distributed.strategy=fsdp"]))
    assert not kw["project_config"].save_on_each_node
    plugin = kw["fsdp_plugin"]
    assert "SHARDED_STATE_DICT" in str(plugin.state_dict_type) and plugin.use_orig_params
    from echomimic_lib.config import TINY
    from echomimic_lib.models.unet import EchoUNet

    from diffusers.models.resnet import ResnetBlock2D

    from echomimic_lib.models.unet.motion import MotionModule

    unet = EchoUNet(TINY, "denoiser", motion=True)
    wrapped = [m for m in unet.modules() if plugin.auto_wrap_policy(module=m, recurse=False, nonwrapped_numel=0)]
    resnets = [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    motion = [m for m in unet.modules() if isinstance(m, MotionModule)]
    # one shard unit per ResNet layer and motion module; blocks, attention and the rest stay in the root unit
    # (trainer/distributed.py says why: the reference bank and prepare_reference use attention outside a block's forward)
    assert resnets and motion and {id(m) for m in wrapped} == {id(m) for m in resnets + motion}


@pytest.mark.parametrize("over, msg", [
    (["distributed.strategy=zero"], "distributed.strategy"),
    (["distributed.strategy=fsdp", "distributed.shared_fs=local"], "sharded checkpoints need one output_dir"),
    (["distributed.validation_timeout_s=2000"], "validation_timeout_s must be below"),
    (["memory.checkpointing=module"], "memory.checkpointing")])
def test_distributed_settings_are_checked(over, msg):
    from trainer.plan import load_plan_config

    with pytest.raises(ConfigError, match=msg):
        load_plan_config(preset="v1_stage1", overrides=over)


def test_sharded_checkpoint_merges_into_full_weights_and_passes_the_resume_check(tmp_path):
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    from trainer.checkpoint import _merge_fsdp_model
    from trainer.safe_resume import UnsafeCheckpointError, check_checkpoint

    state = {"denoiser.conv_in.weight": torch.randn(8, 4, 3, 3), "reference.conv_in.bias": torch.randn(8).bfloat16()}
    ckpt = tmp_path / "step"
    with pytest.warns(UserWarning):  # one process: torch.distributed.checkpoint says it saves without a group
        dcp.save({"model": dict(state)}, checkpoint_id=str(ckpt / "pytorch_model_fsdp_0"))
    _merge_fsdp_model(ckpt)
    merged = load_file(str(ckpt / "model.safetensors"))
    assert merged.keys() == state.keys() and all(torch.equal(merged[k], state[k]) for k in state)
    checked = {p.name for p in check_checkpoint(ckpt)}
    assert ".metadata" in checked  # the index is read (safely); the .distcp shards are raw bytes

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (ckpt / "pytorch_model_fsdp_0" / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        check_checkpoint(ckpt)


# ---- two CPU processes as two nodes (each its own working folder: output_dir "run" is not shared) ----

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(tmp_path: Path, cfg: Path, *extra, timeout: int = 600) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    procs = []
    for rank in (0, 1):
        node = tmp_path / f"node{rank}"
        node.mkdir(exist_ok=True)
        env = {**ENV, "CUDA_VISIBLE_DEVICES": "", "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen([sys.executable, "-m", "trainer", "fit", "--config", str(cfg), *extra], cwd=node, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        so, se = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, so, se))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_dir(tmp_path_factory)


def _cfg(base, tmp_path, name, steps, **extra):
    return write_yaml(tmp_path / f"{name}.yaml", v1_config(base, Path("run"), steps=steps, checkpoint={"every": 1, "keep_last": 5},
                                                           optim={"batch_size": 1}, **extra))


def test_two_nodes_without_a_shared_output_dir_are_refused_with_the_fix(base, tmp_path):
    r = _two_nodes(tmp_path, _cfg(base, tmp_path, "check", 2))
    for x in r:
        assert x.returncode != 0
    err = r[0].stderr + r[1].stderr
    assert "is not one shared folder for all processes" in err and "distributed.shared_fs: local" in err, err[-3000:]
    assert not (tmp_path / "node0" / "run" / "checkpoints").exists()  # refused before anything was trained


def test_two_nodes_keep_their_own_checkpoints_and_resume_from_them(base, tmp_path):
    """shared_fs: local: each node's first process writes complete checkpoints (model, optimizer, scheduler, train
    state, its RNG states, meta.json) into its own folder; both resume from them; validation renders on rank 0
    while rank 1 waits for it (within validation_timeout_s)."""
    over = {"distributed": {"shared_fs": "local", "validation_timeout_s": 600}, "validation": {"every": 2, "steps": 1, "frames": 2}}
    cfg = _cfg(base, tmp_path, "local", 2, **over)
    r = _two_nodes(tmp_path, cfg)
    assert all(x.returncode == 0 for x in r), r[0].stderr[-3000:] + r[1].stderr[-3000:]
    for rank in (0, 1):
        ck = tmp_path / f"node{rank}" / "run" / "checkpoints" / "step-00000002"
        names = {p.name for p in ck.iterdir()}
        assert {"meta.json", "model.safetensors", "optimizer.bin", f"random_states_{rank}.pkl"} <= names, names
    assert any((tmp_path / "node0" / "run" / "validation").iterdir())
    assert events(tmp_path / "node0" / "run", "checkpoint")[-1]["ranks_consistent"]
    longer = _cfg(base, tmp_path, "local", 3, **over)
    r = _two_nodes(tmp_path, longer, "--resume")
    assert all(x.returncode == 0 for x in r), r[0].stderr[-3000:] + r[1].stderr[-3000:]
    assert all((tmp_path / f"node{k}" / "run" / "checkpoints" / "step-00000003" / "meta.json").is_file() for k in (0, 1))
    assert events(tmp_path / "node0" / "run", "start")[-1]["resumed_from"].endswith("step-00000002")


def test_a_validation_longer_than_its_timeout_stops_the_waiting_rank_with_the_fix(base, tmp_path):
    over = {"distributed": {"shared_fs": "local", "validation_timeout_s": 0.05}, "validation": {"every": 1, "steps": 2, "frames": 2}}
    r = _two_nodes(tmp_path, _cfg(base, tmp_path, "slowval", 2, **over), timeout=600)
    assert r[1].returncode != 0
    assert "took longer than distributed.validation_timeout_s (0.05 s)" in r[1].stderr, r[1].stderr[-3000:]
