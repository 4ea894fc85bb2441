"""The nodes' speed inputs (ComfyUI stubbed by the bridge's stand-ins, tiny weights): the Model Loader's optional
'compile' (the denoiser's regions compiled once when the set is loaded, part of the handle's key) and the Sampler's
optional 'cuda_graphs' (carried into the SampleSettings). A combination that cannot work raises EchoMimicError
(what ComfyUI shows as the node's error) before any weight is read or any network is loaded. Compiling here uses
``aot_eager`` (traced, no code generated): an inductor compile takes minutes on this CPU."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tests._pack import load_pack, sub

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ECHOMIMIC_SHARED_DIR", ROOT.parent / "shared")).resolve() / "data"
N = load_pack().NODE_CLASS_MAPPINGS
C = sub("nodes.comfy_bridge")
EchoMimicError = sub("echomimic_lib.errors").EchoMimicError
SIZE = 64


@pytest.fixture
def comfy(tiny_comfy_models, monkeypatch):
    """ComfyUI's folders on the tiny weights and an empty stand-in model manager that records every load request."""
    monkeypatch.setattr(C, "MODELS_DIR", tiny_comfy_models)
    monkeypatch.setattr(C, "INPUT_DIR", tiny_comfy_models.parent / "input")
    mm = C.StandInModelManager()
    mm.requests = []
    load = mm.load_models_gpu

    def recording(patchers, memory_required=0):
        mm.requests.append([type(p.model).__name__ for p in patchers])
        load(patchers, memory_required)

    mm.load_models_gpu = recording
    monkeypatch.setattr(C, "MODEL_MANAGER", mm)
    return mm


@pytest.fixture
def compile_calls(monkeypatch):
    import torch._dynamo

    mod = sub("echomimic_lib.models.unet.compile")
    real, calls = mod.compile_regions, []

    def recorder(module, **kw):
        calls.append(module)
        return real(module, **{**kw, "backend": "aot_eager"})

    monkeypatch.setattr(mod, "compile_regions", recorder)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


def loader(version="V1 audio", **kw):
    args = dict(dtype="auto", attention="sdpa", keep_loaded=False, weights_folder="auto", vae="auto", auto_download=False)
    return N["EchoMimicModelLoader"]().execute(version, "normal", **{**args, **kw})[0]


def features(handle):
    from echomimic_lib.io.audio_file import read_audio

    wav, sr = read_audio(DATA / "audio" / "echomimic_en.wav")
    clip = {"waveform": torch.from_numpy(np.ascontiguousarray(wav[:, : sr // 2])).unsqueeze(0), "sample_rate": sr}
    return N["EchoMimicAudioEncoder"]().execute(handle, clip, 24.0)[0]


REFERENCE = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))


def run(handle, feats, **kw):
    """One step, one window of 12 frames."""
    return N["EchoMimicSampler"]().execute(handle, REFERENCE, feats, 7, 1, 0.0, SIZE, SIZE, 12, 12, 3, **kw)[0]


def test_speed_inputs_are_optional_switches_that_are_off_and_come_last():
    loader_types, sampler_types = N["EchoMimicModelLoader"].INPUT_TYPES(), N["EchoMimicSampler"].INPUT_TYPES()
    # (the sampler's DeepCache inputs came after cuda_graphs: tests/test_deep_cache_options.py; then resumable:
    # tests/test_nodes_resume.py)
    for types_, name, after in ((loader_types, "compile", []), (sampler_types, "cuda_graphs", ["deep_cache", "deep_cache_branch", "resumable"])):
        assert name not in types_["required"] and list(types_["optional"])[-1 - len(after):] == [name] + after  # saved prompts without it still run
        kind, opts = types_["optional"][name]
        assert kind == "BOOLEAN" and opts["default"] is False
    assert "minute" in loader_types["optional"]["compile"][1]["tooltip"] and "low_vram" in loader_types["optional"]["compile"][1]["tooltip"]
    assert "CUDA" in sampler_types["optional"]["cuda_graphs"][1]["tooltip"]


@pytest.mark.slow
def test_loader_compile_compiles_the_denoiser_once_is_in_the_key_and_renders_the_same_frames(comfy, compile_calls):
    plain = loader()
    compiled = loader(compile=True)
    assert compile_calls == [compiled.models.denoiser]  # once, at load; the default loads nothing compiled
    is_compiled = sub("echomimic_lib.models.unet.compile").is_compiled
    assert is_compiled(compiled.models.denoiser) and not is_compiled(plain.models.denoiser)
    assert compiled.compiled and not plain.compiled
    assert plain.key[-1] is False and compiled.key == plain.key[:-1] + (True,)  # another cached set, nothing else differs
    feats = features(plain)
    a, b = run(plain, feats), run(compiled, feats)  # through the stage placement (the networks move per stage)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    run(compiled, feats)
    assert compile_calls == [compiled.models.denoiser]  # a second run compiles nothing again


def test_loader_refuses_compile_with_low_vram_before_reading_weights(comfy, monkeypatch):
    loader_mod = sub("nodes.loader")

    def no_weights(*a, **k):
        raise AssertionError("weights read before the inputs were checked")

    monkeypatch.setattr(loader_mod, "load_models", no_weights)
    monkeypatch.setattr(loader_mod, "resolve", no_weights)
    with pytest.raises(EchoMimicError) as e:
        loader(compile=True, low_vram=True)
    assert "'compile' (EchoMimic Model Loader) cannot go with 'low_vram' (EchoMimic Model Loader)" in str(e.value)
    assert "Drop one of them" in str(e.value)


def test_sampler_refuses_cuda_graphs_off_a_gpu_and_with_low_vram_before_any_work(comfy, monkeypatch):
    plain, streamed = loader(), loader(low_vram=True)
    feats = features(plain)
    comfy.requests.clear()
    with pytest.raises(EchoMimicError) as e:
        run(plain, feats, cuda_graphs=True)
    msg = str(e.value)
    assert "'cuda_graphs' (EchoMimic Sampler) records the denoiser call as a CUDA graph" in msg and "'cpu'" in msg
    assert "start ComfyUI on an NVIDIA GPU" in msg
    monkeypatch.setattr(C, "torch_device", lambda: torch.device("cuda"))  # a GPU, as ComfyUI would report it
    with pytest.raises(EchoMimicError) as e:
        run(streamed, feats, cuda_graphs=True)
    assert "'cuda_graphs' (EchoMimic Sampler) cannot go with 'low_vram' (EchoMimic Model Loader)" in str(e.value)
    assert comfy.requests == []  # no network was loaded for either run


class _Stop(Exception):
    pass


def test_sampler_passes_cuda_graphs_into_the_sample_settings(comfy, monkeypatch):
    sampler_mod = sub("nodes.sampler")
    seen, checked = [], []

    class Recording(sampler_mod.Sampler):
        def __call__(self, reference, audio, condition, settings, **kw):
            seen.append(settings)
            raise _Stop

    monkeypatch.setattr(sampler_mod, "Sampler", Recording)
    monkeypatch.setattr(sampler_mod, "check_speed_options", lambda device, **kw: checked.append(kw))  # (the CPU is refused)
    handle = loader()
    feats = features(handle)
    for kw in ({}, {"cuda_graphs": True}, {"cuda_graphs": False}):  # without the input: a prompt saved before it existed
        with pytest.raises(_Stop):
            run(handle, feats, **kw)
        assert seen[-1].cuda_graphs is kw.get("cuda_graphs", False) and checked[-1]["cuda_graphs"] is kw.get("cuda_graphs", False)
