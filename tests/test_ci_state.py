"""Process state the test suite gives back after every test (tests/conftest.py), so that what a test sees does not
depend on the tests that ran before it in the same process.

torch's intra-op thread count: ``trainer.loop.fit`` sets ``cfg.cpu_threads`` for the whole process (the trainer test
configs set 1), and a test may set it itself. Every test starts with ``ECHOMIMIC_TEST_TORCH_THREADS`` (default 1: the
tests run tiny models, whose microsecond ops only wait on each other's thread barrier with more threads)."""
from __future__ import annotations

import os

import torch

from tests.test_nodes import models  # noqa: F401  (the tiny ComfyUI models fixture)

TEST_TORCH_THREADS = int(os.environ.get("ECHOMIMIC_TEST_TORCH_THREADS", "1"))  # tests/conftest.py's

OTHER = TEST_TORCH_THREADS + 1


def test_a_test_starts_with_the_suites_torch_thread_count():
    assert torch.get_num_threads() == TEST_TORCH_THREADS


def test_a_test_that_changes_the_thread_count():
    torch.set_num_threads(OTHER)  # as trainer.loop.fit does with cfg.cpu_threads, never set back
    assert torch.get_num_threads() == OTHER


def test_the_next_test_gets_the_suites_count_back():
    assert torch.get_num_threads() == TEST_TORCH_THREADS


def test_fit_with_cpu_threads_leaves_the_next_test_the_suites_count(tmp_path):
    """The real leak: a trainer config's ``cpu_threads`` is applied to the process by fit (before anything is built;
    here it stops at the missing SD config it checks first)."""
    import pytest

    from tests.test_trainer_helpers import write_yaml
    from trainer.config_file import load_config
    from trainer.loop import fit

    cfg = load_config(write_yaml(tmp_path / "c.yaml", {"preset": "v1_stage1", "output_dir": str(tmp_path / "out"),
                                                       "cpu_threads": OTHER,
                                                       "model": {"init": "sd", "sd_path": str(tmp_path / "no-sd")}}))
    with pytest.raises(Exception):
        fit(cfg)
    assert torch.get_num_threads() == OTHER


def test_and_the_test_after_fit_gets_the_suites_count_back():
    assert torch.get_num_threads() == TEST_TORCH_THREADS


# ---------------------------------------------------------------------------------- the LoRA stand-in and Dynamo
def test_the_node_loaders_networks_need_no_grad_like_comfyuis_patched_weights(models, monkeypatch):  # noqa: F811
    """ComfyUI's ``comfy.utils.set_attr_param`` (which the stand-in's ``_set_param`` copies) puts a LoRA-patched weight
    back as ``Parameter(..., requires_grad=False)``. The loader left its networks' parameters requiring grad, so a
    patched network mixed both, and a compiled one recompiled on the first patched run and again after unpatching
    (Dynamo guards on requires_grad). The loader's networks are inference only: none needs grad, patched or not."""
    from tests._pack import load_pack, sub
    from tests.test_lora_nodes import _adapter_file
    from tests.test_nodes import encode, loader, sample

    C = sub("nodes.comfy_bridge")
    monkeypatch.setattr(C, "MODELS_DIR", models)
    handle = loader("V1 audio", dtype="fp32")
    nets = {"reference": handle.models.reference, "denoiser": handle.models.denoiser}
    assert not [n for name, net in nets.items() for n, p in net.named_parameters() if p.requires_grad]
    path = models / "echomimic" / "loras" / "ci_state.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    _adapter_file(path, handle.models, seed=3, gain=0.5)
    monkeypatch.setattr(C, "offload_frees_memory", lambda: False)  # --cpu: the patched weights stay in the networks
    (patched,) = load_pack().NODE_CLASS_MAPPINGS["EchoMimicLora"]().execute(handle, path.name, 1.0)
    before = {n: p for n, p in handle.models.denoiser.named_parameters()}
    C.MODEL_MANAGER.reset()
    try:
        sample(patched, torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0)), encode(patched)[0], length=4)
        now = dict(handle.models.denoiser.named_parameters())
        assert any(now[n] is not p for n, p in before.items())  # weights patched (parameters replaced)
        assert not [n for net in nets.values() for n, p in net.named_parameters() if p.requires_grad]
    finally:
        C.unload_all_models()
        C.MODEL_MANAGER.reset()
