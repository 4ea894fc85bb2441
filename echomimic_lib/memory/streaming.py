"""Low-VRAM mode: the denoiser streamed block by block.

The weights stay on the offload device (pinned host memory on CUDA). Each *unit* (a ResNet block, a
spatial transformer, a motion module, an up/down sampler, and the small input/output layers) is copied to
the compute device just before its ``forward`` and dropped right after. The copies go into two fixed
device buffers ("slots", each the size of the largest unit, about 0.1 GB in fp16): one holds the running
unit, the other the next one, prefetched on a side stream on CUDA while the current one computes. So the
streamed weights take two slots instead of the denoiser's 2.6 GB, the allocator sees no churn, and the
arithmetic is unchanged (same weights, same kernels): the output equals the default path's.

What to prefetch is learned per call *layout*: the first call of each layout records the order its units run in,
later calls of that layout prefetch by it. A DeepCache partial call (``cached=`` given) runs only some units, in
another order than a whole call, so it is a layout of its own (with its branch); one learned order would guess
wrong where a partial call leaves the down path, in every partial call.

Why not ``diffusers.hooks.apply_group_offloading`` or accelerate's offload hooks: the pack supports
diffusers >= 0.30 (group offloading came in 0.33 and its arguments changed since), accelerate is not a
runtime dependency, and the VRAM bench needs the streamed bytes reported to its tracker (``on_move``).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

ALIGN = 256  # bytes; every tensor in a slot starts at a multiple (CUDA kernels want aligned pointers)


def stream_units(denoiser: nn.Module) -> list[nn.Module]:
    """The modules streamed one at a time: each block's children, plus the top-level layers."""
    units = []
    for name, child in denoiser.named_children():
        if isinstance(child, nn.ModuleList) or name == "mid_block":
            blocks = child if isinstance(child, nn.ModuleList) else [child]
            for block in blocks:
                for part in block.children():
                    units.extend(part if isinstance(part, nn.ModuleList) else [part])
        elif any(True for _ in child.parameters()):
            units.append(child)
    return [u for u in units if any(True for _ in u.parameters())]


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return list(module.parameters()) + list(module.buffers())


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _nbytes(module: nn.Module) -> int:
    return sum(_aligned(t.numel() * t.element_size()) for t in _tensors(module))


def call_layout(kwargs: dict) -> object:
    """Which units a denoiser call runs, as a key: a whole call, or a DeepCache partial call of a branch."""
    return ("partial", kwargs.get("cache_branch")) if kwargs.get("cached") is not None else "whole"


