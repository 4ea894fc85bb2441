"""v3_scheduler: Flow-UniPC sigmas, int64 timesteps and every step's sample on recorded model outputs."""
from __future__ import annotations

import torch

from echomimic_lib.pipeline.wan.scheduler import flow_unipc

from ._common import ParityCase, assert_close, assert_equal


def run(case: ParityCase) -> None:
    inp = case.torch_tensors("inputs.safetensors")
    exp = case.torch_tensors("expected.safetensors")
    runs = case.settings["runs"]
    assert runs, "no runs in the manifest"
    for r, spec in enumerate(runs):
        sched = flow_unipc(spec["num_inference_steps"], spec["shift"])
        assert_close(f"run{r}_sigmas", sched.sigmas, exp[f"run{r}_sigmas"], case.tolerance("runI_sigmas", 1e-7))
        assert sched.timesteps.dtype == torch.int64
        assert_equal(f"run{r}_timesteps", sched.timesteps, exp[f"run{r}_timesteps"])
        sample = inp[f"run{r}_initial_sample"]
        for i, t in enumerate(sched.timesteps):
            sample = sched.step(inp[f"run{r}_model_output_{i}"], t, sample).prev_sample
            assert_close(f"run{r}_latents_{i}", sample, exp[f"run{r}_latents_{i}"], case.tolerance("runI_latents_i", 1e-5))
