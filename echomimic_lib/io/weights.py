"""Reading weight files safely and loading them strictly into the networks.

- ``.pth``/``.pt``/``.bin``: ``torch.load(weights_only=True)``; a pickle that would build anything
  but tensors is refused (:class:`UnsafeFileError`).
- ``.safetensors``: safetensors.
- Every floating tensor is checked for NaN/Inf; key sets are compared strictly and mismatches are
  reported with the file name, the first few missing / unexpected / wrong-shape keys and counts.

Loading reads each file once. The networks are built on the meta device and :func:`load_strict` assigns
their tensors (``load_state_dict(assign=True)``): for a GPU the ``.pth`` files are memory-mapped
(``torch.load(mmap=True, weights_only=True)``) and copied from the mapping straight to the device; for
the CPU they are read into private memory, which the network adopts as it is when the dtype matches
(else one cast copy). CPU weights therefore never live in a file-backed mapping (computing from one
thrashed the page cache under memory pressure) and no file pages are held beside them. safetensors
reads are private memory too.
NaN/Inf are checked per tensor (right after its copy, or on the adopted tensor), with one device read for
the whole network.
"""
from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingWeightsError, UnsafeFileError, WeightsError
from .file_safety import make_folders, publish, publish_all, refuse_existing, regular_target, remove_folders, temp_beside
from .os_errors import not_file_text, writing

log = logging.getLogger(__name__)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class StateDict(dict):
    """A state dict read by :func:`read_state_dict`. ``owned``: its tensors are private memory (a safetensors
    read) that a network may adopt as they are; otherwise (a memory-mapped ``.pth``) they are copied once."""

    owned: bool = False


def read_state_dict(path: str | Path, check_finite: bool = True, mmap: bool = True) -> StateDict:
    """Read a flat ``{name: tensor}`` state dict (CPU) from a .safetensors or torch pickle file.

    ``mmap``: a ``.pth`` stays memory-mapped until its tensors are copied (to a GPU: no host copy);
    ``mmap=False`` reads it into private memory that a CPU network adopts as it is (no file pages held
    while loading). ``check_finite=False`` leaves the NaN/Inf check to :func:`load_strict`."""
    path = Path(path)
    if problem := not_file_text(path, "weight file not found"):
        fix = (f"{path}: {problem}; download the weights again (`echomimic download`) or give the path of the "
               ".safetensors / .pth file.")
        if not os.path.exists(path):  # nothing there (or a link to nothing): missing
            raise MissingWeightsError(fix, missing=[str(path)])
        raise WeightsError(fix)  # a pipe, a device, a folder: there, but no weight file
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty (an interrupted download?). Delete it and download it again.")
    try:
        if path.suffix == ".safetensors":
            sd, owned = _read_safetensors(path), True
        else:
            sd, mapped = _read_torch(path, mmap)
            owned = not mapped
    except OSError as exc:  # it exists, but the system will not let it be read: not a damaged download
        from .os_errors import refused

        if (err := refused(exc, path, error=WeightsError)) is None:
            raise
        raise err from exc
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        else:
            raise WeightsError(f"{path}: expected a flat mapping of parameter names to tensors, found {type(sd).__name__}.")
    out = StateDict(sd)
    out.owned = owned
    if check_finite:
        _raise_nonfinite(out, str(path))
    return out


def _checksum(v: torch.Tensor) -> torch.Tensor:
    """A 0-d sum that is finite exactly when every element is (NaN / Inf propagate; fp32 accumulation
    cannot overflow for weights)."""
    return v.sum(dtype=torch.float32) if v.dtype in (torch.float16, torch.bfloat16, torch.float32) else v.float().sum()


