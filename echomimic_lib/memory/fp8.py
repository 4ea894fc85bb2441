"""fp8 weight storage for the UNets: weights kept in ``float8_e4m3fn`` (half of fp16), upcast layer by
layer to the compute dtype just before each matmul / convolution. Opt-in (it changes the output a little;
the bench and tests quote how much). Biases, norms and the input/output convolutions stay in the compute
dtype, so ``EchoUNet.dtype`` still names the compute dtype.

The layers keep their class contract (``weight``/``bias`` names, state-dict keys), so a LoRA merged
before the conversion and ComfyUI's ModelPatcher (which recognises ``comfy_cast_weights`` layers and can
leave their weights off the GPU) both work on them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EchoMimicError

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0
KEEP = ("conv_in", "conv_out")  # top-level layers whose dtype defines the network's compute dtype


class _Cast:
    """Weight upcast per call, to the input's dtype and device (ComfyUI-compatible cast hooks included)."""

    comfy_cast_weights = True
    weight_function: list = []
    bias_function: list = []

    def _cast(self, x: torch.Tensor):
        w = self.weight.to(device=x.device, dtype=x.dtype)
        for f in self.weight_function:
            w = f(w)
        b = self.bias
        if b is not None:
            b = b.to(device=x.device, dtype=x.dtype)
            for f in self.bias_function:
                b = f(b)
        return w, b


class Fp8Linear(_Cast, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._cast(x)
        return F.linear(x, w, b)


class Fp8Conv2d(_Cast, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._cast(x)
        return self._conv_forward(x, w, b)


_CLASSES = {nn.Linear: Fp8Linear, nn.Conv2d: Fp8Conv2d}


def check_fp8(device: torch.device | str) -> None:
    if FP8 is None:
        raise EchoMimicError("fp8 weights need PyTorch >= 2.1 (torch.float8_e4m3fn); update PyTorch or switch fp8 off.")
    if torch.device(device).type == "mps":
        raise EchoMimicError("fp8 weights are not supported on Apple MPS; switch fp8 off (or use fp16).")


@torch.no_grad()
def to_fp8(module: nn.Module, keep=KEEP, include: tuple[str, ...] | None = None) -> int:
    """Convert every Linear / Conv2d weight of ``module`` (except the top-level ``keep`` layers; with ``include``,
    only the layers whose names start with one of its prefixes) to fp8 storage in place; returns the bytes saved."""
    if FP8 is None:
        check_fp8("cpu")
    saved = 0
    for name, m in module.named_modules():
        cls = _CLASSES.get(type(m))
        if cls is None or name in keep or (include is not None and not name.startswith(include)):
            continue
        w = m.weight
        if _has_data(w) and w.abs().max().item() > FP8_MAX:
            raise EchoMimicError(f"{name}.weight exceeds the fp8 e4m3fn range (|w| > {FP8_MAX}); switch fp8 off for these weights.")
        saved += w.numel() * (w.element_size() - 1)
        m.weight = nn.Parameter(w.to(FP8), requires_grad=False)
        m.__class__ = cls
    return saved


def _has_data(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return not (t.is_meta or is_fake(t))


def is_fp8(module: nn.Module) -> bool:
    return any(isinstance(m, (Fp8Linear, Fp8Conv2d)) for m in module.modules())


def compute_param(module: nn.Module) -> torch.Tensor:
    """The first parameter not stored in fp8: its device and dtype are the module's compute device and dtype."""
    return next(p for p in module.parameters() if FP8 is None or p.dtype != FP8)
