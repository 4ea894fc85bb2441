"""CUDA-only checks (``pytest -m cuda``; every test here skips without a CUDA device).

Run on a GPU by ``bench/gpu_check.sh`` (issue 23), which also carries a subset of the parity fixtures there:
- the parity cases that run networks (``unet_forward``, ``pipeline``) on ``cuda`` in fp32 with TF32 off, at the
  CPU tolerances of their manifests;
- fp16 and bf16 generations at 512 px (V1) and 768 px (V2) on official-size random weights: finite, and within
  the bounds below of the same generation in fp32;
- the nodes on ``cuda:0`` through the bridge's model manager (stand-ins): each network on the GPU for its stage,
  released afterwards; low-VRAM streaming; fp8 weights; a LoRA at strength 0 and 1; regional compile on and off.

The speed options (CUDA graphs, attention kernels) are checked in ``tests/test_cuda_speed.py``. Measured figures go
to the JSON-lines file ``ECHOMIMIC_GPU_REPORT`` names (if set), also when an assertion fails.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tests._cuda import HALF_BOUNDS, full_size_models, generate, no_tf32, report  # noqa: F401 (no_tf32: autouse fixture)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

COMPILE_ATOL = 1e-4  # regional compile vs eager, fp32 with TF32 off (kernels fuse differently: rounding only)
FP8_MEAN_TOL = 0.08  # as the CPU node test (tests/test_nodes.py)


# ------------------------------------------------------------------------------------------ parity
def _network_cases():
    from tests.parity_runners._common import load_cases, parity_dir

    root = parity_dir()
    if not (root / "index.json").is_file():
        return [pytest.param(None, id=f"missing-fixtures:{root}")]
    return [pytest.param(c, id=f"{c.kind}:{c.name}") for c in load_cases(root) if c.kind in ("unet_forward", "pipeline")]


@pytest.mark.parametrize("case", _network_cases())
def test_parity_on_cuda_in_fp32(case):
    import importlib

    from tests.parity_runners._common import parity_dir

    assert case is not None, f"no parity fixtures at {parity_dir()} (ECHOMIMIC_PARITY_DIR)"
    runner = importlib.import_module(f"tests.parity_runners.{case.kind}")
    formats = [s for s in (".pth", ".safetensors") if any(case.models_dir.glob(f"*{s}"))]
    runner.run(case, device="cuda", formats=tuple(formats))
    report(f"parity:{case.name}", ok=True, formats=formats)


# ------------------------------------------------------------------------------------------ half precision
@pytest.fixture(scope="module", params=["v1", "v2"])
def fp32_run(request):
    version = request.param
    size = 512 if version == "v1" else 768
    models = full_size_models(version)
    ref = generate(models, version, size)
    del models
    torch.cuda.empty_cache()
    return version, size, ref


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_generations_are_finite_and_close_to_fp32(fp32_run, dtype):
    version, size, ref = fp32_run
    half = full_size_models(version).to(dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[dtype])  # the same weights
    got = generate(half, version, size)
    del half
    torch.cuda.empty_cache()
    lat_ref, lat = ref.latents.float().cpu(), got.latents.float().cpu()
    finite = bool(torch.isfinite(got.frames).all() and torch.isfinite(lat).all())
    diff = (got.frames - ref.frames).abs()
    rel = float((lat - lat_ref).norm() / lat_ref.norm())
    figures = dict(version=version, size=size, dtype=dtype, finite=finite, frames_mean_abs=float(diff.mean()),
                   frames_max_abs=float(diff.max()), latent_rel=rel, bounds=HALF_BOUNDS[dtype])
    report("half_precision", **figures)
    assert finite, f"{dtype} {version} {size} px: NaN/inf"
    assert figures["frames_mean_abs"] <= HALF_BOUNDS[dtype]["mean"], figures
    assert rel <= HALF_BOUNDS[dtype]["latent_rel"], figures


# ------------------------------------------------------------------------------------------ nodes on cuda:0
@pytest.fixture(scope="module")
def comfy_models(tmp_path_factory):
    from echomimic_lib.tiny import make_tiny

    root = tmp_path_factory.mktemp("comfy") / "models"
    make_tiny(root, layout="comfyui")
    return root


@pytest.fixture
def bridge(comfy_models, monkeypatch):
    """The node pack on ``cuda:0`` with the bridge's stand-in model manager (a fresh one per test)."""
    from tests._pack import load_pack, sub

    load_pack()
    c = sub("nodes.comfy_bridge")
    monkeypatch.setattr(c, "DEVICE", "cuda:0")
    monkeypatch.setattr(c, "MODELS_DIR", comfy_models)
    manager = c.StandInModelManager()
    monkeypatch.setattr(c, "MODEL_MANAGER", manager)
    return c, manager


