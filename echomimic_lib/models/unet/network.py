"""EchoUNet: one class for both UNets of EchoMimic.

- Reference UNet (``role="reference"``): SD1.5 2D layout, blocks without audio attention, no output
  head; run once at t=0, it records each transformer block's ``norm1`` output (the reference bank).
- Denoising UNet (``role="denoiser"``): the same layout with audio cross-attention and, unless
  built for stage 1, AnimateDiff motion modules; convolutions and norms act per frame.

Tensors inside are flattened to (batch x frames, C, H, W) rows, batch-major.
"""
from __future__ import annotations

import torch
import torch.utils.checkpoint
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from ...config import EchoConfig
from .attention import Attention, resolve_backend
from .blocks import DownBlock, MidBlock, UpBlock
from .compile import is_compiled
from .reference_kv import CPU_JOIN_BUDGET, ReferenceKV
from .transformer import BlockContext, TransformerBlock, row_segments


class EchoUNet(nn.Module):
    def __init__(self, cfg: EchoConfig, role: str = "denoiser", motion: bool = True):
        super().__init__()
        if role not in ("reference", "denoiser"):
            raise ValueError(f"role must be 'reference' or 'denoiser', not {role!r}")
        self.cfg, self.role = cfg, role
        audio = role == "denoiser"
        motion = motion and role == "denoiser"
        self.has_motion = motion
        self.gradient_checkpointing = False
        self.channels_last = False  # see set_channels_last
        boc = cfg.block_out_channels
        n = len(boc)
        self.conv_in = nn.Conv2d(cfg.in_channels, boc[0], 3, padding=1)
        self.time_proj = Timesteps(boc[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(boc[0], cfg.time_embed_dim)

        self.down_blocks = nn.ModuleList()
        skip_channels = [boc[0]]
        cin = boc[0]
        for i, cout in enumerate(boc):
            mm = motion and (2**i) in cfg.motion_resolutions
            last = i == n - 1
            self.down_blocks.append(DownBlock(cfg, cin, cout, cfg.down_attention[i], mm, audio, downsample=not last))
            skip_channels += [cout] * cfg.layers_per_block + ([] if last else [cout])
            cin = cout
        self.mid_block = MidBlock(cfg, boc[-1], motion and cfg.motion_mid_block, audio)

        self.up_blocks = nn.ModuleList()
        rev, rev_attn = list(reversed(boc)), list(reversed(cfg.down_attention))
        prev = rev[0]
        for i, cout in enumerate(rev):
            mm = motion and (2 ** (n - 1 - i)) in cfg.motion_resolutions
            skips = [skip_channels.pop() for _ in range(cfg.layers_per_block + 1)]
            self.up_blocks.append(UpBlock(cfg, prev, cout, skips, rev_attn[i], mm, audio, upsample=i < n - 1))
            prev = cout

        if role == "denoiser":
            self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, boc[0], eps=cfg.norm_eps)
            self.conv_act = nn.SiLU()
            self.conv_out = nn.Conv2d(boc[0], cfg.out_channels, 3, padding=1)
        for name, mod in self.named_modules():
            if isinstance(mod, TransformerBlock):
                mod.path = name.rsplit(".transformer_blocks.", 1)[0] + ".transformer_blocks." + name.rsplit(".", 1)[1]

    # ------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def set_attention_backend(self, name: str | None) -> str:
        backend = resolve_backend(name)
        for mod in self.modules():
            if isinstance(mod, Attention):
                mod.backend = backend
        return backend

    def set_channels_last(self, on: bool = True) -> None:
        """Run the convolutions channels-last (NHWC; a GPU option: faster convolutions on tensor cores, and
        the token views of the transformers are free). Same parameters, same outputs."""
        fmt = torch.channels_last if on else torch.contiguous_format
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data = m.weight.data.contiguous(memory_format=fmt)
        self.channels_last = on

    def fuse_projections(self) -> int:
        """Let every self-attention (spatial attn1, temporal attention) project q, k and v with one GEMM
        (:meth:`Attention.fuse_qkv`: same parameters and values, no extra memory). Idempotent; moving or
        re-assigning weights undoes it harmlessly. Returns the number of fused layers."""
        return sum(m.fuse_qkv() for m in self.modules() if isinstance(m, Attention))

    def transformer_blocks(self) -> dict[str, TransformerBlock]:
        return {m.path: m for m in self.modules() if isinstance(m, TransformerBlock)}

    # ------------------------------------------------------------------ forward
    def _time(self, timestep, rows: int, frames: int, device, dtype) -> torch.Tensor:
        """Time embedding: (1, D) when one timestep serves every row (broadcast by the ResNet blocks), else
        (rows, D). A Python number is filled on the device (no host-to-device copy)."""
        if isinstance(timestep, (int, float)):
            t = torch.full((1,), timestep, device=device)
        else:
            t = torch.as_tensor(timestep, device=device).reshape(-1)
        emb = self.time_embedding(self.time_proj(t).to(dtype))
        return emb if t.numel() == 1 else emb.repeat_interleave(frames, dim=0)

    def _run(self, x: torch.Tensor, temb: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        skips = [x]
        h = x
        for block in self.down_blocks:
            h, s = self._maybe_ckpt(block, h, temb, ctx)
            skips += s
        h = self._maybe_ckpt(self.mid_block, h, temb, ctx)
        for i, block in enumerate(self.up_blocks):
            n_skip = len(block.resnets)
            block_skips = skips[-n_skip:]
            del skips[-n_skip:]
            next_size = skips[-1].shape[-2:] if skips else None
            h = self._maybe_ckpt(block, h, temb, ctx, block_skips, next_size)
        return h

    def _branch_at(self, branch: int) -> tuple[int, int]:
        """(up block, layer in it) where DeepCache branch ``branch`` resumes the up path (0: the last layer)."""
        lengths = [len(b.resnets) for b in self.up_blocks]
        e = sum(lengths) - 1 - int(branch)  # execution index of the branch's layer
        if not 0 <= e < sum(lengths):
            raise ValueError(f"DeepCache branch {branch}: this network has branches 0 to {sum(lengths) - 1}")
        for i, n in enumerate(lengths):
            if e < n:
                return i, e
            e -= n
        raise AssertionError("unreachable")

    def _run_cached(self, x, temb, ctx, branch: int, cached: torch.Tensor | None):
        """DeepCache (:mod:`echomimic_lib.pipeline.deep_cache`). ``cached`` None: the whole network, and also the
        input of branch ``branch``'s layer -> (out, that input). Else the partial pass -> out: the down path only as
        far as the branch's skips need (``branch + 1`` skips), then the up path from the branch's layer on, its
        input being ``cached``."""
        bi, j = self._branch_at(branch)
        total = sum(len(b.resnets) for b in self.up_blocks)  # = the down path's skips, the input convolution's included
        need = total if cached is None else branch + 1
        skips, h = [x], x
        for block in self.down_blocks:
            if len(skips) >= need:
                break
            h, s = block(h, temb, ctx, limit=need - len(skips))
            skips += s
        kept: list = []
        if cached is None:
            h = self.mid_block(h, temb, ctx)
        else:
            skips += [None] * (total - need)  # the skips of the layers before the branch: not computed, not read
            h = cached.to(x.dtype)
        for i, block in enumerate(self.up_blocks):
            n_skip = len(block.resnets)
            block_skips = skips[-n_skip:]
            del skips[-n_skip:]
            if cached is not None and i < bi:
                continue
            next_size = skips[-1].shape[-2:] if skips else None
            h = block(h, temb, ctx, block_skips, next_size, start=j if (cached is not None and i == bi) else 0,
                      keep_at=j if (cached is None and i == bi) else None, kept=kept)
        return h if cached is not None else (h, kept[0])

    def _maybe_ckpt(self, block, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward_reference(self, ref_latent: torch.Tensor, timestep=0) -> tuple[dict, torch.Tensor]:
        """Reference pass: (B, 4, h, w) latents -> (bank {path: (B, h*w, C)}, last up-block output)."""
        if self.role != "reference":
            raise RuntimeError("forward_reference is for the reference UNet")
        x = ref_latent.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        recorded: list = []
        ctx = BlockContext(frames=1, bank_out=recorded)
        temb = self._time(timestep, x.shape[0], 1, x.device, x.dtype)
        out = self._run(self.conv_in(x), temb, ctx)
        paths = list(self.transformer_blocks())  # registration order = execution order
        if len(recorded) != len(paths):
            raise RuntimeError(f"reference pass recorded {len(recorded)} blocks, expected {len(paths)}")
        return dict(zip(paths, recorded)), out

    def prepare_reference(self, bank: dict, join_budget: int | None = None) -> ReferenceKV:
        """Project the reference bank through this denoiser's attn1 once (k, v per block).

        The reference rounds the bank to float16 before use (``cfg.bank_round_dtype``); so do we.
        ``join_budget``: bytes of per-block [own; reference] key/value buffers kept for the generation
        (:mod:`.reference_kv`); default 512 MiB on the CPU, where memory traffic is dear, 0 elsewhere and
        for compiled blocks (one compiled graph per block kind and size must not depend on the block)."""
        if self.role != "denoiser":
            raise RuntimeError("prepare_reference is for the denoising UNet")
        blocks = self.transformer_blocks()
        missing = sorted(set(blocks) - set(bank))
        if missing:
            raise ValueError(f"reference bank lacks blocks {missing[:3]}... ({len(missing)} missing)")
        rnd = getattr(torch, self.cfg.bank_round_dtype) if self.cfg.bank_round_dtype else None
        if join_budget is None:
            on_cpu = next(iter(bank.values())).device.type == "cpu"  # where the call computes (weights may be streamed)
            join_budget = CPU_JOIN_BUDGET if on_cpu and not is_compiled(self) else 0
        kv = ReferenceKV(join_budget=join_budget)
        for path, block in blocks.items():
            tokens = bank[path]
            if rnd is not None:
                tokens = tokens.to(rnd)
            kv[path] = block.attn1.project_kv(tokens.to(self.dtype))
        return kv

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        audio: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        reference: ReferenceKV | None = None,
        uncond_rows: int = 0,
        reference_mask: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
        cache_branch: int | None = None,
        cached: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Denoiser forward -> prediction (B, C, F, h, w).

        - sample: (B, 4, F, h, w) noisy latents.
        - The first ``uncond_rows`` batch items are unconditional (classifier-free guidance): no
          reference tokens, zero audio, zero condition. ``audio``/``cond``/``reference_mask`` describe
          the remaining (conditional) items only.
        - audio: (Bc, F, L, audio_dim) whisper tokens or None (= zero audio).
        - cond: (Bc, C0, F or 1, h, w) condition-encoder features or None (= zero).
        - reference: from :meth:`prepare_reference`, or None (no reference attention).
        - reference_mask: (Bc,) bool, which conditional items use the reference (training dropout).
        - audio_mask: optional multiplier of the audio-attention output per frame row, (B*F,) or
          (B*F, tokens, 1) (training: muted audio / partial-attention masks).
        - cache_branch / cached (DeepCache, :mod:`echomimic_lib.pipeline.deep_cache`): with a branch and no
          ``cached``, the whole network runs and the call returns (prediction, the branch layer's input, rows
          (B*F, C, h', w')); with ``cached`` (such an input, for these rows) only the shallow partial pass runs.
        """
        if self.role != "denoiser":
            raise RuntimeError("use forward_reference for the reference UNet")
        b, c, f, hh, ww = sample.shape
        dtype, device = self.dtype, sample.device
        x = sample.to(dtype).transpose(1, 2).reshape(b * f, c, hh, ww)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        temb = self._time(timestep, b * f, f, device, dtype)
        h = self.conv_in(x)
        u = uncond_rows
        if cond is not None:
            cf = cond.to(dtype)
            if cf.shape[2] == 1 and f > 1:
                cf = cf.expand(-1, -1, f, -1, -1)
            cf = cf.transpose(1, 2).reshape((b - u) * f, *cf.shape[1:2], hh, ww)
            h = torch.cat([h[: u * f], h[u * f :] + cf]) if u else h + cf

        segments = None
        if reference is not None:
            # which samples attend to the reference: decided here, on the host, once per call
            flags = [False] * u + (_host_flags(reference_mask, b - u) if reference_mask is not None else [True] * (b - u))
            segments = row_segments(flags, f)
        tokens = None
        if audio is not None:
            tokens = audio.to(dtype).reshape((b - u) * f, audio.shape[-2], audio.shape[-1])
        ctx = BlockContext(frames=f, ref_kv=reference, ref_segments=segments, audio=tokens, audio_start=u * f, audio_mask=audio_mask)
        kept = None
        if cache_branch is None:
            h = self._run(h, temb, ctx)
        elif cached is None:
            h, kept = self._run_cached(h, temb, ctx, cache_branch, None)
        else:
            h = self._run_cached(h, temb, ctx, cache_branch, cached)
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        out = h.view(b, f, *h.shape[1:]).transpose(1, 2)
        return out if kept is None else (out, kept)


def _host_flags(mask, n: int) -> list[bool]:
    """A per-sample bool mask as a Python list (training: the caller's dropout mask; one read per call)."""
    flags = mask.tolist() if isinstance(mask, torch.Tensor) else list(mask)
    if len(flags) != n:
        raise ValueError(f"reference_mask has {len(flags)} entries for {n} conditional samples")
    return [bool(x) for x in flags]
