"""CPU inference runs the transformer feed-forwards over token chunks (issue 16): same result, smaller
intermediates. The chunk size is forced down here so that tiny models split too."""
import pytest
import torch
from diffusers.models.attention import FeedForward

from echomimic_lib.config import TINY
from echomimic_lib.models.unet import EchoUNet, token_chunks
from echomimic_lib.tiny import randomize_


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(i[0].numel() // i[0].shape[-1]))
    return calls


def test_chunk_sizes_follow_the_width_and_never_go_below_the_minimum():
    # official sizes, fp32: level 0 of a 128-px CFG window (6,144 tokens of 320) splits into 1,638-token chunks
    assert token_chunks.chunk_tokens(6144, 320, 4) == 16 * 2**20 // (8 * 320 * 4) == 1638
    assert token_chunks.chunk_tokens(1536, 640, 4) == 1024  # the minimum
    assert token_chunks.chunk_tokens(384, 1280, 4) == 384  # nothing to split
    assert token_chunks.chunk_tokens(6144, 320, 2) == 3276  # fp16: twice the tokens in the same bytes


def test_residual_ff_in_chunks_equals_the_whole_computation(monkeypatch):
    ff, norm = randomize_(FeedForward(32, activation_fn="geglu"), 0).eval(), torch.nn.LayerNorm(32)
    h = torch.randn(3, 50, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = ff(norm(h)) + h
        monkeypatch.setattr(token_chunks, "MIN_TOKENS", 16)
        monkeypatch.setattr(token_chunks, "CHUNK_BYTES", 16 * 8 * 32 * 4)
        calls = _count_calls(ff)
        out = token_chunks.residual_ff(ff, norm, h)
    assert calls == [16, 16, 16, 16, 16, 16, 16, 16, 16, 6]  # 150 tokens in chunks of 16, the last one short
    assert out.shape == h.shape and torch.allclose(out, whole, rtol=0, atol=1e-6)
    # with autograd on, the plain graph runs in one piece (training)
    calls.clear()
    token_chunks.residual_ff(ff, norm, h.requires_grad_())
    assert calls == [150]


@pytest.mark.parametrize("motion", [False, True])
def test_a_denoiser_call_with_chunked_feed_forwards_matches_the_unchunked_one(monkeypatch, motion):
    den = randomize_(EchoUNet(TINY, "denoiser", motion=motion), 2).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 4, 8, 8, generator=g)
    audio = torch.randn(1, 4, 5, TINY.audio_dim, generator=g)
    with torch.no_grad():
        plain = den(x, 500, audio=audio, uncond_rows=1)
        monkeypatch.setattr(token_chunks, "MIN_TOKENS", 32)
        monkeypatch.setattr(token_chunks, "CHUNK_BYTES", 1)
        first_ff = next(m for m in den.modules() if isinstance(m, FeedForward))
        calls = _count_calls(first_ff)
        chunked = den(x, 500, audio=audio, uncond_rows=1)
    assert len(calls) > 1 and max(calls) == 32  # 8 rows x 64 tokens at level 0, in chunks of 32
    assert torch.allclose(chunked, plain, rtol=0, atol=1e-5), float((chunked - plain).abs().max())
