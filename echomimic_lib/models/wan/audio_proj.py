"""Flash-pro audio projector: per-video-frame wav2vec2 windows -> ``context_tokens`` tokens per latent frame.

Official facts reproduced (EchoMimicV3 ``wan_transformer3d_audio_2512.py``, names as in its checkpoints):

* :func:`group_windows` (official ``get_ai2v_audio``): the first video frame keeps its 5-frame window;
  each later latent frame (4 video frames) takes window[0:3] of its first frame, window[2] (the centre) of
  its two middle frames and window[2:5] of its last frame: 3 + 1 + 1 + 3 = 8 entries.
* :class:`AudioProjector` (official ``AudioProjModel``, keys ``proj1``, ``proj1_vf``, ``proj2``, ``proj3``,
  ``norm``): ReLU(proj1) on the flattened first-frame window, ReLU(proj1_vf) on the flattened later ones,
  ReLU(proj2), proj3 -> (context_tokens, output_dim), LayerNorm (eps 1e-5).
* Zero audio (the unconditional CFG pass) is projected too: its tokens are functions of the biases, not
  zero. There is no "absent audio" path.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import AudioProjConfig


def group_windows(windows: torch.Tensor, vae_scale: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, F, W, L, C) per-video-frame windows -> first (B, 1, W, L, C), later (B, T-1, 8, L, C)."""
    b, f, w = windows.shape[:3]
    if (f - 1) % vae_scale:
        raise ValueError(f"audio windows for {f} video frames: the count must be {vae_scale}k+1")
    mid = w // 2
    first = windows[:, :1]
    later = windows[:, 1:].reshape(b, (f - 1) // vae_scale, vae_scale, *windows.shape[2:])
    parts = [later[:, :, 0, : mid + 1], later[:, :, 1:-1, mid], later[:, :, -1, mid:]]
    return first, torch.cat(parts, dim=2)


class AudioProjector(nn.Module):
    def __init__(self, cfg: AudioProjConfig):
        super().__init__()
        self.cfg = cfg
        per_frame = cfg.blocks * cfg.channels
        self.proj1 = nn.Linear(cfg.seq_len * per_frame, cfg.intermediate_dim)
        self.proj1_vf = nn.Linear(cfg.seq_len_vf * per_frame, cfg.intermediate_dim)
        self.proj2 = nn.Linear(cfg.intermediate_dim, cfg.intermediate_dim)
        self.proj3 = nn.Linear(cfg.intermediate_dim, cfg.context_tokens * cfg.output_dim)
        self.norm = nn.LayerNorm(cfg.output_dim) if cfg.norm_output else nn.Identity()

    def forward(self, first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        """first (B, 1, 5, L, C), later (B, T-1, 8, L, C) -> tokens (B, T, context_tokens, output_dim)."""
        b = first.shape[0]  # explicit widths: a 1-frame clip has no later frames (a reshape with -1 of 0 elements fails)
        x0 = torch.relu(self.proj1(first.reshape(b, first.shape[1], self.proj1.in_features)))
        x1 = torch.relu(self.proj1_vf(later.reshape(b, later.shape[1], self.proj1_vf.in_features)))
        x = torch.relu(self.proj2(torch.cat([x0, x1], dim=1)))
        tokens = self.proj3(x).reshape(b, x.shape[1], self.cfg.context_tokens, self.cfg.output_dim)
        return self.norm(tokens)

    def from_windows(self, windows: torch.Tensor, vae_scale: int = 4) -> torch.Tensor:
        """(B, F, 5, L, C) windows -> (B, T, context_tokens, output_dim) tokens."""
        first, later = group_windows(windows, vae_scale)
        return self(first, later)