class BlockStreamer:
    """Forward hooks that copy each unit to ``device`` for its forward (see the module docstring).

    ``on_move(unit_or_None, nbytes)`` reports device bytes taken (+) and given back (-): the two slots on
    :meth:`attach` / :meth:`detach`, held units on :meth:`hold` / :meth:`release`. ``copy=False`` only
    reports (the bench's fake tensors already live on the fake device)."""

    def __init__(self, denoiser: nn.Module, device, offload_device="cpu", *, prefetch: bool = True,
                 on_move: Callable[[nn.Module | None, int], None] | None = None, copy: bool = True):
        self.device, self.offload_device = torch.device(device), torch.device(offload_device)
        self.units = stream_units(denoiser)
        self.index = {id(u): i for i, u in enumerate(self.units)}
        self.slot_bytes = max(_nbytes(u) for u in self.units)
        self.on_move, self.copy = on_move, copy
        self.cuda = self.device.type == "cuda" and copy
        self.prefetch = prefetch and self.cuda  # on the CPU a prefetch would only be a second copy in the way
        self.stream = torch.cuda.Stream(self.device) if self.prefetch else None
        self._host: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._slots: list[torch.Tensor] = []
        self._free: list[int] = []
        self._where: dict[int, int] = {}  # unit -> slot it occupies
        self._ready: dict[int, object] = {}  # unit -> CUDA event of its copy (prefetched) or None
        self._slot_done: dict[int, object] = {}  # slot -> CUDA event: the last unit using it has finished
        self._held: dict[int, nn.Module] = {}
        self._handles = []
        self.denoiser = denoiser
        self._orders: dict[object, list[int]] = {}  # call layout -> its units in run order (recorded on its first call)
        self._layout: object = None  # the running call's layout (None between calls)
        self._seq: list[int] = []  # units run so far in this call
        self._pos = -1  # where this call is in its layout's recorded order
        self._guess: int | None = None  # the unit predicted to run next (prefetched when prefetching)
        self.guesses = self.misses = 0  # predictions made, and wrong ones (a wrong prefetch means a synchronous copy)

    # ----------------------------------------------------------------- host copies
    def _prepare_host(self, unit: nn.Module) -> None:
        if id(unit) in self._host:
            return
        pairs = []
        for t in _tensors(unit):
            host = t.data.to(self.offload_device)
            if self.cuda and self.offload_device.type == "cpu" and not host.is_pinned():
                host = host.pin_memory()
            t.data = host
            pairs.append((t, host))
        self._host[id(unit)] = pairs

    def window_bytes(self) -> int:
        """Device bytes the streamed weights take while attached (the two slots)."""
        return 2 * self.slot_bytes

    def bytes_of(self, modules) -> int:
        """Device bytes of the units holding ``modules`` (see :meth:`hold`)."""
        units = {id(u): u for u in (self._unit_of(m) for m in modules)}
        return sum(_nbytes(u) for u in units.values())

    # ----------------------------------------------------------------- moves
    def _fill(self, unit: nn.Module, dest, stream=None) -> None:
        """Copy a unit's weights into ``dest`` (a slot) or into fresh device tensors (dest None)."""
        ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with ctx:
            off = 0
            for t, host in self._host[id(unit)]:
                n = host.numel() * host.element_size()
                if dest is None:
                    t.data = host.to(self.device, non_blocking=self.cuda, copy=True)
                else:
                    view = dest[off : off + n].view(host.dtype).view(host.shape)
                    view.copy_(host, non_blocking=self.cuda)
                    t.data = view
                off += _aligned(n)

    def _onload(self, unit: nn.Module, stream=None) -> bool:
        key = id(unit)
        if key in self._where or key in self._held:
            return True
        if not self._free:
            return False
        slot = self._free.pop(0)
        self._where[key] = slot
        if self.copy:
            if stream is not None and slot in self._slot_done:
                stream.wait_event(self._slot_done[slot])  # the slot's previous unit has finished computing
            self._fill(unit, self._slots[slot], stream)
        self._ready[key] = stream.record_event() if stream is not None else None
        return True

    def _wait(self, unit: nn.Module) -> None:
        event = self._ready.pop(id(unit), None)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def _offload(self, unit: nn.Module) -> None:
        key = id(unit)
        slot = self._where.pop(key, None)
        if slot is None:
            return
        self._ready.pop(key, None)
        if self.copy:
            for t, host in self._host[key]:
                t.data = host
            if self.cuda:
                self._slot_done[slot] = torch.cuda.current_stream(self.device).record_event()
        self._free.append(slot)

    def _pre(self, unit, args):
        if not self._onload(unit):  # both slots busy (the prefetch guessed wrong): drop the prefetched unit
            self._offload(self.units[self.index[next(iter(self._where))]])
            self._onload(unit)
        self._wait(unit)
        i = self.index[id(unit)]
        if self._guess is not None:
            self.guesses += 1
            self.misses += self._guess != i
            self._guess = None
        if self._layout is None:  # a unit called outside a denoiser call: nothing to learn or predict
            return
        self._seq.append(i)
        order = self._orders.get(self._layout)
        if not order:  # this layout's first call: it is being recorded
            return
        pos = self._pos + 1
        if pos >= len(order) or order[pos] != i:  # off the recorded order: pick it up again where this unit is
            pos = order.index(i) if i in order else None
        self._pos = -1 if pos is None else pos
        if pos is not None:
            self._guess = order[(pos + 1) % len(order)]  # after the last unit: the first of the next call
            if self.prefetch:
                self._onload(self.units[self._guess], self.stream)

    def _call_start(self, module, args, kwargs):
        self._layout, self._seq, self._pos = call_layout(kwargs), [], -1

    def _call_end(self, module, args, output):
        self._orders.setdefault(self._layout, self._seq)
        self._layout = None

    def _post(self, unit, args, output):
        if id(unit) not in self._held:
            self._offload(unit)

    # ----------------------------------------------------------------- public
    def attach(self) -> None:
        if self._handles:
            return
        self._handles.append(self.denoiser.register_forward_pre_hook(self._call_start, with_kwargs=True))
        self._handles.append(self.denoiser.register_forward_hook(self._call_end))
        for unit in self.units:
            if self.copy:
                self._prepare_host(unit)
            self._handles.append(unit.register_forward_pre_hook(self._pre))
            self._handles.append(unit.register_forward_hook(self._post))
        if self.copy:
            self._slots = [torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device) for _ in range(2)]
        self._free = [0, 1]
        if self.on_move:
            self.on_move(None, self.window_bytes())

    def hold(self, modules) -> None:
        """Keep the units holding these modules on the device until :meth:`release` (direct calls such as the
        reference K/V projections, which do not go through a unit's forward). Held units get their own
        device tensors, outside the slots."""
        for m in modules:
            unit = self._unit_of(m)
            if id(unit) in self._held:
                continue
            self._offload(unit)
            if self.copy:
                self._prepare_host(unit)
                self._fill(unit, None)
            self._held[id(unit)] = unit
            if self.on_move:
                self.on_move(unit, _nbytes(unit))

    def release(self) -> None:
        held, self._held = self._held, {}
        for unit in held.values():
            if self.copy:
                for t, host in self._host[id(unit)]:
                    t.data = host
            if self.on_move:
                self.on_move(unit, -_nbytes(unit))

    def detach(self) -> None:
        self.release()
        for unit in self.units:
            self._offload(unit)
        for h in self._handles:
            h.remove()
        if self.stream is not None:
            self.stream.synchronize()  # a prefetch may still be copying into a slot
        if self._handles and self.on_move:
            self.on_move(None, -self.window_bytes())
        self._handles, self._slots, self._free, self._slot_done = [], [], [], {}

    def _unit_of(self, module: nn.Module) -> nn.Module:
        for u in self.units:
            if any(m is module for m in u.modules()):
                return u
        raise ValueError("module is not part of a streamed unit")
