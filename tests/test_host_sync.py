"""No host synchronisation in the denoising loop.

A ``TorchDispatchMode`` guard records every op that reads a device value back to the host (on a GPU each
of them stalls the CPU until the queue drains): ``.item()`` / ``bool(t)`` / ``int(t)``
(``aten._local_scalar_dense``), ``nonzero``, ``is_nonzero``, ``equal``, data-dependent output sizes
(``masked_select``, ``unique``, tensor-count ``repeat_interleave``) and boolean-mask indexing. It runs on the
CPU with tiny random weights: during full denoiser forwards, and during a whole sampling run's denoising
loop (every window of every step, between the reference pass and the VAE decode).
"""
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from echomimic_lib.audio import AudioFeatures
from echomimic_lib.model_set import load_models
from echomimic_lib.pipeline import MaskCondition, Sampler, settings_for
from tests._tiny_shared import tiny_v1_copy

aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.is_nonzero, aten.equal, aten.masked_select, aten._unique2,
            aten.unique_dim, aten.unique_consecutive}


def _bool_index(args) -> bool:
    idx = args[1] if len(args) > 1 else None
    return isinstance(idx, (list, tuple)) and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in idx)


class HostSyncGuard(TorchDispatchMode):
    """Records (op name) of every host-synchronising op while ``armed``."""

    def __init__(self, armed: bool = True):
        super().__init__()
        self.armed, self.hits = armed, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.armed:
            packet = func.overloadpacket
            if packet in SYNC_OPS:
                self.hits.append(str(func))
            elif packet is aten.repeat_interleave and isinstance(args[1] if len(args) > 1 else kwargs.get("repeats"), torch.Tensor):
                self.hits.append(str(func))
            elif packet in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_) and _bool_index(args):
                self.hits.append(f"{func} with a boolean mask")
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_models(tiny_v1_copy(tmp_path_factory, tmp_path_factory.mktemp("tiny_sync") / "v1"), "v1_audio", "normal", with_audio=False)


def test_the_guard_catches_host_reads():
    x = torch.arange(6.0)
    with HostSyncGuard() as guard:
        x.nonzero()
        bool(x.sum() > 0)
        x[x > 2] = 0.0
        float(x.max())
    assert len(guard.hits) == 4, guard.hits


def test_denoiser_forward_has_no_host_reads(models):
    den = models.denoiser
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        bank, _ = models.reference.forward_reference(torch.randn(1, 4, 8, 8, generator=g))
        kv = den.prepare_reference(bank)
        x = torch.randn(1, 4, 12, 8, 8, generator=g)
        audio = torch.randn(1, 12, 50, 384, generator=g)
        cond = torch.randn(1, 32, 1, 8, 8, generator=g)
        den.fuse_projections()
        with HostSyncGuard() as guard:
            den(torch.cat([x, x]), 801, audio=audio, cond=cond, reference=kv, uncond_rows=1)  # CFG batch
            den(x, torch.tensor(801), audio=audio, cond=cond, reference=kv)  # single batch, tensor timestep
            den(x, 801)  # no reference, no audio
    assert guard.hits == []


class _GuardedLoop(Sampler):
    """Arms the guard for exactly the denoising loop: after the reference pass, until the decode."""

    guard: HostSyncGuard

    def reference_kv(self, ref_latents):
        kv = super().reference_kv(ref_latents)
        self.guard.armed = True
        return kv

    def decode(self, *args, **kwargs):
        self.guard.armed = False
        return super().decode(*args, **kwargs)


@pytest.mark.parametrize("cfg,windows_per_batch,deep_cache", [(2.5, 1, 0), (1.0, 2, 0), (2.5, 2, 2)])
def test_denoising_loop_has_no_host_reads(models, cfg, windows_per_batch, deep_cache):
    frames, size = 30, 64  # 4 windows per step, two of them wrap around the end of the clip
    rows = int(np.ceil(frames * 50 / 24))
    audio = AudioFeatures(torch.randn(rows, 5, 384, generator=torch.Generator().manual_seed(1)), rows * 320)
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = MaskCondition(np.pad(np.ones((32, 32)), 16))
    s = settings_for("v1-audio", "normal", width=size, height=size, steps=2, cfg=cfg, num_frames=frames,
                     windows_per_batch=windows_per_batch, decode_batch=frames, deep_cache=deep_cache)
    sampler = _GuardedLoop(models)
    sampler.guard = HostSyncGuard(armed=False)
    calls = []
    with sampler.guard:
        result = sampler(image, audio, mask, s, progress=lambda done, total: calls.append(done))
    assert calls and result.frames.shape == (frames, size, size, 3)
    assert not sampler.guard.armed  # the decode ran after the loop
    assert sampler.guard.hits == []