def _nodes():
    from tests._pack import load_pack

    return load_pack().NODE_CLASS_MAPPINGS


def _loader(**kw):
    args = dict(dtype="fp32", attention="sdpa", keep_loaded=False, weights_folder="auto", vae="auto", auto_download=False)
    args.update(kw)
    return _nodes()["EchoMimicModelLoader"]().execute("V1 audio", "normal", **args)[0]


def _inputs(size: int = 64):
    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000.0
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    audio = {"waveform": torch.from_numpy(wave)[None, None], "sample_rate": 16000}
    image = torch.from_numpy(rng.random((1, size, size, 3), dtype=np.float32))
    mask = torch.zeros(1, size, size)
    mask[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return audio, image, mask


def _run_nodes(handle, seed: int = 7):
    n = _nodes()
    audio, image, mask = _inputs()
    feats = n["EchoMimicAudioEncoder"]().execute(handle, audio, 24.0)[0]
    return n["EchoMimicSampler"]().execute(handle, image, feats, seed, 2, 2.5, 64, 64, 12, 12, 3, mask=mask)[0]


def test_every_stage_runs_on_cuda0_and_the_model_manager_releases_it(bridge):
    c, manager = bridge
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    handle = _loader()
    seen = []
    load = manager.load_models_gpu

    def recording(patchers, memory_required=0):
        load(patchers, memory_required)
        for p in patchers:
            devices = {t.device for t in p.model.net.parameters()}
            seen.append((type(p.model).__name__, sorted(str(d) for d in devices)))

    manager.load_models_gpu = recording
    frames = _run_nodes(handle)
    assert torch.isfinite(frames).all()
    names = {name for name, _ in seen}
    assert {"EchoMimicWhisper", "EchoMimicVAE", "EchoMimicReferenceUNet", "EchoMimicDenoiser", "EchoMimicConditionEncoder"} <= names
    assert all(devices == ["cuda:0"] for _, devices in seen), seen
    assert manager.current_loaded_models == []  # keep_loaded off: every network went back
    assert all(p.device.type == "cpu" for p in handle.models.denoiser.parameters())
    del frames
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated()
    report("nodes_release", stages=[n for n, _ in seen], allocated_before=before, allocated_after=after)
    assert after - before < 8 * 2**20, (before, after)  # nothing but allocator slack stays on the GPU


def test_low_vram_streaming_on_cuda_gives_the_same_video_with_less_memory(bridge):
    """Streaming keeps a few denoiser blocks on the GPU instead of all of them: the memory allocated while the
    denoiser runs (read at each of its calls) is lower, and the video the same up to kernel rounding (2.5e-4 was
    measured on an H200 on the tiny weights, where the whole-run peak is the VAE's and does not tell the two apart)."""
    c, manager = bridge
    during, videos = {}, {}
    for low in (False, True):
        handle = _loader(low_vram=low)
        seen = []
        hook = handle.models.denoiser.register_forward_pre_hook(lambda *_: seen.append(torch.cuda.memory_allocated()))
        try:
            videos[low] = _run_nodes(handle)
        finally:
            hook.remove()
        during[low] = max(seen)
    diff = float((videos[True] - videos[False]).abs().max())
    report("low_vram", allocated_at_denoiser_calls_plain=during[False], allocated_at_denoiser_calls_streamed=during[True], max_abs=diff)
    assert diff < 1e-3
    assert during[True] < during[False], during


def test_fp8_weights_on_cuda(bridge):
    c, manager = bridge
    base = _run_nodes(_loader())
    handle = _loader(fp8=True)
    den = handle.models.denoiser
    assert den.down_blocks[0].attentions[0].proj_in.weight.dtype == torch.float8_e4m3fn
    got = _run_nodes(handle)
    diff = (got - base).abs()
    report("fp8", mean_abs=float(diff.mean()), max_abs=float(diff.max()))
    assert torch.isfinite(got).all() and 0 < float(diff.mean()) < FP8_MEAN_TOL


def test_lora_at_strength_zero_is_the_base_and_at_one_changes_the_video(bridge):
    from pathlib import Path

    from tests._pack import sub

    lora = sub("echomimic_lib.lora")
    c, manager = bridge
    handle = _loader()
    base = _run_nodes(handle)
    den = handle.models.denoiser
    names = [n for n, m in den.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(("attn1.to_q", "attn1.to_v"))][:8]
    g = torch.Generator().manual_seed(0)
    layers = {}
    for n in names:
        w = den.get_submodule(n).weight
        layers[f"denoiser.{n}"] = (torch.randn(4, w.shape[1], generator=g) * 0.5, torch.randn(w.shape[0], 4, generator=g) * 0.5)
    adapter = lora.LoraAdapter(path=Path("gpu_test.safetensors"), info=lora.LoraInfo(weights="v1_audio", rank=4, alpha=4.0),
                               layers=layers)
    patch = lora.apply_lora(handle.models, adapter, 0.0)
    zero = _run_nodes(handle)
    patch.set_strength(1.0)
    one = _run_nodes(handle)
    patch.remove()
    back = _run_nodes(handle)
    changed = float((one - base).abs().mean())
    report("lora", strength0_max_abs=float((zero - base).abs().max()), strength1_mean_abs=changed,
           removed_max_abs=float((back - base).abs().max()))
    assert torch.equal(zero, base) and torch.equal(back, base)
    assert changed > 1e-3


def test_regional_compile_matches_eager_on_cuda(comfy_models):
    from echomimic_lib.model_set import load_models
    from echomimic_lib.models.unet.compile import compile_regions, is_compiled, uncompile_regions

    models = load_models(comfy_models / "echomimic", "v1_audio", "normal", device="cuda", dtype=torch.float32)
    den = models.denoiser
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 4, 12, 8, 8, device="cuda", generator=g)
    audio = torch.randn(1, 12, 50, 384, device="cuda", generator=g) * 0.1  # conditional rows only (uncond_rows=1)
    ref_latent = torch.randn(1, 4, 8, 8, device="cuda", generator=g)
    cond = models.cond_encoder(torch.rand(1, 1, 1, 64, 64, device="cuda", generator=g))

    def call():
        kv = den.prepare_reference(models.reference.forward_reference(ref_latent)[0])  # join buffers follow compile
        return den(x, 801, audio=audio, cond=cond, reference=kv, uncond_rows=1)

    with torch.no_grad():
        eager = call()
        assert compile_regions(den) > 0 and is_compiled(den)
        compiled = call()
        uncompile_regions(den)
        again = call()
    diff = float((compiled - eager).abs().max())
    report("compile", max_abs=diff, eager_after_max_abs=float((again - eager).abs().max()))
    assert diff < COMPILE_ATOL
    assert torch.allclose(again, eager, atol=1e-6)


