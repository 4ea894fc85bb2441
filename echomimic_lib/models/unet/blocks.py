"""Down / mid / up blocks of the SD1.5 UNet layout, per frame, with optional spatial transformers
and motion modules (order inside a layer: resnet -> transformer -> motion module)."""
from __future__ import annotations

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from ...config import EchoConfig
from .motion import MotionModule
from .transformer import BlockContext, SpatialTransformer


def _resnet(cfg: EchoConfig, cin: int, cout: int) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels=cin, out_channels=cout, temb_channels=cfg.time_embed_dim, eps=cfg.norm_eps, groups=cfg.norm_num_groups
    )


def _transformer(cfg: EchoConfig, c: int, audio: bool) -> SpatialTransformer:
    return SpatialTransformer(c, cfg.attention_heads, cfg.norm_num_groups, cfg.audio_dim if audio else None, cfg.audio_scale)


def _motion(cfg: EchoConfig, c: int) -> MotionModule:
    return MotionModule(c, cfg.motion_heads, cfg.motion_max_len, cfg.norm_num_groups)


class _Layered(nn.Module):
    """resnets[i] -> attentions[i] -> motion_modules[i] for every layer i."""

    def _build(self, cfg, ins, cout, attn, motion, audio):
        self.resnets = nn.ModuleList([_resnet(cfg, cin, cout) for cin in ins])
        if attn:
            self.attentions = nn.ModuleList([_transformer(cfg, cout, audio) for _ in ins])
        if motion:
            self.motion_modules = nn.ModuleList([_motion(cfg, cout) for _ in ins])

    def _layer(self, i: int, h: torch.Tensor, temb: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        h = self.resnets[i](h, temb)
        if hasattr(self, "attentions"):
            h = self.attentions[i](h, ctx, ctx.refs_for(self.attentions[i]))
        if hasattr(self, "motion_modules"):
            h = self.motion_modules[i](h, ctx.frames)
        return h


class DownBlock(_Layered):
    def __init__(self, cfg: EchoConfig, cin: int, cout: int, attn: bool, motion: bool, audio: bool, downsample: bool):
        super().__init__()
        self._build(cfg, [cin] + [cout] * (cfg.layers_per_block - 1), cout, attn, motion, audio)
        if downsample:
            self.downsamplers = nn.ModuleList([Downsample2D(cout, use_conv=True, out_channels=cout, padding=1, name="op")])

    def forward(self, h, temb, ctx, limit: int | None = None):
        """-> (h, this block's skips). ``limit``: stop once that many skips are made (DeepCache's partial pass)."""
        skips = []
        for i in range(len(self.resnets)):
            if limit is not None and len(skips) >= limit:
                return h, skips
            h = self._layer(i, h, temb, ctx)
            skips.append(h)
        if hasattr(self, "downsamplers") and (limit is None or len(skips) < limit):
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class MidBlock(nn.Module):
    def __init__(self, cfg: EchoConfig, c: int, motion: bool, audio: bool):
        super().__init__()
        self.resnets = nn.ModuleList([_resnet(cfg, c, c), _resnet(cfg, c, c)])
        self.attentions = nn.ModuleList([_transformer(cfg, c, audio)])
        if motion:
            self.motion_modules = nn.ModuleList([_motion(cfg, c)])

    def forward(self, h, temb, ctx):
        h = self.resnets[0](h, temb)
        h = self.attentions[0](h, ctx, ctx.refs_for(self.attentions[0]))
        if hasattr(self, "motion_modules"):
            h = self.motion_modules[0](h, ctx.frames)
        return self.resnets[1](h, temb)


class UpBlock(_Layered):
    def __init__(self, cfg, prev_c: int, cout: int, skip_cs: list[int], attn: bool, motion: bool, audio: bool, upsample: bool):
        super().__init__()
        ins = [(prev_c if i == 0 else cout) + s for i, s in enumerate(skip_cs)]
        self._build(cfg, ins, cout, attn, motion, audio)
        if upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(cout, use_conv=True, out_channels=cout)])

    def forward(self, h, temb, ctx, skips: list[torch.Tensor], next_size=None, start: int = 0, keep_at: int | None = None,
                kept: list | None = None):
        """The layers from ``start`` on (DeepCache's partial pass: ``h`` is then the cached input of layer ``start``;
        the skips of the layers before it are not read). ``keep_at``: the input of that layer is appended to
        ``kept`` (DeepCache's full pass)."""
        skips = list(skips)  # never consume the caller's list: checkpointing re-runs this forward
        for i in range(len(self.resnets)):
            skip = skips.pop()
            if i < start:
                continue
            if i == keep_at:
                kept.append(h)
            h = torch.cat([h, skip], dim=1)
            h = self._layer(i, h, temb, ctx)
        if hasattr(self, "upsamplers"):
            h = self.upsamplers[0](h, output_size=next_size)
        return h
