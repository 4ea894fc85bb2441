"""The sampler nodes' IMAGE made one way, and Cancel.

V1/V2 and V3 Samplers both fill one preallocated float32 IMAGE chunk by chunk (``pipeline.decode.HostFrames``, after
the host-memory check), to the frames their old ways gave bit for bit. Cancel (ComfyUI's interrupt flag, here the
bridge's stand-in ``INTERRUPTED``) mid-denoise or mid-decode stops within a step / chunk, frees the IMAGE at once (even
while the exception's traceback is held), and leaves the models as they were: the next run with the same seed gives
the frames of a run that was never cancelled. On tiny random weights."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests._pack import load_pack, sub
from tests.test_nodes import audio, loader, models  # noqa: F401  (the tiny ComfyUI models fixture)

N = load_pack().NODE_CLASS_MAPPINGS
C = sub("nodes.comfy_bridge")
decode = sub("echomimic_lib.pipeline.decode")
REF = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def batches(monkeypatch):
    """Every HostFrames the nodes make, with its storage (to see it freed)."""
    made = []

    class Spy(decode.HostFrames):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append((self, self.image.untyped_storage()))

    monkeypatch.setattr(decode, "HostFrames", Spy)
    return made


def _state(*modules) -> dict:
    """Everything a cancelled run could leave behind on a network: weights, devices, hooks, wrappers."""
    out = {}
    for i, module in enumerate(modules):
        for name, t in module.state_dict(keep_vars=True).items():
            out[f"{i}.{name}"] = (t.detach().clone(), t.device)
        out[f"{i}.hooks"] = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
        out[f"{i}.kinds"] = [type(m).__name__ for m in module.modules()]
        out[f"{i}.forwards"] = sum("forward" in m.__dict__ for m in module.modules())  # a compiled / patched forward
    return out


def _same_state(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(torch.equal(a[k][0], b[k][0]) and a[k][1] == b[k][1] if isinstance(a[k], tuple) else a[k] == b[k] for k in a)


# ------------------------------------------------------------------------------------------------------ V1 / V2
@pytest.fixture(scope="module")
def v1(models):  # noqa: F811
    handle = loader("V1 audio")
    feats = N["EchoMimicAudioEncoder"]().execute(handle, audio(0.5), 24.0)[0]  # 12 frames: 2 decode chunks of 8
    return handle, feats


def _v1_run(v1, deep_cache=0):
    handle, feats = v1
    return N["EchoMimicSampler"]().execute(handle, REF, feats, 7, 3, 2.5, 64, 64, 0, 12, 3, deep_cache=deep_cache)[0]


def _v1_nets(handle):
    m = handle.models
    return m.denoiser, m.reference, m.vae, m.cond_encoder


def test_the_v1_v2_sampler_fills_host_frames_with_the_decodes_frames_bit_for_bit(v1, batches, monkeypatch):
    chunks, real = [], decode._decode
    monkeypatch.setattr(decode, "_decode", lambda vae, z, tiled: chunks.append(real(vae, z, tiled)) or chunks[-1])
    frames = _v1_run(v1)
    old = torch.cat([(c.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1) for c in chunks])  # the old decode's IMAGE
    assert len(chunks) == 2 and frames.dtype == torch.float32 and torch.equal(frames, old)
    assert len(batches) == 1 and batches[0][0].image.data_ptr() == frames.data_ptr()  # preallocated, not a copy


def test_decode_latents_collects_into_host_frames_as_before(v1):
    vae = v1[0].models.vae
    latents = torch.randn(1, 4, 5, 8, 8, generator=torch.Generator().manual_seed(3))
    got = decode.decode_latents(vae, latents, "cpu", max_batch=2)
    with torch.no_grad():
        old = torch.cat([(decode._decode(vae, latents[0, :, s:s + 2].transpose(0, 1) / decode.VAE_SCALE, False).float()
                          / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1) for s in range(0, 5, 2)])
    assert got.shape == (5, 64, 64, 3) and torch.equal(got, old)


@pytest.mark.parametrize("deep_cache", [0, 2])
def test_cancel_mid_denoise_stops_at_the_step_frees_the_image_and_the_next_run_is_a_fresh_one(v1, batches, monkeypatch,
                                                                                             deep_cache):
    fresh = _v1_run(v1, deep_cache)
    before = _state(*_v1_nets(v1[0]))
    seen = []

    def cancel_at_2(value, total, preview):
        seen.append(value)
        if value == 2:
            C.INTERRUPTED = True  # the user presses Cancel during step 2's window

    monkeypatch.setattr(C, "PROGRESS_HOOK", cancel_at_2)
    with pytest.raises(C.InterruptProcessingException) as cancelled:
        _v1_run(v1, deep_cache)
    assert seen == [1, 2]  # no window after the cancelled one
    batch, storage = batches[-1]
    assert storage.nbytes() == 0 and batch.image.numel() == 0 and cancelled.traceback  # freed while the traceback lives
    assert not any(C.is_loaded(p) for p in C.MODEL_MANAGER.current_loaded_models)  # keep_loaded off: all put back
    assert _same_state(before, _state(*_v1_nets(v1[0])))
    monkeypatch.setattr(C, "PROGRESS_HOOK", None)
    assert torch.equal(_v1_run(v1, deep_cache), fresh)


def test_cancel_mid_decode_stops_after_the_chunk(v1, batches, monkeypatch):
    fresh = _v1_run(v1)
    calls, real = [], decode._decode

    def decode_then_cancel(vae, z, tiled):
        calls.append(len(z))
        C.INTERRUPTED = True
        return real(vae, z, tiled)

    monkeypatch.setattr(decode, "_decode", decode_then_cancel)
    with pytest.raises(C.InterruptProcessingException):
        _v1_run(v1)
    assert calls == [8]  # the second chunk was never decoded (it was: no Cancel was looked for in the decode)
    assert batches[-1][1].nbytes() == 0
    monkeypatch.setattr(decode, "_decode", real)
    assert torch.equal(_v1_run(v1), fresh)


# ------------------------------------------------------------------------------------------------------------ V3
@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    from echomimic_lib.models.wan.tiny import CLIP_DIM, TEXT_DIM, write_tiny_v3
    from echomimic_lib.models.wan.vae import DiffusersPixelVAE, load_wan_vae

    root = tmp_path_factory.mktemp("v3") / "models"
    folder = write_tiny_v3(root / "echomimic" / "v3-flash")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(C, "MODELS_DIR", root)
        node = sub("nodes.v3")
        (handle,) = node.EchoMimicV3Loader().execute("v3-flash", "fp32")
        g = torch.Generator().manual_seed(0)
        sound = {"waveform": torch.randn(1, 1, 640 * 89 + 1000, generator=g) * 0.1, "sample_rate": 16000}
        inputs = SimpleNamespace(
            handle=handle, audio={n: node.EchoMimicV3AudioEncoder().execute(handle, sound, n)[0] for n in (9, 89)},
            positive=[[torch.randn(1, 16, TEXT_DIM, generator=g), {}]],
            clip=SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, CLIP_DIM, generator=g)),
            vae=DiffusersPixelVAE(load_wan_vae(folder / "vae")), node=node)
        yield inputs


def _v3_run(v3, frames=9, vae=None, steps=3):
    size = 64 if frames <= 81 else 32  # a long clip at 32 x 32 px: its 2 chunks' decodes stay short
    return v3.node.EchoMimicV3Sampler().execute(v3.handle, v3.audio[frames], v3.positive, v3.clip, vae or v3.vae, REF,
                                                size, steps, 3.0, 5, "official", True)[0]


def test_the_v3_sampler_fills_host_frames_with_the_uint8_blocks_bit_for_bit(v3, batches, monkeypatch):
    long, blocks = sub("echomimic_lib.pipeline.wan.long"), []
    real = long.iter_long

    def kept(*a, **k):
        for block in real(*a, **k):
            blocks.append(block.copy())
            yield block

    monkeypatch.setattr(long, "iter_long", kept)
    frames = _v3_run(v3, 89, steps=1)
    old = sub("nodes.payloads").to_image(np.concatenate(blocks))  # the old IMAGE: the blocks joined, then to_image
    assert len(blocks) == 2 and torch.equal(frames, old)
    assert len(batches) == 1 and batches[0][0].image.data_ptr() == frames.data_ptr()


class _CountingVAE:
    """Core's VAE, counting decode calls; ``cancel`` presses Cancel at the first one."""

    def __init__(self, vae, cancel):
        self.vae, self.cancel, self.decodes = vae, cancel, 0
        self.latent_channels, self.latent_dim = 16, 3

    def encode(self, pixels):
        return self.vae.encode(pixels)

    def decode(self, raw):
        self.decodes += 1
        C.INTERRUPTED = C.INTERRUPTED or self.cancel
        return self.vae.decode(raw)


