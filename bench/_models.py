"""Shared by the engine/pipeline benchmarks: official-size networks with random weights, built fast."""
from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echomimic_lib.config import SD15, TINY  # noqa: E402
from echomimic_lib.models.unet import ConditionEncoder, EchoUNet  # noqa: E402
from echomimic_lib.models.unet.motion import sinusoid_table  # noqa: E402


@torch.no_grad()
def random_(module: torch.nn.Module, seed: int = 0, device="cpu") -> torch.nn.Module:
    """Materialise a meta-built module with scaled random weights (fast: one randn per tensor), on ``device``."""
    module.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    for name, p in module.named_parameters():
        if p.dim() == 1:
            p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
        else:
            p.normal_(0.0, min(max(1.0 / p[0].numel() ** 0.5, 0.02), 0.25), generator=g)
    for name, b in module.named_buffers():
        if name.endswith("pos_encoder.pe"):
            b.copy_(sinusoid_table(b.shape[1], b.shape[2]))
    return module


def build(preset: str = "sd15", cond_channels: int = 3, device="cpu"):
    cfg = {"sd15": SD15, "tiny": TINY}[preset]
    with torch.device("meta"):
        ref, den, enc = EchoUNet(cfg, "reference"), EchoUNet(cfg, "denoiser"), ConditionEncoder(cond_channels, cfg.cond_out_channels, cfg.cond_block_channels)
    return cfg, random_(ref, 1, device).eval(), random_(den, 2, device).eval(), random_(enc, 3, device).eval()


def proc_status(key: str) -> int:
    """A byte figure of /proc/self/status (``VmRSS``, ``VmHWM``), 0 where it is missing."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux), so a later read is the peak of what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
