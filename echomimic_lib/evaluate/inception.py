"""InceptionV3 up to its 2048-d pool features, for FID, built here (no torchvision) in the module layout of
torchvision's ``Inception3``, so both common weight files load as state dicts:

- ``fid``: pytorch-fid's port of the TensorFlow FID network (``pt_inception-2015-12-05-6726825d.pth``, the weights
  FID numbers in papers come from). It differs from torchvision's in three places: the average pools of the
  A, C and E blocks leave the zero padding out of the mean, and the last E block max-pools its pool branch;
  its classifier has 1008 classes.
- ``torchvision``: torchvision's ImageNet weights (``inception_v3_google-0cc3c7bd.pth``, 1000 classes). FIDs
  computed with it are valid comparisons among themselves but not comparable with published FIDs.

``auto`` tells the two apart by the classifier's size (a file without a classifier is taken as ``fid``). The
classifier and the auxiliary head are not needed for FID and are ignored. Inputs: RGB in 0..1, resized to
299 x 299 (bilinear) and scaled to -1..1, as pytorch-fid feeds it.
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

SIZE = 299
FEATURES = 2048
FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_SOURCE = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
TV_FILE = "inception_v3_google-0cc3c7bd.pth"
TV_SOURCE = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
FILE_NAMES = (FID_FILE, TV_FILE, "inception.safetensors", "inception.pth")
VARIANTS = ("auto", "fid", "torchvision")
IGNORED = ("fc.", "AuxLogits.")


class Conv(nn.Module):
    """Convolution without bias, BatchNorm (eps 0.001), ReLU (torchvision's ``BasicConv2d``)."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x, fid: bool):
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=not fid)


class BlockA(nn.Module):
    def __init__(self, cin: int, pool: int, fid: bool):
        super().__init__()
        self.fid = fid
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 64, 1), Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg(x, self.fid))], 1)


class BlockB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 64, 1), Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, 2)], 1)


class BlockC(nn.Module):
    def __init__(self, cin: int, c7: int, fid: bool):
        super().__init__()
        self.fid = fid
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = Conv(cin, c7, 1), Conv(c7, c7, **row), Conv(c7, 192, **col)
        self.branch7x7dbl_1, self.branch7x7dbl_2 = Conv(cin, c7, 1), Conv(c7, c7, **col)
        self.branch7x7dbl_3, self.branch7x7dbl_4 = Conv(c7, c7, **row), Conv(c7, c7, **col)
        self.branch7x7dbl_5 = Conv(c7, 192, **row)
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        dbl = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
        dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(dbl)))
        return torch.cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), dbl,
                          self.branch_pool(_avg(x, self.fid))], 1)


class BlockD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = Conv(cin, 192, 1), Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3, self.branch7x7x3_4 = Conv(192, 192, (7, 1), padding=(3, 0)), Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)


class BlockE(nn.Module):
    """``pool``: "avg" (torchvision), "avg_valid" (FID, padding left out of the mean) or "max" (FID's last block)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = Conv(384, 384, (1, 3), padding=(0, 1)), Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.pool == "max" else _avg(x, self.pool == "avg_valid")
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl), self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """``forward(x)``: (N, 3, H, W) RGB in 0..1 -> (N, 2048) pool features."""

    def __init__(self, variant: str = "fid", size: int = SIZE):
        super().__init__()
        if variant not in ("fid", "torchvision"):
            raise ValueError(f"variant must be 'fid' or 'torchvision', got {variant!r}")
        fid = variant == "fid"
        self.variant, self.size = variant, size
        self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = Conv(3, 32, 3, stride=2), Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1, self.Conv2d_4a_3x3 = Conv(64, 80, 1), Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32, fid), BlockA(256, 64, fid), BlockA(288, 64, fid)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128, fid), BlockC(768, 160, fid)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160, fid), BlockC(768, 192, fid)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, "avg_valid" if fid else "avg")
        self.Mixed_7c = BlockE(2048, "max" if fid else "avg")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False) * 2 - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, "Mixed_" + name)(x)
        return x.mean((2, 3))


def missing_message(path, folder=None) -> str:
    where = f"{path}" + (f" (or into {folder})" if folder else "")
    return (f"Inception weights for FID not found at {path}. Download pytorch-fid's '{FID_FILE}' ({FID_SOURCE}; the "
            f"TensorFlow FID network, comparable with published FIDs) or torchvision's '{TV_FILE}' ({TV_SOURCE}) and put "
            f"it at {where}. TorchScript files (e.g. 'inception-2015-12-05.pt') are refused: they run code.")


def load_inception(path: str | Path, variant: str = "auto", device: torch.device | str = "cpu", size: int = SIZE) -> InceptionV3:
    """InceptionV3 with the weights of ``path`` (a state dict: ``.pth`` read with ``weights_only=True``, or
    safetensors), in eval mode. ``size``: the input resolution (299 for FID; smaller only for tests)."""
    path = Path(path)
    if variant not in VARIANTS:
        raise WeightsError(f"Inception variant must be one of {', '.join(VARIANTS)}; got {variant!r}.")
    if not path.is_file():
        raise MissingWeightsError(missing_message(path), [str(path)])
    refuse_torchscript(path, f"Use a state dict instead: pytorch-fid's {FID_FILE} ({FID_SOURCE}).")
    sd = read_state_dict(path)
    have = {k: v for k, v in sd.items() if not k.startswith(IGNORED) and not k.endswith("num_batches_tracked")}
    classes = int(sd["fc.weight"].shape[0]) if "fc.weight" in sd else None
    if variant == "auto":
        variant = "torchvision" if classes == 1000 else "fid"
    net = InceptionV3(variant, size)
    want = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    problem = describe_mismatch(want, have, f"{path} (InceptionV3)")
    if problem:
        raise WeightsError(f"{problem}\nUse an InceptionV3 state dict: pytorch-fid's {FID_FILE} ({FID_SOURCE}) or "
                           f"torchvision's {TV_FILE}.")
    net.load_state_dict(have, strict=False)
    log.info("Inception weights %s (%s layout, %s classes)", path, variant, classes)
    return net.to(device).eval()
