"""Analytic FLOPs of one EchoMimicV3 flash-pro transformer call (the GPU bench's MFU, ``echomimic-train plan``'s speed).

Counted as multiply-adds x 2: every linear product (the patch convolution, whose kernel equals its stride, the
embeddings, each block's projections and feed-forward, the head) is 2 x weights x rows, and attention is
4 x queries x keys x width (self-attention over the video tokens; cross-attention over the 257 CLIP + ``text_len``
text tokens, the prompt being zero-padded by the network; audio attention per latent frame over its own tokens).
Element-wise work (norms, activations, RoPE) is left out, as ``torch.utils.flop_counter.FlopCounterMode`` leaves it
out: the two counts are equal (``tests/test_gpu_check.py``, ``tests/test_trainer_plan_v3.py``).
"""
from __future__ import annotations

from math import prod

from .config import WanV3Config


def call_flops(cfg: WanV3Config, latent: tuple[int, int, int], batch: int = 1, project_audio: bool = False) -> dict:
    """FLOPs of one call on latents (T, h, w): ``linear``, ``attention``, ``total`` and the video ``tokens``.
    ``project_audio``: the call gets per-video-frame audio windows and runs the audio projector (as training calls
    it); otherwise the audio tokens are precomputed (as the sampler calls it)."""
    t, h, w = latent
    p = cfg.patch_size
    tokens = (t // p[0]) * (h // p[1]) * (w // p[2])
    d, text, clip, audio = cfg.dim, cfg.text_len, cfg.clip_tokens, t * cfg.audio.context_tokens
    weights_x_rows = (
        tokens * cfg.in_dim * prod(p) * d  # patch embedding (kernel = stride: one product per token)
        + text * (cfg.text_dim * d + d * d)  # text embedding MLP on the padded prompt
        + clip * (cfg.clip_dim * cfg.clip_dim + cfg.clip_dim * d)  # CLIP projection MLP
        + (cfg.freq_dim * d + d * d) + d * 6 * d  # time embedding and its 6-way projection (one row)
        + cfg.num_layers * (tokens * (4 * d * d + 2 * d * d + 2 * d * cfg.ffn_dim)  # self q k v o, cross q o, FFN
                            + 2 * d * d * (text + clip + audio))  # cross k v of text, CLIP and audio tokens
        + tokens * d * prod(p) * cfg.out_dim)  # head
    if project_audio:
        weights_x_rows += projector_products(cfg, t)
    attention = cfg.num_layers * 4 * tokens * d * (tokens + text + clip + cfg.audio.context_tokens)
    linear = 2 * weights_x_rows
    return {"linear": batch * linear, "attention": batch * attention, "total": batch * (linear + attention),
            "tokens": tokens}


def projector_products(cfg: WanV3Config, latent_frames: int) -> int:
    """Weights x rows of the audio projector over one clip: ``proj1`` on the first latent frame's 5-frame window,
    ``proj1_vf`` on each later frame's 8 entries, then ``proj2`` and ``proj3`` on every latent frame."""
    a = cfg.audio
    per_frame = a.blocks * a.channels
    return (a.seq_len * per_frame * a.intermediate_dim + (latent_frames - 1) * a.seq_len_vf * per_frame * a.intermediate_dim
            + latent_frames * (a.intermediate_dim ** 2 + a.intermediate_dim * a.context_tokens * a.output_dim))
