"""Condition encoder: V1 face locator (1-channel mask, or 3-channel landmark drawings) and V2 pose
encoder (3-channel hand-pose drawings). Same network; output added to the denoiser's conv_in output."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConditionEncoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 320, block_channels=(16, 32, 96, 256)):
        super().__init__()
        self.in_channels = in_channels
        self.conv_in = nn.Conv2d(in_channels, block_channels[0], 3, padding=1)
        blocks = []
        for cin, cout in zip(block_channels[:-1], block_channels[1:]):
            blocks.append(nn.Conv2d(cin, cin, 3, padding=1))
            blocks.append(nn.Conv2d(cin, cout, 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(block_channels[-1], out_channels, 3, padding=1)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """cond: (B, C, F, H, W) in [0, 1] -> (B, out, F, H/8, W/8). Frames are independent."""
        b, c, f, h, w = cond.shape
        if c != self.in_channels:
            raise ValueError(f"condition encoder expects {self.in_channels} channels, got {c}")
        x = cond.transpose(1, 2).reshape(b * f, c, h, w).to(self.conv_in.weight.dtype)
        x = F.silu(self.conv_in(x))
        for conv in self.blocks:
            x = F.silu(conv(x))
        x = self.conv_out(x)
        return x.view(b, f, *x.shape[1:]).transpose(1, 2)
