"""LPIPS for the V1 spatial loss and V2's PhD S3 term, without surprise downloads.

``lpips.LPIPS(pretrained=True)`` fetches torchvision's ImageNet backbone (AlexNet by default) from the internet
while the model is built; offline that is a URLError traceback deep inside training start-up. Here the backbone
weights are found first (:func:`resolve_backbone`, called before any network is built):

1. ``loss.lpips.backbone_path``: a local torchvision checkpoint (``alexnet-owt-7be5be79.pth`` ...), or
2. torch hub's cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``), where
   torchvision itself keeps them, or
3. a download into that cache; when it fails, :class:`LPIPSWeightsError` names the file, where it was looked
   for, and the ways out (give the file, or train without the LPIPS term).

The LPIPS network is then built with a random trunk (no download) and the backbone weights are loaded into
it; the linear calibration layers ship inside the ``lpips`` wheel.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch

from echomimic_lib.errors import EchoMimicError

# lpips net name -> torchvision weights enum
BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


class LPIPSWeightsError(EchoMimicError):
    """The LPIPS backbone weights are neither given, cached nor downloadable."""


def lpips_needed(cfg) -> bool:
    sp, phd = cfg.loss.spatial, cfg.loss.phd
    return (sp.weight > 0 and sp.lpips > 0) or (phd.enabled and phd.low_weight > 0)


def backbone_url(net: str) -> str:
    import torchvision.models as tvm

    return getattr(tvm, BACKBONES[net]).IMAGENET1K_V1.url


def hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _ways_out(name: str) -> str:
    return (f"either download {name} on a machine with internet and set loss.lpips.backbone_path to it (or copy it into "
            f"{hub_checkpoints()}), or train without the LPIPS term (loss.spatial.lpips: 0 for V1, loss.phd.low_weight: 0 for V2)")


def resolve_backbone(lp, download: bool = True) -> Path | None:
    """The backbone weight file for ``loss.lpips`` (None for ``random_backbone``); raises :class:`LPIPSWeightsError`."""
    if lp.random_backbone:
        return None
    url = backbone_url(lp.net)
    name = url.rsplit("/", 1)[-1]
    if lp.backbone_path:
        p = Path(lp.backbone_path).expanduser()
        if not p.is_file():
            raise LPIPSWeightsError(f"loss.lpips.backbone_path: {p} is not a file; it must be torchvision's {name} ({url}); "
                                    + _ways_out(name))
        return p
    cached = hub_checkpoints() / name
    if cached.is_file():
        return cached
    if not download:
        raise LPIPSWeightsError(f"the LPIPS loss needs torchvision's ImageNet weights {name}, not found in {cached.parent}; " + _ways_out(name))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except Exception as exc:  # URLError, HTTPError, SSL, timeouts, read-only cache ...
        raise LPIPSWeightsError(f"the LPIPS loss needs torchvision's ImageNet weights {name}: not in {cached.parent} and the "
                                f"download from {url} failed ({type(exc).__name__}: {exc}); " + _ways_out(name)) from None
    return cached


def load_backbone(trunk: torch.nn.Module, path: Path) -> None:
    """Copy a torchvision checkpoint's ``features.*`` (or a bare features state dict) into lpips' sliced trunk
    (its keys are ``sliceK.<index in features>.<param>``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    want = {}
    for key in trunk.state_dict():
        rest = key.split(".", 1)[1]
        src = state.get("features." + rest, state.get(rest))
        if src is None:
            raise LPIPSWeightsError(f"{path}: not a torchvision checkpoint of this LPIPS backbone (no 'features.{rest}'); "
                                    + _ways_out(path.name))
        want[key] = src
    trunk.load_state_dict(want, strict=True)


def build_lpips(net: str = "alex", random_backbone: bool = False, device="cpu",
                backbone_path: str | Path | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """LPIPS(a, b) per sample (N,), images in [-1, 1]. ``random_backbone`` (tests) keeps a seeded random trunk;
    otherwise the backbone comes from ``backbone_path`` (default: :func:`resolve_backbone`)."""
    try:
        import lpips
    except ImportError as exc:
        raise RuntimeError("the LPIPS loss term needs the 'lpips' package (pip install 'comfyui-echomimic[train]' or pip install lpips); "
                           "set its weight to 0 to train without it") from exc
    if not random_backbone and backbone_path is None:
        from types import SimpleNamespace

        backbone_path = resolve_backbone(SimpleNamespace(net=net, random_backbone=False, backbone_path=None))
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notes about lpips' `pretrained=` argument
        torch.manual_seed(0)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if not random_backbone:
        load_backbone(model.net, backbone_path)
    model = model.eval().requires_grad_(False).to(device)

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return model(a.float(), b.float()).flatten()

    fn.module = model
    return fn