@pytest.mark.parametrize("where", ["denoise", "decode"])
def test_a_cancelled_v3_sampler_stops_frees_the_image_and_the_next_run_is_a_fresh_one(v3, batches, monkeypatch, where):
    """Mid-denoise: a one-shot clip, Cancel at step 2 of 3; mid-decode: a long clip (2 chunks of one step each), Cancel
    while the first chunk is decoded."""
    frames, steps = (9, 3) if where == "denoise" else (89, 1)
    fresh = _v3_run(v3, frames, steps=steps)
    net = v3.handle.patcher.model
    before = _state(net)
    seen = []

    def cancel_at_2(value, total, preview):
        seen.append(value)
        C.INTERRUPTED = C.INTERRUPTED or (where == "denoise" and value == 2)

    monkeypatch.setattr(C, "PROGRESS_HOOK", cancel_at_2)
    vae = _CountingVAE(v3.vae, cancel=where == "decode")
    with pytest.raises(C.InterruptProcessingException) as cancelled:
        _v3_run(v3, frames, vae, steps)
    if where == "denoise":
        assert seen == [1, 2] and vae.decodes == 0  # stopped at the step (TeaCache official, audio CFG on)
    else:
        assert seen == [1] and vae.decodes == 1  # the first chunk's decode, then no second chunk
    assert batches[-1][1].nbytes() == 0 and cancelled.traceback
    assert _same_state(before, _state(net))
    monkeypatch.setattr(C, "PROGRESS_HOOK", None)
    assert torch.equal(_v3_run(v3, frames, steps=steps), fresh)


