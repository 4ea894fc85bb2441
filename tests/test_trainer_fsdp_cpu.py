"""FSDP training on the CPU: two gloo processes with accelerate's FSDP path forced (``tests/_fsdp_cpu.py``; accelerate
itself enables FSDP only on accelerator devices). The tiny networks train FULL_SHARD with the trainer's shard units,
write sharded checkpoints whose merged ``model.safetensors`` holds exactly the shards' tensors, resume to the same
weights as an uninterrupted run, and export the merged weights. This found three bugs that no GPU had shown: UNet
blocks as shard units broke the backward (the reference bank), a resume dropped the AdamW moments, and the merge on
the main process alone left the ranks a barrier apart (trainer/distributed.py, trainer/checkpoint.py).
The same flow runs on a GPU in tests/test_cuda_train.py."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .test_cuda_train import RUN_ENV, _config, _shards
from .test_trainer_helpers import ROOT, events, rows, write_yaml

pytestmark = pytest.mark.slow


def _two_ranks(cfg: Path, *extra) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {**RUN_ENV, "CUDA_VISIBLE_DEVICES": "", "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "_fsdp_cpu.py"), "fit", "--config", str(cfg), *extra],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), out[0][1][-4000:] + out[1][1][-4000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU stand-in; on a GPU tests/test_cuda_train.py runs")
def test_fsdp_on_two_cpu_processes_shards_resumes_and_exports(tmp_path, tmp_path_factory):
    from safetensors.torch import load_file

    from echomimic_lib.modes import WEIGHT_SETS
    from trainer.checkpoint import read_meta
    from trainer.export import split_state

    from .test_trainer_latent_cache import synthetic_dataset

    from tests._tiny_shared import tiny_v1_copy

    tiny = tiny_v1_copy(tmp_path_factory, tmp_path / "tiny")
    data = synthetic_dataset(tmp_path / "ds", clips=2, frames=20, size=64)
    run, straight = tmp_path / "run", tmp_path / "straight"
    # one uninterrupted run of 4 steps; its step-2 checkpoint (written by the same save as a run's last one) is what a
    # second run resumes from into its own folder, so three two-process launches became two
    _two_ranks(write_yaml(tmp_path / "c.yaml", _config(tiny, data, straight, 4)))
    assert events(straight, "start")[-1]["distributed"] == "FSDP" and events(straight, "start")[-1]["processes"] == 2
    ck2 = straight / "checkpoints" / "step-00000002"
    merged2 = load_file(str(ck2 / "model.safetensors"))
    names = set(read_meta(ck2)["param_names"])
    for ck in (ck2, straight / "checkpoints" / "step-00000004"):
        found = {p.name for p in ck.iterdir()}
        assert {"pytorch_model_fsdp_0", "optimizer_0", "model.safetensors", "random_states_1.pkl"} <= found, found
        assert len(list((ck / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2  # one shard file per rank
        merged = load_file(str(ck / "model.safetensors"))
        shards = _shards(ck / "pytorch_model_fsdp_0")
        assert merged.keys() == shards.keys() and all(torch.equal(merged[k], shards[k]) for k in merged)
        assert names <= merged.keys()

    _two_ranks(write_yaml(tmp_path / "b.yaml", _config(tiny, data, run, 4)), "--resume", str(ck2))
    assert events(run, "start")[-1]["resumed_from"].endswith("step-00000002")
    assert events(run, "start")[-1]["distributed"] == "FSDP" and events(run, "start")[-1]["processes"] == 2
    assert [r["step"] for r in rows(run)] == [3, 4]  # went on after step 2
    merged4 = load_file(str(run / "checkpoints" / "step-00000004" / "model.safetensors"))
    plain4 = load_file(str(straight / "checkpoints" / "step-00000004" / "model.safetensors"))
    moved = max(float((merged4[k] - merged2[k]).abs().max()) for k in names)
    apart = max(float((merged4[k] - plain4[k]).abs().max()) for k in names)
    assert moved > 0 and apart <= 1e-6, (apart, moved)  # weights, AdamW moments, scheduler and data order carried over

    out = tmp_path / "export"
    r = subprocess.run([sys.executable, "-m", "trainer", "export", str(run), str(out), "--format", "safetensors"], cwd=ROOT,
                       env=RUN_ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    files, parts = WEIGHT_SETS["v1_pose"].files("normal"), split_state(merged4)
    for key in ("reference", "denoiser", "cond"):
        written = load_file(str(out / f"{files[key]}.safetensors"))
        assert written.keys() == parts[key].keys() and all(torch.equal(written[k], parts[key][k].float()) for k in written), key