def _raise_nonfinite(tensors: dict, label: str, sums: dict | None = None) -> None:
    """Raise naming every non-finite floating tensor; ``sums`` (name -> :func:`_checksum`) if already
    computed. One read of one stacked flag tensor, whatever the device."""
    if sums is None:
        sums = {k: _checksum(v) for k, v in tensors.items() if v.is_floating_point()}
    if not sums:
        return
    names = list(sums)
    flags = torch.isfinite(torch.stack([sums[n] for n in names]))
    if bool(flags.all()):
        return
    bad = [n for n, ok in zip(names, flags.tolist()) if not ok]
    raise WeightsError(
        f"{label}: {len(bad)} tensor(s) contain NaN or Inf values, e.g. {', '.join(bad[:5])}. "
        "The file is damaged (or was saved from a diverged training run); download or export it again."
    )


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        from .os_errors import is_os_refusal

        if is_os_refusal(exc):  # the system's refusal (permissions, no file handles left): read_state_dict says which
            raise
        raise WeightsError(f"{path}: not a readable safetensors file ({exc}); it may be truncated. Download it again.") from exc


def _read_torch(path: Path, mmap: bool):
    """(state, memory-mapped?) of a torch pickle (legacy-format files cannot be mapped: read)."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # neither a zip (torch.save) nor a pickle (legacy torch.save)
        raise WeightsError(f"{path}: not a PyTorch weight file (it is neither a torch zip archive nor a pickle; a text "
                           "file, an HTML page saved by a browser, or another format?). Give a .pth/.pt/.bin/.safetensors file.")
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True), True
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
        return torch.load(path, map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise UnsafeFileError(
                f"{path}: refused to load. The file contains pickled objects other than tensors, which could run code "
                "when loaded. Use the official weights, or convert trusted files to .safetensors with `echomimic convert`."
            ) from exc
        raise WeightsError(f"{path}: corrupt pickle ({exc}). Download it again.") from exc
    except (EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: the file is truncated or corrupt ({type(exc).__name__}: {exc}). Download it again.") from exc
    except (RuntimeError, KeyError, IndexError, TypeError, AttributeError) as exc:  # the weights-only unpickler on garbage
        raise WeightsError(f"{path}: cannot be read as PyTorch weights ({type(exc).__name__}: {exc}). It may be truncated or "
                           "not a weight file; download it again.") from exc


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


def load_strict(model: nn.Module, state, label: str, device=None, dtype: torch.dtype | None = None, hint: str = "",
                check_finite: bool = True) -> nn.Module:
    """Check keys/shapes strictly, then give every tensor its own memory (cast to ``dtype``, on ``device``)
    in one copy and assign it (see the module docstring). ``state`` is a dict, or a list of dicts (one per
    file: each is placed and released in turn, so only one file is mapped at a time).

    Works for a model built on the meta device: tensors are assigned, never allocated twice. Tensors that
    are views into a larger storage (V2's pose_encoder.pth) get storage of their own, so the big buffer is
    freed. Floating tensors are checked for NaN/Inf after their copy (``check_finite``).
    """
    parts = state if isinstance(state, list) else [state]
    expected = model.state_dict()
    keys = {}
    for part in parts:
        keys.update({k: v for k, v in part.items()})
    report = describe_mismatch(expected, keys, label)
    if report:
        raise WeightsError(report + (f"\n  {hint}" if hint else ""))
    del keys
    dev = torch.device(device or "cpu")
    new, sums = {}, {}
    while parts:
        part = parts.pop(0)
        owned = getattr(part, "owned", False)
        for k, t in part.items():
            ref = expected[k]
            if not ref.is_floating_point():
                target = ref.dtype
            elif k.endswith("pos_encoder.pe"):
                target = torch.float32  # positional tables stay exact
            else:
                target = dtype or (torch.float32 if ref.device.type == "meta" else ref.dtype)
            adopt = (owned and t.device == dev and t.dtype == target and t.is_contiguous()
                     and t.untyped_storage().nbytes() == t.numel() * t.element_size())
            if not adopt:
                t = torch.empty(t.shape, dtype=target, device=dev).copy_(t)
            if check_finite and t.is_floating_point():
                sums[k] = _checksum(t)  # right after the copy, while the tensor is in cache
            new[k] = t
        del part
    if check_finite:
        _raise_nonfinite(new, label, sums)
    model.load_state_dict(new, strict=True, assign=True)
    return model


def save_state_dict(state: dict, path: str | Path) -> Path:
    """Write ``.safetensors`` or ``.pth`` atomically (write, then rename); shared storages are cloned."""
    path = Path(path)
    tmp = temp_beside(path)  # unique, beside a link's target (the link is written through); a folder there is refused
    try:
        with writing(path):  # a full disk names the destination, not the temporary file removed below
            _write_weights(state, tmp, path.suffix)
            publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_weights(state: dict, tmp: Path, suffix: str) -> None:
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(clean, str(tmp))
    else:
        torch.save(clean, tmp)


def convert(src: str | Path, dst: str | Path, force: bool = False) -> list[Path]:
    """Convert one weight file, or every weight file of a folder, to ``.safetensors``.

    Every destination is checked before anything is written: an existing one is never replaced unless
    ``force``. Each file is written to a temporary file beside its destination, and all are moved into place together
    once every one is written: when a write fails (a full disk) or Ctrl-C stops it, nothing half-written stays, the
    folders this call created are removed and every file that was there before is as it was."""
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix in (".pth", ".pt", ".bin", ".ckpt"))
        if not files:
            raise WeightsError(f"{src}: no .pth/.pt/.bin files to convert.")
        jobs = [(f, dst / f.relative_to(src).with_suffix(".safetensors")) for f in files]
        firsts: dict[Path, Path] = {}
        for f, d in jobs:  # model.pth and model.bin: the second conversion would replace the first
            if firsts.setdefault(d, f) != f:
                raise WeightsError(f"{firsts[d]} and {f} would both be converted to {d}, the second replacing the first; "
                                   "convert them one at a time (echomimic convert FILE NAME.safetensors).")
    else:
        if dst.suffix != ".safetensors":
            dst = dst / src.with_suffix(".safetensors").name if dst.is_dir() or not dst.suffix else dst.with_suffix(".safetensors")
        jobs = [(src, dst)]
    if not force:
        refuse_existing([d for _, d in jobs])
    staged: list[tuple[Path, Path]] = []  # (temporary file beside it, destination)
    made: list[Path] = []  # folders this call created
    try:
        for f, d in jobs:
            try:
                state = read_state_dict(f, check_finite=False)
            except WeightsError as exc:
                if len(jobs) == 1 or "flat mapping" not in str(exc):
                    raise
                log.warning("skipped %s: not a plain state dict (e.g. the whisper checkpoint)", f)
                continue
            log.info("converting %s (%d tensors) -> %s", f, len(state), d)
            make_folders(regular_target(d).parent, made)
            staged.append((temp_beside(d), d))
            with writing(d):  # safetensors' full disk is no OSError: named, in the one form (all removed below)
                _write_weights(state, staged[-1][0], d.suffix)
            del state
        return publish_all(staged)  # every file in place together, once all are written
    except BaseException:  # a failure or Ctrl-C: no temporary file, no folder of ours left; what was there stays
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        remove_folders(made)
        raise


V3_REFETCH = "echomimic download --weights v3-flash (ComfyUI: the EchoMimic V3 Loader's auto_download)"


def from_hf_folder(load, folder: str | Path, what: str, fetch: str = V3_REFETCH):
    """``load()`` -- a transformers ``from_pretrained`` of the Hugging Face ``folder`` -- with a damaged or cut-short
    file there named (a half-downloaded model.safetensors was a bare SafetensorError, a cut pytorch_model.bin
    ``OSError: [Errno 22] Invalid argument``, a cut config.json a JSON complaint): folder, part and how to fetch it again."""
    import logging

    quiet = not logging.getLogger("echomimic_lib").isEnabledFor(logging.INFO)  # ``-q``: no "Loading weights" bars either
    bars = None
    if quiet:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    try:
        return load()
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise WeightsError(f"{folder}: the {what} cannot be read ({type(exc).__name__}: {exc}); a file there is damaged or "
                           f"cut short (an interrupted download?). Delete the folder and get it again: {fetch}.") from exc
    finally:
        if bars:
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()
