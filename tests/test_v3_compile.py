"""Regional torch.compile of the EchoMimicV3 flash-pro transformer (echomimic_lib.models.wan.compile): each DiT block
compiled on its own, one graph shared by all blocks, the same output as eager, state-dict keys unchanged, a bounded
number of graphs over audio CFG on/off, TeaCache and the chunks of a long clip; and the option through the command
line (``--compile --smoke``), a batch row's ``compile`` column and the V3 Loader node's ``compile`` input.

Most tests compile with ``aot_eager`` (Dynamo traces and partitions, no code is generated): what they check is the
capture and the recompiles. One test runs inductor (marked slow: about 2 min of C++ compiling on 2 cores with a cold
inductor cache)."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from echomimic_lib.models.wan.compile import compile_blocks, is_compiled, uncompile_regions
from echomimic_lib.pipeline.wan.sampler import V3Settings, generate, sample_latents
from tests._v3_tiny import TINY, inputs, tiny_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


def graphs() -> int:
    """Graphs Dynamo has captured since the last reset (every compiled region counts its own)."""
    return int(counters["stats"]["unique_graphs"])


@pytest.fixture
def aot_eager(monkeypatch):
    """compile_blocks as the library calls it, but with aot_eager; records the modules it was given. Patched in the
    library as the CLI imports it and as the node pack imports it (tests/_pack.py: another module name)."""
    import echomimic_lib.models.wan.compile as mod
    from tests._pack import sub

    calls = []
    for m in (mod, sub("echomimic_lib.models.wan.compile")):
        def recorder(model, real=m.compile_blocks, **kw):
            calls.append(model)
            return real(model, **{**kw, "backend": "aot_eager"})

        monkeypatch.setattr(m, "compile_blocks", recorder)
    return calls


# ------------------------------------------------------------------------------------------ the network
def test_compiled_blocks_capture_whole_share_one_graph_and_match_eager():
    model = tiny_model()
    inp = inputs()
    keys = list(model.state_dict())
    with torch.no_grad():
        eager = model(**inp)
        assert compile_blocks(model, backend="aot_eager", fullgraph=True) == TINY.num_layers  # fullgraph: no break
        assert compile_blocks(model, backend="aot_eager") == 0 and is_compiled(model)  # once
        assert not any(is_compiled(m) for m in (model.head, model.patch_embedding, model.audio_injection))
        compiled = model(**inp)
        assert graphs() == 1  # both blocks run one graph
        again = model(**inp)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    assert torch.equal(again, compiled) and graphs() == 1
    assert list(model.state_dict()) == keys  # nothing wrapped: files, loaders and merges see the same names
    uncompile_regions(model)
    assert not is_compiled(model)


def test_state_dict_round_trips_and_weights_changed_after_compile_are_used():
    """The weights are inputs of the compiled graph: loading (the release loader copies in place) and an in-place
    merge after compiling are seen. The library still compiles after any merge (module layout / dtype changes would
    retrace)."""
    model, other = tiny_model(seed=0), tiny_model(seed=5)
    inp = inputs()
    with torch.no_grad():
        compile_blocks(model, backend="aot_eager")
        model(**inp)
        fresh = tiny_model(seed=9)
        fresh.load_state_dict(model.state_dict())  # a compiled model's state dict loads into an eager one
        torch.testing.assert_close(fresh(**inp), model(**inp), atol=1e-5, rtol=0)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(**inp), other(**inp), atol=1e-5, rtol=0)
        delta = {k: torch.randn_like(v) * 0.01 for k, v in other.state_dict().items() if k.endswith("cross_attn.k_audio.weight")}
        for m in (model, other):  # a LoRA-like in-place merge of the audio keys
            for k, d in delta.items():
                m.get_parameter(k).add_(d)
        torch.testing.assert_close(model(**inp), other(**inp), atol=1e-5, rtol=0)
    assert graphs() == 1


# ------------------------------------------------------------------------------------------ sampling
@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=4, z_dim=16).eval()


def _ref(h=32, w=48):
    return (torch.rand(h, w, 3, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8).numpy()


def _shot(model, vae, settings, frames=5):
    g = torch.Generator().manual_seed(3)
    c = model.cfg
    windows = torch.randn(1, frames, 5, c.audio.blocks, c.audio.channels, generator=g)
    return generate(model, vae, _ref(), torch.randn(1, 4, c.text_dim, generator=g),
                    torch.randn(1, 257, c.clip_dim, generator=g), windows, settings)


def _latents(model, settings, t_lat=3, hw=(4, 6)):
    """The denoising loop alone (no VAE): random condition latents of ``t_lat`` latent frames at ``hw``."""
    g = torch.Generator().manual_seed(5)
    c = model.cfg
    y = torch.randn(1, 20, t_lat, *hw, generator=g)
    windows = torch.randn(1, 4 * (t_lat - 1) + 1, 5, c.audio.blocks, c.audio.channels, generator=g)
    return sample_latents(model, y, torch.randn(1, 4, c.text_dim, generator=g), torch.randn(1, 257, c.clip_dim, generator=g),
                          windows, settings)[0]


def test_two_step_generation_compiled_matches_eager(tiny_vae):
    s = V3Settings(steps=2, teacache="off", audio_cfg=3.0, color_transfer=False)
    eager = _shot(tiny_model(), tiny_vae, s)
    model = tiny_model()
    compile_blocks(model, backend="aot_eager")
    compiled = _shot(model, tiny_vae, s)
    torch.testing.assert_close(compiled.latents, eager.latents, atol=1e-4, rtol=1e-4)
    assert np.abs(compiled.frames.astype(int) - eager.frames.astype(int)).max() <= 1  # uint8 by truncation
    assert graphs() == 1  # 2 steps x (audio, zero audio) x 2 blocks: one graph


def test_graphs_stay_bounded_over_cfg_teacache_and_the_chunks_of_a_long_clip(tiny_vae, tmp_path):
    """Audio CFG is two batch-1 calls (the shapes of CFG off): no recompile. The shorter last chunk of a long clip
    makes the token and latent-frame counts symbolic once (automatic dynamic shapes); every later length and size
    reuses that graph. With one static graph per shape (dynamic=False) the count grows with every length."""
    from echomimic_lib.audio.wav2vec import prepare_samples
    from echomimic_lib.pipeline.wan.long import generate_long
    from tests.test_v3_audio import _tiny_wav2vec

    tiny = dataclasses.replace(TINY, audio=dataclasses.replace(TINY.audio, blocks=3, channels=16))
    model = tiny_model(cfg=tiny)
    compile_blocks(model, backend="aot_eager")
    calls = []
    forward = model.forward
    model.forward = lambda *a, **k: (calls.append(tuple(a[0].shape[2:])), forward(*a, **k))[1]  # latent (T, h, w)
    for cfg, tea in ((3.0, "off"), (1.0, "official"), (3.0, "official")):
        _latents(model, V3Settings(steps=2, teacache=tea, teacache_skip_start=1, audio_cfg=cfg))
    assert graphs() == 1 and set(calls) == {(3, 4, 6)}  # CFG on and off, TeaCache on and off: one graph

    enc = _tiny_wav2vec(tmp_path / "w2v")
    g = torch.Generator().manual_seed(4)
    speech = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    long = generate_long(model, tiny_vae, enc, _ref(), torch.randn(1, 4, 16, generator=g),
                         torch.randn(1, 257, 24, generator=g), prepare_samples(speech, 12), 12,
                         V3Settings(steps=1, teacache="off", audio_cfg=2.0), chunk=9, overlap=2, margin=4)
    assert long.shape[0] == 12 and calls[-1] == (2, 4, 6)  # chunks 0-8 and 7-11 (run as 5 frames: 2 latent frames)
    after_long = graphs()
    assert after_long <= 3  # the static graph + the symbolic one (twice: the first block's input is a view)
    for t_lat, hw in ((4, (4, 6)), (5, (4, 6)), (3, (6, 4)), (2, (8, 8))):  # other lengths and sizes
        _latents(model, V3Settings(steps=1, teacache="off", audio_cfg=2.0), t_lat, hw)
    assert {c[0] for c in calls} == {2, 3, 4, 5} and len(set(calls)) == 6
    assert graphs() == after_long  # no further graph


@pytest.mark.slow
def test_inductor_blocks_match_eager_for_two_lengths():
    """The real backend once (code generated for the static and the symbolic graph; minutes of C++ on a CPU)."""
    model = tiny_model()
    with torch.no_grad():
        eager = {t: model(**inputs(t_lat=t)) for t in (3, 2)}
        compile_blocks(model)
        for t, want in eager.items():
            torch.testing.assert_close(model(**inputs(t_lat=t)), want, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ front ends
def _animate(tmp_path, *extra):
    from echomimic_lib.cli import main

    return main(["animate", "--version", "v3-flash", "--smoke", "--reference", str(DATA / "images" / "portrait_a.png"),
                 "--audio", str(DATA / "audio" / "echomimic_en.wav"), "-o", str(tmp_path / "v3.mp4"), "--models",
                 str(tmp_path / "models"), "--device", "cpu", "--length", "9", *extra])


def test_cli_compile_smoke_runs_compiled_with_the_cpu_warning(tmp_path, aot_eager, caplog, capsys):
    import av

    caplog.set_level(logging.WARNING, "echomimic_lib.speed")
    assert _animate(tmp_path, "--compile") == 0, capsys.readouterr().err
    assert len(aot_eager) == 1 and is_compiled(aot_eager[0]) and graphs() >= 1  # the transformer's blocks ran compiled
    assert "--compile on 'cpu'" in caplog.text and "several minutes" in caplog.text
    with av.open(str(tmp_path / "v3.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 9
    assert _animate(tmp_path, "--cuda-graphs") == 2  # still a V1/V2 option for V3
    assert "--cuda-graphs is a V1/V2 option" in capsys.readouterr().err


def test_batch_compile_column_is_parsed_and_gets_its_own_loaded_set(tmp_path, aot_eager, shared_data, monkeypatch):
    import echomimic_lib.pipeline.wan.sampler as sampler
    from echomimic_lib.jobs.batch.manifest import check_jobs, read_manifest
    from echomimic_lib.jobs.batch.render import ModelCache
    from echomimic_lib.jobs.batch.results import fingerprint
    from echomimic_lib.jobs.batch.v3 import render_v3_job
    from echomimic_lib.models.wan.tiny import write_tiny_v3

    write_tiny_v3(tmp_path / "models" / "tiny-v3")
    base = {"version": "v3-flash", "reference": str(shared_data / "images" / "portrait_a.png"), "smoke": True,
            "audio": str(shared_data / "audio" / "echomimic_en.wav"), "models": str(tmp_path / "models"), "length": 5}
    rows = [{**base, "name": "plain"}, {**base, "name": "fast", "compile": "true"}, {**base, "name": "off", "compile": False}]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs = check_jobs(read_manifest(manifest, tmp_path / "out"))
    plain, fast, off = jobs
    assert [j.request.compile for j in jobs] == [False, True, False] and not any(j.error for j in jobs)
    assert fast.weight_key == plain.weight_key + ("compiled",) and off.weight_key == plain.weight_key
    assert fingerprint(off) == fingerprint(plain) != fingerprint(fast)  # compile off: fingerprints as before the column

    seen = []
    real = sampler.generate
    monkeypatch.setattr(sampler, "generate", lambda model, *a, **k: (seen.append(is_compiled(model)), real(model, *a, **k))[1])
    cache = ModelCache()
    for job in (plain, fast):
        assert render_v3_job(job, cache)["frames"] == 5
    assert seen == [False, True] and cache.loads == 2  # a plain row's set is not the compiled one
    assert len(aot_eager) == 1


def test_v3_loader_node_compile_input(tmp_path, aot_eager, monkeypatch):
    """An optional switch, off by default (workflows saved without it load the plain transformer); on, the loaded
    transformer's blocks are compiled once, and the Sampler renders what the plain one renders."""
    from types import SimpleNamespace

    from echomimic_lib.models.wan.tiny import CLIP_DIM, TEXT_DIM, write_tiny_v3
    from echomimic_lib.models.wan.vae import DiffusersPixelVAE, load_wan_vae
    from tests._pack import sub

    bridge, v3 = sub("nodes.comfy_bridge"), sub("nodes.v3")
    monkeypatch.setattr(bridge, "MODELS_DIR", tmp_path / "models")
    folder = write_tiny_v3(tmp_path / "models" / "echomimic" / "v3-flash")
    types = v3.EchoMimicV3Loader.INPUT_TYPES()
    assert types["optional"]["compile"][0] == "BOOLEAN" and types["optional"]["compile"][1]["default"] is False
    # optional inputs only ever go at the end, in the order they were added (saved workflows keep their values)
    assert "compile" not in types["required"] and list(types["optional"]) == ["auto_download", "compile", "fp8"]
    (plain,) = v3.EchoMimicV3Loader().execute("v3-flash", "fp32")  # an old workflow: no compile value
    (fast,) = v3.EchoMimicV3Loader().execute("v3-flash", "fp32", compile=True)
    compiled = sub("echomimic_lib.models.wan.compile").is_compiled
    assert compiled(fast.patcher.model.net) and not compiled(plain.patcher.model.net)
    assert len(aot_eager) == 1 and aot_eager[0] is fast.patcher.model.net

    g = torch.Generator().manual_seed(0)
    audio = {"waveform": torch.randn(1, 1, 22050, generator=g) * 0.1, "sample_rate": 22050}
    positive = [[torch.cat([torch.randn(1, 6, TEXT_DIM, generator=g), torch.zeros(1, 506, TEXT_DIM)], 1), {}]]
    clip = SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, CLIP_DIM, generator=g))
    vae = DiffusersPixelVAE(load_wan_vae(folder / "vae"))
    image = torch.rand(1, 40, 56, 3, generator=g)
    out = []
    for handle in (plain, fast):
        v3_audio, _ = v3.EchoMimicV3AudioEncoder().execute(handle, audio, 5)
        out.append(v3.EchoMimicV3Sampler().execute(handle, v3_audio, positive, clip, vae, image, 64, 2, 3.0, 1, "off",
                                                   False)[0])
    assert graphs() == 1 and out[0].shape == out[1].shape
    assert float((out[0] - out[1]).abs().max()) <= 1.5 / 255
    bridge.unload_all_models()