# ------------------------------------------------------------------------------- V3: torch.compile with fp8 weights
def _fp8_compiled(backend):
    import torch._dynamo

    from echomimic_lib.models.wan import transformer_to_fp8
    from echomimic_lib.models.wan.compile import compile_blocks, is_compiled
    from echomimic_lib.memory.fp8 import is_fp8
    from tests._v3_tiny import inputs, tiny_model

    torch._dynamo.reset()
    model = tiny_model()
    transformer_to_fp8(model)  # as the V3 Loader: fp8 first, then compile (Loader inputs fp8 and compile both on)
    try:
        with torch.no_grad():
            eager = {t: model(**inputs(t_lat=t)) for t in (3, 2)}
            assert compile_blocks(model, backend=backend) == len(model.blocks) and is_compiled(model) and is_fp8(model)
            return {t: (model(**inputs(t_lat=t)), want) for t, want in eager.items()}
    finally:
        torch._dynamo.reset()


def test_compiled_v3_blocks_run_on_fp8_weights():
    """The combination was untried: Dynamo captures the fp8 layers' per-call upcast (no graph break, no error), and
    the frames are the eager fp8 ones (aot_eager: no code generated, bit for bit), for two lengths (the symbolic
    recompile included)."""
    for got, want in _fp8_compiled("aot_eager").values():
        assert torch.equal(got, want)


@pytest.mark.slow
def test_inductor_compiles_v3_blocks_on_fp8_weights():
    """The real backend on the CPU (C++ code for the fp8 upcast; minutes on 2 cores): the eager fp8 output up to float
    rounding (measured 4.8e-7)."""
    for got, want in _fp8_compiled("inductor").values():
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
