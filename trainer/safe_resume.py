"""Resuming never runs code from a run folder.

``Accelerator.load_state`` reads the optimizer, LR scheduler, RNG states and every registered object
(``custom_checkpoint_N.pkl``) with ``torch.load``, some with ``weights_only=False``: a tampered file would run
its payload. Before a resume:

1. :func:`check_checkpoint` reads every pickle-based file of the checkpoint folder with weights-only loading
   (tensors, numbers, strings, containers, and the numpy arrays of the RNG states) and refuses the first
   file that holds anything else, naming it (nothing has been built yet: the check comes first);
2. :func:`weights_only_loading` then wraps ``load_state`` so that every ``torch.load`` inside it is
   weights-only whatever its caller asks (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), so a file swapped after the
   check is refused as well.

``.safetensors`` and ``.json`` files hold no code and are not unpickled. FSDP's sharded checkpoints
(``torch.distributed.checkpoint`` folders): the ``.distcp`` shards are raw tensor bytes (their non-tensor items
are read by ``torch.load`` inside ``load_state``, weights-only by (2)), and the ``.metadata`` index, which
``torch.distributed.checkpoint`` unpickles with plain ``pickle``, is checked with an unpickler that builds only
its own metadata classes, torch dtypes and sizes (:func:`_check_dcp_metadata`), refuses an index over 64 MiB before
reading it, and spends the allow-list unpickler's building budget (:mod:`echomimic_lib.io.safe_pickle`) on each call.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import types
from dataclasses import is_dataclass
from enum import Enum
from pathlib import Path

from .config import ConfigError

SAFE_SUFFIXES = {".safetensors", ".json", ".distcp"}
DCP_ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
               ("collections", "OrderedDict")}
_DCP_INDEX = re.compile(r"(?:__\d+)?\.metadata")  # .metadata, or a rank's __N.metadata (FileSystemReader's names)
MAX_DCP_METADATA_BYTES = 64 << 20  # the index of a sharded checkpoint is a few MB, even for a large model


class UnsafeCheckpointError(ConfigError):
    """A checkpoint file holds pickled objects that weights-only loading refuses (it could run code)."""


def _numpy_globals() -> list:
    """What the RNG states need beyond tensors: numpy arrays, dtypes, and ``_codecs.encode`` (numpy's pickles)."""
    from codecs import encode

    import numpy as np

    core = getattr(np, "_core", None) or np.core
    out = [core.multiarray._reconstruct, np.ndarray, np.dtype, encode]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in ("UInt32DType", "Float64DType", "Int64DType") if hasattr(dtypes, n)]
    return out


@contextlib.contextmanager
def weights_only_loading():
    """Every ``torch.load`` in the block is weights-only (plus the numpy types of RNG states)."""
    import torch

    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; older ones rely on check_checkpoint
    try:
        with allow(_numpy_globals()) if allow else contextlib.nullcontext(), _dcp_index_checked():
            yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


