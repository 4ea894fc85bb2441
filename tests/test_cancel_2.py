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

from tests._pack import sub
from tests.test_sampler_image_cancel import _v3_run, v3  # noqa: F401  (the tiny V3 node inputs)

C = sub("nodes.comfy_bridge")
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
