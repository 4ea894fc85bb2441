"""A ROCm (AMD) PyTorch build that sees no GPU is not called "built without CUDA": the message names ROCm."""
import pytest
import torch

from echomimic_lib.devices import resolve_device
from echomimic_lib.errors import EchoMimicError


def test_a_rocm_build_without_a_visible_gpu_says_rocm(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "hip", "6.4.1", raising=False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(EchoMimicError, match=r"ROCm/HIP 6\.4\.1\) finds no usable AMD GPU") as err:
        resolve_device("cuda")
    assert "built without CUDA" not in str(err.value)
