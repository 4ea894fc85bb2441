"""v3_transformer_forward: the flash-pro DiT (base + V3 file through our strict loader) on the fixture's
inputs, audio and zero-audio passes at each timestep, plus the recorded intermediates of the t0 calls."""
from __future__ import annotations

import torch

from ._common import ParityCase, assert_close
from ._v3 import load_transformer


def run(case: ParityCase) -> None:
    model, report = load_transformer(case)
    assert report.from_v3, "nothing was read from the V3 file"
    inp = case.torch_tensors("inputs.safetensors")
    exp = case.torch_tensors("expected.safetensors")
    inter = case.torch_tensors("intermediates.safetensors")
    tol_pred, tol_int = case.tolerance("pred_*", 5e-5), case.tolerance("intermediates", 1e-4)
    steps = [k for k in sorted(inp) if k.startswith("timestep_")]
    assert steps, "no timestep_* inputs"
    for k in steps:
        i = k.split("_")[1]
        for tag, audio in (("cond", inp["audio_windows"]), ("uncond", torch.zeros_like(inp["audio_windows"]))):
            seen = {}
            with torch.no_grad():
                pred = model(inp["latents"], inp[k], inp["context"], inp["clip_fea"], inp["y"], audio_windows=audio,
                             trace=lambda name, v: seen.__setitem__(name, v))
            assert_close(f"pred_t{i}_{tag}", pred, exp[f"pred_t{i}_{tag}"], tol_pred)
            prefix = f"t{i}_{tag}."
            for name, value in inter.items():
                if name.startswith(prefix):
                    got = seen.get(name[len(prefix):])
                    assert got is not None, f"intermediate {name} not produced"
                    assert_close(name, got, value, tol_int)
