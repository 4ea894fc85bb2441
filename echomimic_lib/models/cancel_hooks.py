"""Cancel inside one long network call: a caller's check (ComfyUI's interrupt test, passed in by the nodes; the
library never imports ComfyUI) run before each call of some inner modules, e.g. the Wan VAE's decoder, which a
single ``decode`` calls once per latent frame.

:func:`checked_between` registers a forward pre-hook for the duration of a ``with`` block and always removes it (also
when the check raises). The hook only calls the check: the outputs are those of the unhooked call, bit for bit."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable

import torch


def network(model) -> torch.nn.Module | None:
    """The ``torch.nn.Module`` behind a VAE object: the module itself, ComfyUI's ``VAE.first_stage_model``, or a
    wrapper's ``.vae`` (followed a few levels); None when there is none."""
    for _ in range(4):
        if isinstance(model, torch.nn.Module):
            return model
        inner = getattr(model, "first_stage_model", None)
        model = inner if inner is not None else getattr(model, "vae", None)
        if model is None:
            return None
    return None


def part(model, name: str) -> torch.nn.Module | None:
    """``network(model).<name>`` when it is a module (``encoder``, ``decoder``), else None."""
    net = network(model)
    inner = getattr(net, name, None) if net is not None else None
    return inner if isinstance(inner, torch.nn.Module) else None


@contextmanager
def checked_between(check: Callable[[], None] | None, modules: Iterable[torch.nn.Module | None], owner=None):
    """Within the block, ``check()`` runs before every call of each of ``modules`` (None entries skipped); when it (or
    anything else) raises, ``owner.clear_cache()`` (the Wan VAEs' per-call feature cache) frees what the cut-short call
    kept. No ``check``: nothing is registered."""
    if check is None:
        yield
        return

    def hook(module, args):
        check()

    handles = [m.register_forward_pre_hook(hook) for m in modules if m is not None]
    try:
        yield
    except BaseException:
        clear = getattr(owner, "clear_cache", None)
        if callable(clear):
            clear()
        raise
    finally:
        for handle in handles:
            handle.remove()
