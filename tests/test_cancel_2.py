"""Cancel inside one long VAE call, and Cancel with a LoRA applied or the blocks compiled.

EchoMimicV3's VAE decodes up to 81 frames in one call (diffusers' ``AutoencoderKLWan`` and ComfyUI's Wan VAE run their
decoder once per latent frame, their encoder once per 4 frames): the V3 nodes pass ComfyUI's interrupt check into
``PixelVAE`` (``check=``), which runs it before each of those passes through a forward pre-hook registered for the call
only (:mod:`echomimic_lib.models.cancel_hooks`). A Cancel stops the decode before the next latent frame, the hook is
gone afterwards, the VAE's feature cache is cleared, and the frames without Cancel are those of the unhooked VAE, bit
for bit. On the tiny V3 weights (``write_tiny_v3``)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests._pack import load_pack, sub
from tests.test_nodes import models  # noqa: F401  (the tiny ComfyUI models fixture)
from tests.test_sampler_image_cancel import _v3_run, v3  # noqa: F401  (the tiny V3 node inputs)

C = sub("nodes.comfy_bridge")
C_NODES = load_pack().NODE_CLASS_MAPPINGS
REF = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))


class Cancelled(Exception):
    pass


def _hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


class _Counter:
    """Counts a module's forwards (a hook the test adds and removes itself)."""

    def __init__(self, module):
        self.n, self.handle = 0, module.register_forward_hook(self._seen)

    def _seen(self, *_):
        self.n += 1

    def remove(self):
        self.handle.remove()


def _cancel_at(k: int):
    """A check that raises at its k-th call (k = 0: never); records how often it was called."""
    calls = []

    def check():
        calls.append(1)
        if len(calls) == k:
            raise Cancelled()

    return check, calls


# ------------------------------------------------------------------------------------------ the library's PixelVAE
@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    from echomimic_lib.models.wan.tiny import write_tiny_v3
    from echomimic_lib.models.wan.vae import load_wan_vae

    folder = write_tiny_v3(tmp_path_factory.mktemp("v3vae") / "v3-flash")
    return load_wan_vae(folder / "vae").eval()


class _ComfyLikeVAE:
    """ComfyUI's VAE object: the network as ``first_stage_model``, decode/encode with raw latents, pixels in [0, 1]."""

    def __init__(self, net):
        from echomimic_lib.models.wan.vae import DiffusersPixelVAE

        self.first_stage_model, self._io = net, DiffusersPixelVAE(net)

    def decode(self, raw):
        return self._io.decode(raw)

    def encode(self, pixels):
        return self._io.encode(pixels)


def _codecs(net, check):
    from echomimic_lib.models.wan.vae import DiffusersPixelVAE, PixelVAE

    return {"diffusers": PixelVAE(DiffusersPixelVAE(net), check=check), "comfyui": PixelVAE(_ComfyLikeVAE(net), check=check)}


