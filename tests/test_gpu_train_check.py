"""The trainer's GPU check (``bench/gpu_train_check.sh``, issue 26) is never what fails on the GPU: its
``--dry-run`` runs each step here on the CPU (the FSDP test collects and skips, the plan-vs-measured bench and the V3
LoRA step's computed-vs-measured memory run at tiny size) and each step's record comes back; the bench's synthetic
batch is what the real dataset delivers."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_train_plan", ROOT / "bench" / "gpu_train_plan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU stand-in of the GPU run")
def test_gpu_train_check_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_train_check.sh"), "--dry-run", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    logs = {p.name: p.read_text()[-3000:] for p in out.glob("*.log")}
    assert [s["step"] for s in steps] == ["fsdp", "plan", "v3"], proc.stdout
    assert all(s["rc"] == 0 for s in steps), (steps, logs)
    assert proc.returncode == 0
    fsdp = logs["fsdp.log"]  # the FSDP and V3 LoRA tests are collected, selected by -k, and skip without CUDA
    assert "test_fsdp_trains_saves_shards_resumes_and_exports SKIPPED" in fsdp and "failed" not in fsdp
    assert "test_bf16_lora_run_on_cuda_trains_resumes_validates_and_exports SKIPPED" in fsdp and "2 skipped" in fsdp
    rows = [json.loads(x) for x in (out / "train_plan.jsonl").read_text().splitlines()]
    assert [(r["preset"], r["phase"], r["batch"]) for r in rows] == [("v1_stage2", "stage2", 1), ("v2_apdh", "4", 1)]
    for r in rows:
        assert "error" not in r, r.get("error")
        assert r["dry_run"] and r["device"] == "cpu" and r["size"] == [64, 64] and r["frames"] == 4
        assert r["plan_gib"] > r["plan_without_context_gib"] > 0 and r["measured_gib"] > 0
        assert r["ratio"] == pytest.approx(r["plan_gib"] / r["measured_gib"], rel=1e-2)
        assert len(r["losses"]) == 3 and all(math.isfinite(x) for x in r["losses"]) and r["trainable_M"] > 0
    assert rows[1]["mixed_precision"] == "bf16" and rows[1]["checkpointing"] == "layer"  # V2's memory settings hold
    v3 = [json.loads(x) for x in (out / "v3_train.jsonl").read_text().splitlines()]
    assert [(r["frames"], r["size"], r["checkpointing"]) for r in v3] == [(9, 32, True)], logs.get("v3.log")
    (r,) = v3
    assert "error" not in r, r.get("error")
    assert r["preset"] == "tiny" and r["device"] == "cpu" and r["gpu"] is None
    # the tiny step computed on fake tensors and run for real on the CPU, both counted by the allocation tracker
    assert r["measured_bytes"] > 0 and abs(r["measured_bytes"] - r["computed_bytes"]) <= 4 * 512
    assert len(r["losses"]) == 3 and all(math.isfinite(x) for x in r["losses"]) and r["s_per_step"] > 0


def test_the_benchmarks_synthetic_batch_is_what_the_dataset_delivers(tmp_path):
    """Keys, shapes and dtypes of bench/gpu_train_plan.py's batch equal the real loader's for the same config."""
    from echomimic_lib.config import TINY
    from trainer.data.dataset import build_pools, make_loader

    from .test_trainer_latent_cache import synthetic_dataset

    bench = _bench()
    cfg, phase = bench.case_config("v1_stage2", 2, dry=True)
    cfg.data.roots = [str(synthetic_dataset(tmp_path / "ds", clips=2, frames=12, size=64))]
    cfg.data.num_workers, cfg.validation.every = 0, 0
    cfg.data.audio_aug.noise_prob = cfg.data.audio_aug.gain_prob = cfg.data.audio_aug.shift_prob = 0.0
    cfg.phases = [phase]
    real = next(iter(make_loader(cfg, build_pools(cfg, 0, 1), 0, 0, None)))
    fake = bench.synthetic_batch(cfg, phase, 2, TINY.audio_dim, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert fake.keys() == real.keys()
    assert {k: (tuple(v.shape), v.dtype) for k, v in fake.items()} == {k: (tuple(v.shape), v.dtype) for k, v in real.items()}
