"""CUDA-only checks of EchoMimicV3 LoRA training (``pytest -m cuda``; skipped without a CUDA device), run on a GPU by
``bench/gpu_train_check.sh``: the tiny V3 set in bf16 mixed precision on ``cuda`` (frozen base in bf16, adapters and
AdamW state in float32, gradient checkpointing), finite losses, a resume that continues the run (within bf16 kernel
nondeterminism rather than bit for bit), a validation clip, and the exported LoRA read back by the inference."""
from __future__ import annotations

import json

import pytest
import torch

from tests.test_v3_train import DATA, SIZE, config, dataset, tiny_v3  # noqa: F401  (tiny_v3 is a fixture)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide mixed precision: these runs use bf16, others in the process float32."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_bf16_lora_run_on_cuda_trains_resumes_validates_and_exports(tiny_v3, tmp_path, fresh_accelerate_state):  # noqa: F811
    from safetensors.torch import load_file

    from echomimic_lib.lora.wan_files import read_wan_lora
    from trainer.cli import main as train_main
    from trainer.v3.loop import fit_v3

    data = dataset(tmp_path / "data")
    val = [f"validation.reference={DATA / 'images' / 'portrait_a.png'}", f"validation.audio={DATA / 'audio' / 'echomimic_en.wav'}",
           "validation.frames=5", "validation.steps=2"]
    whole = config(tiny_v3, data, tmp_path / "whole", "mixed_precision=bf16", *val)
    assert fit_v3(whole)["step"] == 4
    log = [json.loads(line) for line in (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert sorted(p.name for p in (tmp_path / "whole" / "samples").glob("*.mp4")) == ["step-00000002.mp4", "step-00000004.mp4"]
    final = load_file(str(tmp_path / "whole" / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert final and all(v.dtype == torch.float32 for v in final.values())  # adapters trained in float32

    part = config(tiny_v3, data, tmp_path / "part", "mixed_precision=bf16")
    fit_v3(part, stop_after=2)
    fit_v3(part, resume=True)
    resumed = load_file(str(tmp_path / "part" / "checkpoints" / "step-00000004" / "model.safetensors"))
    for k in final:
        torch.testing.assert_close(resumed[k], final[k], atol=2e-3, rtol=2e-2)

    dest = tmp_path / "me.safetensors"
    assert train_main(["v3-export", str(tmp_path / "whole"), str(dest)]) == 0
    assert read_wan_lora(dest).keys