@contextlib.contextmanager
def _dcp_index_checked():
    """``torch.distributed.checkpoint`` reads a ``.metadata`` index with plain ``pickle.load``: in the block its module
    sees a ``pickle`` whose ``load`` is :class:`_DCPUnpickler`'s, so an index swapped after :func:`check_checkpoint`
    is refused too."""
    try:
        from torch.distributed.checkpoint import filesystem
    except ImportError:  # a torch built without torch.distributed reads no sharded checkpoint
        filesystem = None
    if getattr(filesystem, "pickle", None) is not pickle:
        yield
        return
    shim = types.SimpleNamespace(**{k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
    shim.load = lambda file, **_: _DCPUnpickler(file, getattr(file, "name", ".metadata")).load()
    filesystem.pickle = shim
    try:
        yield
    finally:
        filesystem.pickle = pickle


def _load_mapped(path: Path):
    """Unpickle weights-only with the tensors memory-mapped (a multi-GB optimizer state is not read into RAM just to
    be checked); files in the legacy format cannot be mapped and are read."""
    import zipfile

    import torch

    mmap = zipfile.is_zipfile(path)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _stream_size(file) -> int:
    """The bytes of an open index file (0 when it cannot tell: the budget's floor applies)."""
    try:
        return os.fstat(file.fileno()).st_size
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    try:
        here = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(here)
        return end
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0


class _DCPUnpickler(pickle.Unpickler):
    """Builds only a ``torch.distributed.checkpoint`` index: its record classes, torch dtypes and sizes; refuses an
    index over :data:`MAX_DCP_METADATA_BYTES` before reading it, and spends the allow-list unpickler's budget
    (:mod:`echomimic_lib.io.safe_pickle`: elements proportional to the file's size) on every call it makes."""

    def __init__(self, file, source: str = ".metadata"):
        from echomimic_lib.io.safe_pickle import BUDGET_PER_BYTE, MIN_BUDGET

        size = _stream_size(file)
        if size > MAX_DCP_METADATA_BYTES:
            raise UnsafeCheckpointError(
                f"{source}: {size} bytes is not a torch.distributed.checkpoint index (one is a few MB; at most "
                f"{MAX_DCP_METADATA_BYTES >> 20} MiB is read): the checkpoint is damaged or was tampered with. Resume from "
                "a checkpoint you trust (--resume CHECKPOINT_FOLDER), or start a new run.")
        super().__init__(file)
        self.budget, self.per_byte = max(MIN_BUDGET, BUDGET_PER_BYTE * size), BUDGET_PER_BYTE

    def spend(self, n: int, what: str) -> None:
        self.budget -= n
        if self.budget < 0:
            self.refuse(f"{what}, past the building budget of {self.per_byte} elements per byte of the index (a pickle bomb?)")

    def refuse(self, what: str) -> None:
        raise pickle.UnpicklingError(f"refused to build {what}")

    def find_class(self, module, name):
        import torch

        if "." in name:  # protocol 4 looks up dotted names: 'torch.distributed.checkpoint.metadata' + 'os.system'
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not part of a torch.distributed.checkpoint index")
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return super().find_class(module, name)
        if (module, name) in DCP_ALLOWED:
            from echomimic_lib.io.safe_pickle import BudgetGuard

            return BudgetGuard(super().find_class(module, name), self, name)
        if module.startswith("torch.distributed.checkpoint."):  # only its own record classes, never a function or an
            found = super().find_class(module, name)  # import of the module (os, pickle) or a reader/writer class
            if isinstance(found, type) and found.__module__ == module and (is_dataclass(found) or issubclass(found, Enum)):
                return found
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not part of a torch.distributed.checkpoint index")


def _check_dcp_metadata(path: Path) -> None:
    with open(path, "rb") as f:
        _DCPUnpickler(f, str(path)).load()


def check_checkpoint(ckpt: str | Path) -> list[Path]:
    """Read every pickle-based file under ``ckpt`` weights-only; returns the files checked.

    Raises :class:`UnsafeCheckpointError` naming the first file that would build anything else, or a
    :class:`~trainer.config.ConfigError` naming a file that is not readable at all."""
    ckpt = Path(ckpt)
    checked = []
    for path in sorted(p for p in ckpt.rglob("*") if p.is_file() and p.suffix not in SAFE_SUFFIXES):
        try:
            if _DCP_INDEX.fullmatch(path.name):  # a torch.distributed.checkpoint index (FSDP sharded state; per rank too)
                _check_dcp_metadata(path)
            else:
                with weights_only_loading():
                    _load_mapped(path)
        except UnsafeCheckpointError:
            raise
        except pickle.UnpicklingError as exc:
            raise UnsafeCheckpointError(
                f"{path}: refused to load. This checkpoint file holds pickled objects other than tensors, numbers and "
                f"arrays, which could run code when loaded ({str(exc).splitlines()[0][:160]}). The run folder may have "
                "been tampered with: resume from a checkpoint you trust, or start a new run.") from exc
        except Exception as exc:  # truncated, not a torch file at all
            raise ConfigError(f"{path}: this checkpoint file cannot be read ({type(exc).__name__}: {exc}); the checkpoint is "
                              "damaged. Resume from an older checkpoint (--resume CHECKPOINT_FOLDER) or start over.") from exc
        checked.append(path)
    return checked