# ------------------------------------------------------------------------------------------ V3 flash-pro
def test_v3_transformer_on_cuda_matches_the_cpu_and_runs_in_bf16_at_full_size():
    """The flash-pro DiT (tiny random weights) on CUDA in fp32 gives the CPU's prediction; the official 1.3B size
    (random weights, 480 x 480, 21 frames) runs in bf16 with finite output."""
    from echomimic_lib.models.wan import WanV3Config, WanV3Transformer
    from tests._v3_tiny import inputs, tiny_model

    model = tiny_model()
    inp = inputs(model.cfg)
    with torch.no_grad():
        cpu = model(**inp)
        gpu = model.to("cuda")(**{k: v.to("cuda") for k, v in inp.items()}).cpu()
    diff = float((gpu - cpu).abs().max())
    cfg = WanV3Config()
    with torch.device("cuda"):
        big = WanV3Transformer(cfg).eval().to(torch.bfloat16)
    full = inputs(cfg, t_lat=6, h=60, w=60)
    full = {k: (v.to("cuda", torch.bfloat16) if v.is_floating_point() else v.to("cuda")) for k, v in full.items()}
    with torch.no_grad():
        big(**full)  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = big(**full)
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    report("v3", tiny_fp32_max_abs=diff, full_bf16_forward_s=seconds, full_bf16_finite=bool(torch.isfinite(out).all()),
           params_b=sum(p.numel() for p in big.parameters()) / 1e9)
    assert diff < 1e-4 * max(1.0, float(cpu.abs().max()))
    assert torch.isfinite(out).all() and out.shape == (1, 16, 6, 60, 60)
