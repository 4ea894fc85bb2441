"""CUDA-only trainer checks (``pytest -m cuda``; skipped without a CUDA device), run on a GPU by
``bench/gpu_train_check.sh`` (issue 26).

accelerate enables FSDP only on accelerator devices, so tests/test_trainer_distributed.py covers FSDP's
configuration, checkpoint format and merge on the CPU but never a sharded training step. Here one process on
``cuda`` (world size 1, the launcher's environment variables set by hand) trains the tiny networks with
``distributed.strategy: fsdp``: sharded checkpoints (``torch.distributed.checkpoint`` folders for the model and
the optimizer) with the merged ``model.safetensors`` beside them, a ``--resume`` that continues the run like an
uninterrupted one, and ``echomimic-train export`` writing the merged weights. One GPU gives world size 1, where
torch runs FSDP without sharding (NO_SHARD): the wrapping, the training step through FSDP's hooks, accelerate's
FSDP save / load and the merge run, but a checkpoint split over several ranks needs two GPUs (NCCL refuses two
ranks on one device).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .test_trainer_helpers import ENV, ROOT, events, rows, write_yaml

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
# the helpers' ENV sets PYTHONPATH to the checkout alone; on the GPU machine the carried wheels (/tmp/site) stay on it
RUN_ENV = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tiny: Path, data: Path, out: Path, steps: int) -> dict:
    return {
        "preset": "v1_stage1", "output_dir": str(out), "seed": 3, "cpu_threads": 2,
        "model": {"init": "echomimic", "echomimic_path": str(tiny), "weights": "v1_pose"},
        "data": {"roots": [str(data)], "width": 64, "height": 64, "num_workers": 0,
                 "audio_aug": {"noise_prob": 0.0, "gain_prob": 0.0, "shift_prob": 0.0}},
        "loss": {"spatial": {"weight": 0.1, "lpips": 0.0}},
        "optim": {"lr": 1e-3, "batch_size": 2},
        "phases": [{"name": "stage1", "steps": steps}],
        "checkpoint": {"every": 2, "keep_last": 5},
        "validation": {"every": 0},
        "log": {"every": 1, "progress": False, "tensorboard": False, "plot": False},
        "distributed": {"strategy": "fsdp"},
    }


def _fit(cfg: Path, *extra) -> subprocess.CompletedProcess:
    """``echomimic-train fit`` as rank 0 of a one-process group on the GPU (what ``accelerate launch`` or torchrun
    would set): accelerate then selects FSDP from the config's plugin."""
    env = {**RUN_ENV, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    r = subprocess.run([sys.executable, "-m", "trainer", "fit", "--config", str(cfg), *extra], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-6000:]
    return r


def _shards(folder: Path) -> dict:
    """The model tensors of a ``torch.distributed.checkpoint`` folder, read by torch's own converter."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(folder), str(folder.parent / "shards.pt"))
    state = torch.load(folder.parent / "shards.pt", map_location="cpu", weights_only=True)
    (folder.parent / "shards.pt").unlink()
    return state.get("model", state)


def test_fsdp_trains_saves_shards_resumes_and_exports(tmp_path):
    from safetensors.torch import load_file

    from echomimic_lib.modes import WEIGHT_SETS
    from echomimic_lib.tiny import make_tiny
    from trainer.checkpoint import read_meta
    from trainer.export import split_state

    from .test_trainer_latent_cache import synthetic_dataset

    tiny = tmp_path / "tiny"
    make_tiny(tiny, version="v1")
    data = synthetic_dataset(tmp_path / "ds", clips=2, frames=20, size=64)
    run, straight = tmp_path / "run", tmp_path / "straight"

    _fit(write_yaml(tmp_path / "a.yaml", _config(tiny, data, run, 2)))
    assert events(run, "start")[-1]["distributed"] == "FSDP"
    ck2 = run / "checkpoints" / "step-00000002"
    found = {p.name for p in ck2.iterdir()}
    assert {"model.safetensors", "meta.json"} <= found, found
    merged2 = load_file(str(ck2 / "model.safetensors"))
    # torch runs FSDP as NO_SHARD at world size 1 (and warns that sharded state dicts come back full); accelerate
    # still writes its torch.distributed.checkpoint folders: when there, the merged file holds exactly their tensors
    if "pytorch_model_fsdp_0" in found:
        assert any(n.startswith("optimizer_") and (ck2 / n).is_dir() for n in found), found
        shards = _shards(ck2 / "pytorch_model_fsdp_0")
        assert merged2.keys() == shards.keys() and all(torch.equal(merged2[k], shards[k].cpu()) for k in merged2)
    print("checkpoint files at world size 1:", sorted(found))  # the GPU log records which form it was
    names = set(read_meta(ck2)["param_names"])  # the network's own parameter names, no FSDP wrapper prefixes
    assert names <= merged2.keys() and not any("_fsdp" in k or "flat_param" in k for k in merged2)

    _fit(write_yaml(tmp_path / "b.yaml", _config(tiny, data, run, 4)), "--resume")
    ck4 = run / "checkpoints" / "step-00000004"
    assert events(run, "start")[-1]["resumed_from"].endswith("step-00000002")
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(r["loss/total"])) for r in rows(run))
    merged4 = load_file(str(ck4 / "model.safetensors"))
    _fit(write_yaml(tmp_path / "c.yaml", _config(tiny, data, straight, 4)))  # the same 4 steps without a break
    plain4 = load_file(str(straight / "checkpoints" / "step-00000004" / "model.safetensors"))
    moved = max(float((merged4[k] - merged2[k]).abs().max()) for k in names)
    apart = max(float((merged4[k] - plain4[k]).abs().max()) for k in names)
    assert moved > 0 and apart <= 0.05 * moved, (apart, moved)  # model, optimizer and data order carried over

    out = tmp_path / "export"
    r = subprocess.run([sys.executable, "-m", "trainer", "export", str(run), str(out), "--format", "safetensors"], cwd=ROOT, env=RUN_ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    files = WEIGHT_SETS["v1_pose"].files("normal")
    parts = split_state(merged4)
    for comp, key in (("reference", "reference"), ("denoiser", "denoiser"), ("cond", "cond")):
        written = load_file(str(out / f"{files[key]}.safetensors"))
        assert written.keys() == parts[comp].keys() and all(torch.equal(written[k], parts[comp][k].float()) for k in written), comp
