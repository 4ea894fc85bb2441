"""The flash-pro transformer's official behaviour on a tiny random model."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from echomimic_lib.models.wan import group_windows
from tests._v3_tiny import TINY, inputs, tiny_model


def _run(model, **over):
    kw = {**inputs(model.cfg), **over}
    with torch.no_grad():
        return model(**kw)


def test_q_audio_is_dead():
    model = tiny_model()
    before = _run(model)
    with torch.no_grad():
        for blk in model.blocks:
            blk.cross_attn.q_audio.weight.add_(1.0)
            blk.cross_attn.q_audio.bias.add_(1.0)
    assert torch.equal(_run(model), before)


def test_audio_matters_and_zero_audio_is_not_absent_audio():
    model = tiny_model()
    inp = inputs(model.cfg)
    cond = _run(model)
    uncond = _run(model, audio_windows=torch.zeros_like(inp["audio_windows"]))
    assert (cond - uncond).abs().max() > 1e-3
    tokens = model.audio_tokens(torch.zeros_like(inp["audio_windows"]))
    assert tokens.abs().max() > 0.1  # zero windows still become (bias-driven) tokens


def test_audio_attention_is_per_latent_frame():
    """One block: the audio only enters through cross-attention, frame by frame."""
    model = tiny_model(cfg=dataclasses.replace(TINY, num_layers=1))
    inp = inputs(model.cfg)
    tok = model.audio_tokens(inp["audio_windows"])
    tok2 = tok.clone()
    tok2[:, 2] += 1.0
    a, b = _run(model, audio_tokens=tok), _run(model, audio_tokens=tok2)
    diff = (a - b).abs().amax(dim=(0, 1, 3, 4))
    assert diff[:2].max() == 0 and diff[2] > 1e-4


def test_int_and_float_timesteps_match_and_frames_checked():
    model = tiny_model()
    assert torch.equal(_run(model, t=torch.tensor([999])), _run(model, t=torch.tensor([999.0])))
    inp = inputs(model.cfg)
    with pytest.raises(ValueError, match="4k\\+1|latent frames"):
        _run(model, audio_windows=inp["audio_windows"][:, :-4])
    with pytest.raises(ValueError, match="4k\\+1"):
        group_windows(inp["audio_windows"][:, :-1])


def test_group_windows_layout():
    f = 9
    w = torch.arange(f * 5, dtype=torch.float32).view(1, f, 5, 1, 1)  # value = 5 * frame + window slot
    first, later = group_windows(w)
    assert first.flatten().tolist() == [0, 1, 2, 3, 4]
    # latent frame 1 = video frames 1..4: frame 1 slots 0-2, frames 2 and 3 slot 2, frame 4 slots 2-4
    assert later[0, 0].flatten().tolist() == [5, 6, 7, 12, 17, 22, 23, 24]


def test_bf16_weights_and_inputs_run_close_to_fp32():
    model = tiny_model()
    inp = inputs(model.cfg)
    with torch.no_grad():
        ref = model(**inp)
        out = model.to(torch.bfloat16)(**{k: v.bfloat16() if v.is_floating_point() else v for k, v in inp.items()})
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()