@pytest.mark.parametrize("kind", ["diffusers", "comfyui"])
def test_a_cancel_during_one_v3_decode_stops_before_the_next_latent_frame_and_leaves_no_hook(tiny_vae, kind):
    from echomimic_lib.models.wan.vae import DiffusersPixelVAE, PixelVAE

    latents = torch.randn(1, 16, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    hooks = _hooks(tiny_vae)
    with torch.no_grad():
        plain = PixelVAE(DiffusersPixelVAE(tiny_vae)).decode_normalised(latents)
        check, calls = _cancel_at(0)
        assert torch.equal(_codecs(tiny_vae, check)[kind].decode_normalised(latents), plain)  # bit for bit
        assert len(calls) == 5 and _hooks(tiny_vae) == hooks  # once per latent frame; the hook removed
        check, calls = _cancel_at(3)  # Cancel pressed while latent frame 2 was decoded
        seen = _Counter(tiny_vae.decoder)
        try:
            with pytest.raises(Cancelled):
                _codecs(tiny_vae, check)[kind].decode_normalised(latents)
        finally:
            seen.remove()
    assert seen.n == 2 and len(calls) == 3  # frames 3..5 never decoded (before: all 5, then the check after the call)
    assert _hooks(tiny_vae) == hooks  # no hook left behind by the cancelled call
    assert all(f is None for f in tiny_vae._feat_map)  # the cut-short call's feature cache freed
    with torch.no_grad():
        assert torch.equal(PixelVAE(DiffusersPixelVAE(tiny_vae)).decode_normalised(latents), plain)  # nothing stale


@pytest.mark.parametrize("kind", ["diffusers", "comfyui"])
def test_a_cancel_during_one_v3_encode_stops_before_the_next_four_frames(tiny_vae, kind):
    from echomimic_lib.models.wan.vae import DiffusersPixelVAE, PixelVAE

    video = torch.rand(1, 3, 9, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1  # encoder passes: 1 + 4 + 4
    hooks = _hooks(tiny_vae)
    with torch.no_grad():
        plain = PixelVAE(DiffusersPixelVAE(tiny_vae)).encode_normalised(video)
        check, calls = _cancel_at(0)
        assert torch.equal(_codecs(tiny_vae, check)[kind].encode_normalised(video), plain) and len(calls) == 3
        check, calls = _cancel_at(2)
        seen = _Counter(tiny_vae.encoder)
        try:
            with pytest.raises(Cancelled):
                _codecs(tiny_vae, check)[kind].encode_normalised(video)
        finally:
            seen.remove()
    assert seen.n == 1 and _hooks(tiny_vae) == hooks and all(f is None for f in tiny_vae._enc_feat_map)


def test_a_vae_without_an_inner_network_or_check_is_left_alone():
    from echomimic_lib.models.cancel_hooks import checked_between, network, part

    assert network(SimpleNamespace(decode=None)) is None and part(object(), "decoder") is None
    lin = torch.nn.Linear(2, 2)
    with checked_between(None, [lin]):
        assert _hooks(lin) == 0
    with pytest.raises(Cancelled), checked_between(_cancel_at(1)[0], [lin, None]):
        lin(torch.zeros(1, 2))
    assert _hooks(lin) == 0


# ------------------------------------------------------------------------------------------ the V3 Sampler node
def test_the_v3_sampler_node_stops_a_decode_at_the_latent_frame_after_cancel(v3, monkeypatch):
    """Cancel pressed while the first latent frame is decoded (9 frames: 3 latent frames in one decode call): the
    node's run stops before the second (before: it decoded all 3, then looked for Cancel); the next run is a fresh one."""
    fresh = _v3_run(v3, 9, steps=1)
    net = v3.vae.vae
    hooks = _hooks(net)

    def press_cancel(*_):
        C.INTERRUPTED = True

    seen, press = _Counter(net.decoder), net.decoder.register_forward_hook(press_cancel)
    try:
        with pytest.raises(C.InterruptProcessingException):
            _v3_run(v3, 9, steps=1)
    finally:
        seen.remove()
        press.remove()
    assert seen.n == 1 and _hooks(net) == hooks and not C.INTERRUPTED
    assert torch.equal(_v3_run(v3, 9, steps=1), fresh)


# ------------------------------------------------------------------------------------ Cancel with a LoRA applied
def _press_cancel_at(step: int):
    seen = []

    def hook(value, total, preview):
        seen.append(value)
        C.INTERRUPTED = C.INTERRUPTED or value == step

    return hook, seen


def _v1_weights(handle) -> dict:
    return {f"{n}.{k}": v.detach().clone() for n in ("reference", "denoiser") for k, v in
            getattr(handle.models, n).state_dict().items()}


@pytest.fixture
def v1_lora(models, monkeypatch):  # noqa: F811
    """A V1 audio handle, its audio features, and a LoRA file for it (MODELS_DIR pinned to ``models``: the V3 module
    fixture, set up later when tests are picked with -k, moves it to a folder without the V1 weights)."""
    from tests.test_lora_nodes import _adapter_file
    from tests.test_nodes import encode, loader

    monkeypatch.setattr(C, "MODELS_DIR", models)

    def make(compile=False):
        handle = loader("V1 audio", dtype="fp32", compile=compile)
        name = "cancel_test.safetensors"
        path = models / "echomimic" / "loras" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _adapter_file(path, handle.models, seed=3, gain=0.5)
        return handle, encode(handle, 0.5, 24.0)[0], name

    C.MODEL_MANAGER.reset()
    yield make
    C.MODEL_MANAGER.reset()


def _v1_run(handle, feats):
    return C_NODES["EchoMimicSampler"]().execute(handle, REF, feats, 7, 3, 2.5, 64, 64, 4, 4, 1)[0]  # 4 frames: one window


@pytest.mark.parametrize("gpu_like", [True, False])
def test_a_cancelled_v1_run_with_a_lora_leaves_the_base_model_unpatched(v1_lora, monkeypatch, gpu_like):
    """Cancel at step 2 of a run through the EchoMimic LoRA node's patched clone. As with a GPU (unloading frees
    memory, keep_loaded off) the base weights are the loader's at once; with --cpu (the networks stay loaded, as after
    a finished run) the weights are those of a finished LoRA run, never half patched. Either way a following run
    without the LoRA gives the frames of a fresh model, and the LoRA run again its own."""
    monkeypatch.setattr(C, "offload_frees_memory", lambda: gpu_like)
    handle, feats, name = v1_lora()
    fresh, base = _v1_run(handle, feats), _v1_weights(handle)
    (patched,) = C_NODES["EchoMimicLora"]().execute(handle, name, 1.0)
    with_lora = _v1_run(patched, feats)
    finished = _v1_weights(handle)
    assert not torch.equal(with_lora, fresh)  # the LoRA changes the frames
    hook, seen = _press_cancel_at(2)
    monkeypatch.setattr(C, "PROGRESS_HOOK", hook)
    with pytest.raises(C.InterruptProcessingException):
        _v1_run(patched, feats)
    monkeypatch.setattr(C, "PROGRESS_HOOK", None)
    assert seen == [1, 2] and not C.INTERRUPTED
    after = _v1_weights(handle)
    assert all(torch.equal(v, (base if gpu_like else finished)[k]) for k, v in after.items())
    assert torch.equal(_v1_run(handle, feats), fresh)  # the next run without the LoRA: a fresh model's frames
    assert torch.equal(_v1_run(patched, feats), with_lora)  # and the LoRA still applies as before
    C.unload_all_models()
    assert all(torch.equal(v, base[k]) for k, v in _v1_weights(handle).items())


@pytest.fixture
def v3_lora(v3, tmp_path, monkeypatch):
    """The V3 fixture's inputs, with a models folder of their own (the same tiny V3 set, for a second loader) holding a
    ComfyUI-layout Wan LoRA for its network in loras/ (another module fixture may have moved MODELS_DIR)."""
    from echomimic_lib.models.wan.tiny import write_tiny_v3
    from tests._wan_lora import make_parts, write_layout

    root = tmp_path / "models"
    write_tiny_v3(root / "echomimic" / "v3-flash")
    monkeypatch.setattr(C, "MODELS_DIR", root)
    (root / "loras").mkdir()
    write_layout(make_parts(v3.handle.patcher.model.net, seed=5, gain=0.5), "comfyui", root / "loras" / "cancel_v3.safetensors")
    yield v3
    C.unload_all_models()


def _v3_weights(handle) -> dict:
    return {k: v.detach().clone() for k, v in handle.patcher.model.net.state_dict().items()}


def test_a_cancelled_v3_run_with_a_lora_leaves_the_base_model_unpatched(v3_lora, monkeypatch):
    v3 = v3_lora
    fresh, base = _v3_run(v3, 9, steps=3), _v3_weights(v3.handle)
    (patched,) = C_NODES["EchoMimicV3Lora"]().execute(v3.handle, "cancel_v3.safetensors", 1.0)
    lora_in = SimpleNamespace(**{**vars(v3), "handle": patched})
    with_lora = _v3_run(lora_in, 9, steps=3)
    assert not torch.equal(with_lora, fresh)
    hook, seen = _press_cancel_at(2)
    monkeypatch.setattr(C, "PROGRESS_HOOK", hook)
    with pytest.raises(C.InterruptProcessingException):
        _v3_run(lora_in, 9, steps=3)
    monkeypatch.setattr(C, "PROGRESS_HOOK", None)
    assert seen == [1, 2] and not C.INTERRUPTED
    assert torch.equal(_v3_run(v3, 9, steps=3), fresh)  # without the LoRA: a fresh model's frames
    assert torch.equal(_v3_run(lora_in, 9, steps=3), with_lora)
    C.unload_all_models()
    assert all(torch.equal(v, base[k]) for k, v in _v3_weights(v3.handle).items())


# --------------------------------------------------------------------------------- Cancel with the blocks compiled
@pytest.fixture
def eager_compile(monkeypatch):
    """The loaders' compile on the CPU with ``aot_eager`` (traced, no code generated: quick, and the eager frames bit
    for bit); Dynamo's caches reset around the test."""
    import torch._dynamo

    compile_regions = sub("echomimic_lib.models.unet.compile").compile_regions  # the pack's copy: its classes
    compile_blocks = sub("echomimic_lib.models.wan.compile").compile_blocks

    monkeypatch.setattr(sub("nodes.loader"), "compile_denoiser",
                        lambda models: compile_regions(models.denoiser, backend="aot_eager"))
    monkeypatch.setattr(sub("echomimic_lib.speed"), "compile_transformer", lambda m: compile_blocks(m, backend="aot_eager"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_a_cancel_propagates_out_of_a_compiled_v1_run_with_a_lora_and_the_next_runs_work(v1_lora, eager_compile,
                                                                                         monkeypatch):
    from echomimic_lib.models.compile import is_compiled

    handle, feats, name = v1_lora(compile=True)
    assert is_compiled(handle.models.denoiser)
    fresh, base = _v1_run(handle, feats), _v1_weights(handle)
    (patched,) = C_NODES["EchoMimicLora"]().execute(handle, name, 1.0)
    with_lora = _v1_run(patched, feats)
    hook, seen = _press_cancel_at(2)
    monkeypatch.setattr(C, "PROGRESS_HOOK", hook)
    with pytest.raises(C.InterruptProcessingException):  # raised outside the compiled blocks, through them unchanged
        _v1_run(patched, feats)
    monkeypatch.setattr(C, "PROGRESS_HOOK", None)
    assert seen == [1, 2] and not C.INTERRUPTED and is_compiled(handle.models.denoiser)
    assert torch.equal(_v1_run(handle, feats), fresh) and torch.equal(_v1_run(patched, feats), with_lora)
    C.unload_all_models()
    assert all(torch.equal(v, base[k]) for k, v in _v1_weights(handle).items())


@pytest.mark.slow
def test_a_cancel_propagates_out_of_a_compiled_v3_run_with_a_lora_and_the_next_runs_work(v3_lora, eager_compile,
                                                                                         monkeypatch):
    from echomimic_lib.models.compile import is_compiled

    (handle,) = C_NODES["EchoMimicV3Loader"]().execute("v3-flash", "fp32", compile=True)
    assert is_compiled(handle.patcher.model.net)
    v3 = SimpleNamespace(**{**vars(v3_lora), "handle": handle})
    fresh, base = _v3_run(v3, 9, steps=3), _v3_weights(handle)
    (patched,) = C_NODES["EchoMimicV3Lora"]().execute(handle, "cancel_v3.safetensors", 1.0)
    lora_in = SimpleNamespace(**{**vars(v3), "handle": patched})
    with_lora = _v3_run(lora_in, 9, steps=3)
    hook, seen = _press_cancel_at(2)
    monkeypatch.setattr(C, "PROGRESS_HOOK", hook)
    with pytest.raises(C.InterruptProcessingException):
        _v3_run(lora_in, 9, steps=3)
    monkeypatch.setattr(C, "PROGRESS_HOOK", None)
    assert seen == [1, 2] and not C.INTERRUPTED
    assert torch.equal(_v3_run(v3, 9, steps=3), fresh) and torch.equal(_v3_run(lora_in, 9, steps=3), with_lora)
    C.unload_all_models()
    assert all(torch.equal(v, base[k]) for k, v in _v3_weights(handle).items())


# ------------------------------------------------------------------------------------- V1 / V2: inside a VAE call
def test_a_cancel_inside_one_v1_decode_call_stops_before_the_next_decoder_block(v1_lora):
    """The SD VAE decodes a chunk of frames in one call (one frame per call at 256 px and more on the CPU, seconds
    each): Cancel pressed in its middle block stops it before the first up block (before: all 4 ran, then the check
    after the chunk); no hook is left and the next run is a fresh one."""
    handle, feats, _ = v1_lora()
    vae = handle.models.vae
    fresh, hooks = _v1_run(handle, feats), _hooks(vae)
    ups = [_Counter(b) for b in vae.decoder.up_blocks]
    press = vae.decoder.mid_block.register_forward_hook(lambda *_: setattr(C, "INTERRUPTED", True))
    try:
        with pytest.raises(C.InterruptProcessingException):
            _v1_run(handle, feats)
    finally:
        press.remove()
        for c in ups:
            c.remove()
    assert sum(c.n for c in ups) == 0 and _hooks(vae) == hooks and not C.INTERRUPTED
    assert torch.equal(_v1_run(handle, feats), fresh)


def test_the_checked_v1_decode_gives_the_same_frames_and_checks_between_blocks(v1_lora):
    decode = sub("echomimic_lib.pipeline.decode")
    handle, _, _ = v1_lora()
    latents = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    plain = decode.decode_latents(handle.models.vae, latents, "cpu", max_batch=2)
    check, calls = _cancel_at(0)
    assert torch.equal(decode.decode_latents(handle.models.vae, latents, "cpu", max_batch=2, check=check), plain)
    assert len(calls) == 2 * (1 + len(handle.models.vae.decoder.up_blocks))  # 2 calls (2 + 1 frames), 5 blocks each
