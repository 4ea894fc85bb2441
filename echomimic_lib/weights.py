"""Reading weight files safely and loading them strictly into the networks.

- ``.pth``/``.pt``/``.bin``: ``torch.load(weights_only=True)``; a pickle that would build anything
  but tensors is refused (:class:`UnsafeFileError`).
- ``.safetensors``: safetensors.
- Every floating tensor is checked for NaN/Inf; key sets are compared strictly and mismatches are
  reported with the file name, the first few missing / unexpected / wrong-shape keys and counts.
"""
from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from .errors import MissingWeightsError, UnsafeFileError, WeightsError

log = logging.getLogger(__name__)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str | Path, check_finite: bool = True) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict (CPU) from a .safetensors or torch pickle file."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weight file not found: {path}", missing=[str(path)])
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty (an interrupted download?). Delete it and download it again.")
    if path.suffix == ".safetensors":
        sd = _read_safetensors(path)
    else:
        sd = _read_torch(path)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        else:
            raise WeightsError(f"{path}: expected a flat mapping of parameter names to tensors, found {type(sd).__name__}.")
    if check_finite:
        bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise WeightsError(
                f"{path}: {len(bad)} tensor(s) contain NaN or Inf values, e.g. {', '.join(bad[:5])}. "
                "The file is damaged (or was saved from a diverged training run); download or export it again."
            )
    return sd


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc}); it may be truncated. Download it again.") from exc


def _read_torch(path: Path):
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise UnsafeFileError(
                f"{path}: refused to load. The file contains pickled objects other than tensors, which could run code "
                "when loaded. Use the official weights, or convert trusted files to .safetensors with `echomimic convert`."
            ) from exc
        raise WeightsError(f"{path}: corrupt pickle ({exc}). Download it again.") from exc
    except (EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: the file is truncated or corrupt ({type(exc).__name__}: {exc}). Download it again.") from exc
    except RuntimeError as exc:
        raise WeightsError(f"{path}: cannot be read as PyTorch weights ({exc}). It may be truncated; download it again.") from exc


def describe_mismatch(model_sd: dict, file_sd: dict, label: str, limit: int = 5) -> str | None:
    """A readable report of key differences, or None if the file matches the model exactly."""
    mk, fk = set(model_sd), set(file_sd)
    missing = sorted(mk - fk)
    unexpected = sorted(fk - mk)
    shapes = sorted(k for k in mk & fk if tuple(model_sd[k].shape) != tuple(file_sd[k].shape))
    if not (missing or unexpected or shapes):
        return None
    lines = [f"{label} does not match the network:"]
    if missing:
        lines.append(f"  missing {len(missing)} key(s): {', '.join(missing[:limit])}{' ...' if len(missing) > limit else ''}")
    if unexpected:
        lines.append(f"  unexpected {len(unexpected)} key(s): {', '.join(unexpected[:limit])}{' ...' if len(unexpected) > limit else ''}")
    if shapes:
        ex = ", ".join(f"{k} file {tuple(file_sd[k].shape)} vs model {tuple(model_sd[k].shape)}" for k in shapes[:limit])
        lines.append(f"  wrong shape for {len(shapes)} key(s): {ex}{' ...' if len(shapes) > limit else ''}")
    return "\n".join(lines)


def load_strict(model: nn.Module, state: dict, label: str, device=None, dtype: torch.dtype | None = None, hint: str = "") -> nn.Module:
    """Check keys/shapes strictly, then assign the tensors (cast to ``dtype``, moved to ``device``).

    Works for a model built on the meta device: tensors are assigned, never allocated twice. Tensors
    that are views into a larger storage (V2's pose_encoder.pth) are cloned so the big buffer is freed.
    """
    expected = model.state_dict()
    report = describe_mismatch(expected, state, label)
    if report:
        raise WeightsError(report + (f"\n  {hint}" if hint else ""))
    new = {}
    for k, ref in expected.items():
        t = state[k]
        if not ref.is_floating_point():
            target_dtype = ref.dtype
        elif k.endswith("pos_encoder.pe"):
            target_dtype = torch.float32  # positional tables stay exact
        else:
            target_dtype = dtype or (torch.float32 if ref.device.type == "meta" else ref.dtype)
        t = t.to(device=device or "cpu", dtype=target_dtype)
        if t.untyped_storage().nbytes() > t.numel() * t.element_size() or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        new[k] = t
    model.load_state_dict(new, strict=True, assign=True)
    return model


def save_state_dict(state: dict, path: str | Path) -> Path:
    """Write ``.safetensors`` or ``.pth`` atomically (write, then rename); shared storages are cloned."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(clean, str(tmp))
        else:
            torch.save(clean, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def convert(src: str | Path, dst: str | Path) -> list[Path]:
    """Convert one weight file, or every weight file of a folder, to ``.safetensors``."""
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix in (".pth", ".pt", ".bin", ".ckpt"))
        if not files:
            raise WeightsError(f"{src}: no .pth/.pt/.bin files to convert.")
        out = []
        for f in files:
            try:
                out += convert(f, dst / f.relative_to(src).with_suffix(".safetensors"))
            except WeightsError as exc:
                if "flat mapping" not in str(exc):
                    raise
                log.warning("skipped %s: not a plain state dict (e.g. the whisper checkpoint)", f)
        return out
    if dst.suffix != ".safetensors":
        dst = dst / src.with_suffix(".safetensors").name if dst.is_dir() or not dst.suffix else dst.with_suffix(".safetensors")
    state = read_state_dict(src, check_finite=False)
    log.info("converting %s (%d tensors) -> %s", src, len(state), dst)
    return [save_state_dict(state, dst)]
