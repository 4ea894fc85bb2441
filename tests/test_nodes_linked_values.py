"""Values that reach a node through a link are not range-checked by ComfyUI when the prompt is queued (VALIDATE_INPUTS
gets None for them); the nodes check them when they run, before any allocation: a linked width of 4096 (or 0 with a
reference of 2056 px) sampled at that size, a negative length went on to the sampler, and the face track allowed any
width above 64."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests._pack import sub


@pytest.fixture
def no_sampling(monkeypatch):
    sampler = sub("nodes.sampler")
    monkeypatch.setattr(sampler, "placement", lambda *a, **k: pytest.fail("models placed before the size was checked"))
    monkeypatch.setattr(sampler, "build_condition", lambda *a, **k: pytest.fail("a condition built before the size was checked"))
    return sampler


@pytest.mark.parametrize("reference,width,height,length,words", [
    ((1, 64, 64, 3), 4096, 64, 0, ["width 4096", "from 64 to 2048"]),
    ((1, 64, 2056, 3), 0, 0, 0, ["width 2056", "from 64 to 2048", "take the reference's size", "Reference Preparation"]),
    ((1, 64, 64, 3), 64, 64, -5, ["length -5", "0 = follow the audio"]),
])
def test_the_sampler_checks_linked_sizes_and_length_before_any_work(reference, width, height, length, words, no_sampling):
    err = sub("echomimic_lib.errors").EchoMimicError
    handle = SimpleNamespace(models=SimpleNamespace(), low_vram=False, weights="v1_audio", variant="normal")
    track = SimpleNamespace(frame_count=12, fps=24.0, audio=None, features=None)
    with pytest.raises(err) as info:
        no_sampling.sample(handle, torch.zeros(reference), track, 7, 1, 0.0, width, height, length, 12, 3)
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize("width,height", [(4096, 512), (512, 100000), (60, 512)])
def test_the_face_track_checks_its_size_first(width, height):
    err = sub("echomimic_lib.errors").EchoMimicError
    with pytest.raises(err, match="from 64 to 2048"):
        sub("nodes.face_track").track(None, 24.0, None, width, height, -1, "", "ping-pong", False)


@pytest.mark.parametrize("shape", [(0, 64, 64), (0, 0, 0)])
def test_an_empty_mask_batch_gets_a_message_not_an_index_error(shape):
    """An empty MASK batch (a mask node fed an empty selection) raised IndexError: index 0 is out of bounds."""
    err = sub("echomimic_lib.errors").EchoMimicError
    sampler = sub("nodes.sampler")
    with pytest.raises(err, match="the MASK batch is empty.*Reference Preparation's mask, or disconnect 'mask'"):
        sampler.build_condition("v1_audio", torch.zeros(shape), None, None, 12, 64, 64, 24.0)
