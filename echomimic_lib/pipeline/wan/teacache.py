"""TeaCache as the official EchoMimicV3 flash-pro pipeline runs it (mode ``"official"``), or off.

Official behaviour reproduced (``src/cache_utils.py`` + the transformer forward; the official CLI always
enables it: ``--enable_teacache`` is a store_true flag whose default is True):

* it counts transformer **calls**, not steps, and resets after ``num_steps`` calls, where ``num_steps`` is
  the number of sampling steps; with the flash pipeline's two calls per step (audio, zero audio) the cache
  therefore restarts every ``steps / 2`` steps;
* during the first ``skip_start`` calls after a (re)start the blocks always run;
* afterwards each call adds ``poly(rel_l1(e0, e0_prev))`` to an accumulator (``e0`` = the time
  projection of this call, ``e0_prev`` = that of the previous call) and reuses the last stored block
  residual while the accumulator stays under the threshold;
* both passes are "cond" calls, so the zero-audio pass, which has the same timestep (distance 0,
  ``poly(0) = -0.05``), usually reuses the residual of the audio pass: **audio CFG does nothing in those
  steps** (4 of the 8 default steps); an audio pass can reuse a zero-audio residual too.
* The official code picks the coefficients from the base-model *folder name* (an unknown name silently
  disables TeaCache); here ``official`` always means the Wan2.1-Fun 1.3B coefficients.
"""
from __future__ import annotations

import numpy as np
import torch

COEFFICIENTS_1_3B = (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02)
DEFAULT_THRESHOLD = 0.1
DEFAULT_SKIP_START = 5
MODES = ("official", "off")


class TeaCache:
    """Block cache given to ``WanV3Transformer.forward(cache=...)``; ``trace`` lists every decision."""

    def __init__(self, num_steps: int, threshold: float = DEFAULT_THRESHOLD, skip_start: int = DEFAULT_SKIP_START,
                 coefficients=COEFFICIENTS_1_3B):
        if num_steps < 1:
            raise ValueError(f"TeaCache: num_steps must be at least 1, got {num_steps}")
        if threshold < 0:
            raise ValueError(f"TeaCache: the threshold must be >= 0, got {threshold}")
        if not 0 <= skip_start <= num_steps:
            raise ValueError(f"TeaCache: skip_start ({skip_start}) must be between 0 and the number of steps ({num_steps}); "
                             "lower it for short runs")
        self.num_steps, self.threshold, self.skip_start = num_steps, threshold, skip_start
        self.poly = np.poly1d(list(coefficients))
        self.trace: list[dict] = []
        self.reset()

    def reset(self):
        self.cnt = 0
        self.accumulated = 0.0
        self.prev = None
        self.residual = None

    def begin(self, e0: torch.Tensor) -> bool:
        """True: run the blocks; False: add ``self.residual``."""
        entry = {"cnt_before": self.cnt, "skip_phase": self.cnt < self.skip_start}
        if entry["skip_phase"]:
            compute = True
            self.accumulated = 0.0
        else:
            rel = ((e0 - self.prev).abs().mean() / self.prev.abs().mean()).cpu().item()
            self.accumulated += float(self.poly(rel))
            entry.update(rel_l1_distance=rel, accumulated=self.accumulated)
            compute = self.accumulated >= self.threshold
            if compute:
                self.accumulated = 0.0
        self.prev = e0
        entry["computed"] = compute
        self.trace.append(entry)
        return compute

    def store(self, residual: torch.Tensor) -> None:
        self.residual = residual

    def end_call(self) -> None:
        self.cnt += 1
        if self.cnt == self.num_steps:
            self.reset()


def make_cache(mode: str, steps: int, threshold: float = DEFAULT_THRESHOLD, skip_start: int = DEFAULT_SKIP_START):
    if mode not in MODES:
        raise ValueError(f"teacache must be one of {MODES}, got {mode!r}")
    return None if mode == "off" else TeaCache(steps, threshold, skip_start)
