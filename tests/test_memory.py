"""Model memory (issue 14), library side: the stage placement, the low-VRAM block streaming, fp8 weight
storage, the memory-sized / tiled VAE decode, the allocation tracker behind bench/bench_vram.py, and a
quick run of that bench. The node side (ComfyUI's model manager) is in test_nodes.py."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from echomimic_lib.config import TINY
from echomimic_lib.memory import BlockStreamer, Placement, estimate, stream_units, to_fp8
from echomimic_lib.memory.tracker import VramTracker, gpu_attention
from echomimic_lib.models.unet import EchoUNet
from echomimic_lib.pipeline.decode import decode_latents, plan_chunk
from echomimic_lib.tiny import TINY_VAE_CONFIG, randomize_

TILE_MEAN_TOL = 0.1  # mean |tiled - whole| of a random tiny VAE's 128-px frame in [0, 1]
FP8_REL_TOL = 0.25  # relative L2 error of one tiny-denoiser call with fp8 weights (measured 0.174; 3-bit mantissa)


@pytest.fixture(scope="module")
def unets():
    torch.manual_seed(0)
    return randomize_(EchoUNet(TINY, "reference"), 1).eval(), randomize_(EchoUNet(TINY, "denoiser"), 2).eval()


@pytest.fixture(scope="module")
def call(unets):
    """One CFG denoiser call (2 rows x 4 frames, 8x8 latents) and its output."""
    ref, den = unets
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        kv = den.prepare_reference(ref.forward_reference(torch.randn(1, 4, 8, 8, generator=g))[0])
        x = torch.randn(2, 4, 4, 8, 8, generator=g)
        audio = torch.randn(1, 4, 10, 384, generator=g)
        args = dict(audio=audio, reference=kv, uncond_rows=1)
        return x, args, den(x, 500, **args)


# ------------------------------------------------------------------------------------------ streaming
def test_streaming_covers_every_weight_keeps_one_unit_on_the_device_and_changes_nothing(unets, call):
    _, den = unets
    den = copy.deepcopy(den)
    x, args, expected = call
    units = stream_units(den)
    assert {id(p) for u in units for p in u.parameters()} == {id(p) for p in den.parameters()}
    live, peaks = [0], []

    def moved(unit, nbytes):
        live[0] += nbytes
        peaks.append(live[0])

    streamer = BlockStreamer(den, "cpu", "cpu", on_move=moved)
    streamer.attach()
    host = {id(p): p.data.data_ptr() for p in den.parameters()}
    copies = []
    units[len(units) // 2].register_forward_pre_hook(
        lambda m, a: copies.append(sum(p.data.data_ptr() != host[id(p)] for p in den.parameters())))
    with torch.no_grad():
        out = den(x, 500, **args)
    assert torch.equal(out, expected)
    assert copies == [sum(1 for _ in units[len(units) // 2].parameters())]  # only the running unit is a device copy
    assert all(p.data.data_ptr() == host[id(p)] for p in den.parameters())  # every copy dropped after its unit ran
    assert max(peaks) == live[0] == streamer.window_bytes() < estimate.weight_bytes(den) / 2  # two slots, nothing more
    streamer.detach()
    assert live[0] == 0


def test_held_projection_layers_serve_the_reference_kv_then_go(unets):
    ref, den = unets
    den = copy.deepcopy(den)
    bank = ref.forward_reference(torch.randn(1, 4, 8, 8))[0]
    with torch.no_grad():
        expected = den.prepare_reference(bank)
    live = [0]
    streamer = BlockStreamer(den, "cpu", "cpu", on_move=lambda u, n: live.__setitem__(0, live[0] + n))
    streamer.attach()
    attn1 = [b.attn1 for b in den.transformer_blocks().values()]
    streamer.hold(attn1)
    assert live[0] == streamer.window_bytes() + streamer.bytes_of(attn1) and streamer.bytes_of(attn1) > 0
    with torch.no_grad():
        kv = den.prepare_reference(bank)
    assert all(torch.equal(kv[k][0], expected[k][0]) for k in expected)
    streamer.release()
    assert live[0] == streamer.window_bytes()
    streamer.detach()
    assert live[0] == 0


# ------------------------------------------------------------------------------------------ fp8
def test_fp8_stores_unet_weights_in_e4m3fn_and_stays_close(unets, call):
    _, den = unets
    den = copy.deepcopy(den)
    keys = set(den.state_dict())
    before = estimate.weight_bytes(den)
    saved = to_fp8(den)
    assert set(den.state_dict()) == keys  # same names: LoRA / ModelPatcher patches still find them
    assert estimate.weight_bytes(den) == before - saved and saved > 0.6 * before * 3 / 4  # fp32 -> 1 byte
    assert den.conv_in.weight.dtype == torch.float32 and den.dtype == torch.float32
    assert den.mid_block.resnets[0].conv1.weight.dtype == torch.float8_e4m3fn
    x, args, expected = call
    with torch.no_grad():
        out = den(x, 500, **args)
    rel = float((out - expected).norm() / expected.norm())
    assert 0 < rel < FP8_REL_TOL, rel


def test_fp8_refuses_weights_outside_its_range():
    lin = nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight[0, 0] = 1000.0
    with pytest.raises(ValueError, match="exceeds the fp8 e4m3fn range.*switch fp8 off"):
        to_fp8(nn.Sequential(lin))


# ------------------------------------------------------------------------------------------ placement
class _Models:
    """What Placement uses of EchoMimicModels."""

    def __init__(self, den):
        self.denoiser, self.config, self.dtype = den, TINY, torch.float32
        self.vae = self.reference = self.cond_encoder = self.audio_encoder = None
        self._mods = {n: nn.Linear(2, 2) for n in ("reference", "cond_encoder", "vae", "audio_encoder")}
        self._mods["denoiser"] = den

    def modules(self):
        return dict(self._mods)


class _Backend:
    def __init__(self):
        self.loaded, self.log = set(), []

    def is_loaded(self, name):
        return name in self.loaded

    def load(self, names, extra_bytes=0):
        self.loaded |= set(names)
        self.log.append(("load", tuple(sorted(names))))

    def unload(self, names):
        self.loaded -= set(names)
        self.log.append(("unload", tuple(sorted(names))))

    def reserve(self, nbytes):
        self.log.append(("reserve", nbytes > 0))


@pytest.mark.parametrize("keep", [False, True])
def test_placement_loads_only_what_each_stage_needs(unets, keep):
    backend, models = _Backend(), _Models(unets[1])
    place = Placement(models, "cpu", backend, keep_loaded=keep)
    seen = []
    for stage in ("audio", "vae_encode", "reference", "reference_kv", "denoise", "decode"):
        place.enter(stage)
        seen.append(set(backend.loaded))
    place.close()
    if keep:
        assert seen[-1] == set(models.modules()) and backend.loaded == set(models.modules())
    else:
        assert seen == [{"audio_encoder"}, {"vae"}, {"reference"}, {"denoiser", "cond_encoder"}, {"denoiser", "cond_encoder"}, {"vae"}]
        assert backend.loaded == set()


def test_streamed_placement_never_loads_the_denoiser_and_reserves_room(unets):
    backend, models = _Backend(), _Models(copy.deepcopy(unets[1]))
    place = Placement(models, "cpu", backend, stream_denoiser=True)
    place.enter("reference_kv")
    assert backend.loaded == {"cond_encoder"} and place.streamer._held  # attn1 projections held for prepare_reference
    place.enter("denoise")
    assert not place.streamer._held and place.streamer._handles
    place.close()
    assert not place.streamer._handles and all(("load", ("denoiser",)) != e for e in backend.log)


# ------------------------------------------------------------------------------------------ decode
@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKL

    return randomize_(AutoencoderKL(**TINY_VAE_CONFIG), 5).eval()


def test_decode_chunks_follow_the_budget_and_tile_when_one_frame_does_not_fit(vae):
    per_frame = estimate.decode_frame_bytes(vae, 64, 64)
    assert plan_chunk(vae, 64, 64, 8, None) == (8, False)
    assert plan_chunk(vae, 64, 64, 8, 3 * per_frame + 1) == (3, False)
    assert plan_chunk(vae, 64, 64, 8, per_frame - 1) == (1, True)
    latents = torch.randn(1, 4, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = decode_latents(vae, latents, "cpu", max_batch=8)
    chunks = []
    by_two = decode_latents(vae, latents, "cpu", max_batch=8, budget=2 * per_frame, sink=lambda s, f: chunks.append((s, f)))
    assert by_two is None and [s for s, _ in chunks] == [0, 2, 4]
    assert torch.allclose(torch.cat([f for _, f in chunks]), whole, atol=1e-5)
    big = torch.randn(1, 4, 1, 16, 16, generator=torch.Generator().manual_seed(1))  # 128 px: 4 overlapping 64-px tiles
    tiled = decode_latents(vae, big, "cpu", budget=estimate.decode_frame_bytes(vae, 128, 128) // 2)
    plain = decode_latents(vae, big, "cpu")
    assert tiled.shape == plain.shape == (1, 128, 128, 3)
    # each tile is decoded without its neighbours (the VAE's mid-block attention sees one tile): close, not equal
    assert 0 < float((tiled - plain).abs().mean()) < TILE_MEAN_TOL, float((tiled - plain).abs().mean())


def test_cpu_decode_frames_per_call_follow_the_frame_size(vae, monkeypatch):
    from types import SimpleNamespace

    from echomimic_lib.pipeline import decode

    sd_vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=[128, 256, 512, 512]), dtype=torch.float32)
    assert decode.cpu_chunk(sd_vae, 64, 64, 8) == 8
    assert decode.cpu_chunk(sd_vae, 128, 128, 8) == 2
    assert decode.cpu_chunk(sd_vae, 512, 512, 8) == 1  # never tiled on the CPU, however big
    latents = torch.randn(1, 4, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = decode_latents(vae, latents, "cpu", max_batch=8)
    monkeypatch.setattr(decode, "CPU_WORKING_SET", 2 * estimate.decode_frame_bytes(vae, 64, 64))
    chunks = []
    assert decode_latents(vae, latents, "cpu", max_batch=8, sink=lambda s, f: chunks.append((s, f))) is None
    assert [s for s, _ in chunks] == [0, 2, 4]
    assert torch.allclose(torch.cat([f for _, f in chunks]), whole, atol=1e-5)


# ------------------------------------------------------------------------------------------ tracker / bench
def test_tracker_counts_live_storages_rounded_like_the_cuda_allocator_and_models_flash_attention():
    from torch._subclasses.fake_tensor import FakeTensorMode

    mib = 2**20
    with FakeTensorMode(), torch.device("cuda"):
        tracker = VramTracker("cuda")
        with tracker:
            a = torch.empty(1024, 1024, dtype=torch.float16)  # 2 MiB
            b = a.view(-1)  # a view: no new storage
            c = torch.empty(100, dtype=torch.uint8)  # rounded up to 512 bytes
            assert tracker.live == 2 * mib + 512
            del a, b
            d = torch.empty(1024, 1024, dtype=torch.float16)  # a's block was freed first
            tracker.set_resident(1000)  # weights placed on the device
            assert tracker.live == tracker.peak == 2 * mib + 512 + 1000
            del c, d
            tracker.set_resident(0)
            q = torch.empty(1, 1, 4096, 64, dtype=torch.float16)  # 512 KiB
            before = tracker.peak = tracker.live
            with gpu_attention():
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            extra = tracker.peak - before
    # the flash kernel's output + log-sum-exp (+ two RNG scalars), never the 4096 x 4096 score matrix (32 MiB)
    assert 512 * 1024 + 16 * 1024 <= extra <= 512 * 1024 + 16 * 1024 + 2048


def test_bench_vram_runs_on_cpu_and_prints_the_json_peaks(capsys, monkeypatch):
    from tests._bench import load_bench

    bench = load_bench("bench_vram", monkeypatch)
    assert bench.main(["v2-halfbody", "--preset", "tiny", "--size", "64", "--frames", "12", "--lowvram", "--device", "fake",
                       "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["peak_gb"] > 0 and set(res["stages"]) >= {"load", "audio", "vae_encode", "reference", "denoise", "decode"}
    assert res["peak_gb"] == max(res["stages"].values()) and res["stages"]["decode"] <= res["stages"]["denoise"]
