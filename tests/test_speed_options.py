"""The speed options ``compile`` and ``cuda_graphs`` (echomimic_lib.speed) from the command line and batch rows:
refused combinations with their messages, the denoiser's regions compiled after the LoRA / fp8 handling (with
``aot_eager``: traced, no code generated; an inductor compile takes minutes on this CPU), and ``cuda_graphs``
carried into the SampleSettings the Sampler receives. The nodes' inputs are tested in tests/test_nodes.py, the
refusals through the real entry point in tests/test_cli_bad_input.py."""
import dataclasses
import hashlib
import json
import logging

import pytest
import torch

from echomimic_lib.cli import build_parser
from echomimic_lib.cli import main as cli
from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io.audio_file import read_audio
from echomimic_lib.io.video_io import read_video
from echomimic_lib.speed import CLI, OptionNames, check_speed_options
from tests._media import write_wav

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # (a device name: no GPU is needed to build it)


@pytest.fixture(scope="module")
def media(tmp_path_factory, shared_data):
    from tests._tiny_shared import tiny_v1_copy

    d = tmp_path_factory.mktemp("speed")
    tiny_v1_copy(tmp_path_factory, d / "models")
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    write_wav(d / "speech.wav", wav[0, : int(0.5 * sr)], sr)
    return d


@pytest.fixture
def compile_calls(monkeypatch):
    """compile_regions replaced by a recorder that compiles for real with aot_eager (no inductor code generation)."""
    import torch._dynamo

    import echomimic_lib.models.unet.compile as compile_mod
    from echomimic_lib.memory import is_fp8

    real, calls = compile_mod.compile_regions, []

    def recorder(module, **kw):
        calls.append({"module": module, "fp8": is_fp8(module), "kw": kw})
        return real(module, **{**kw, "backend": "aot_eager"})

    monkeypatch.setattr(compile_mod, "compile_regions", recorder)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


def _animate(media, out, *extra):
    return ["animate", "--reference", str(media / "ref.png"), "--audio", str(media / "speech.wav"), "-o", str(out),
            "--models", str(media / "models"), "--offline", "-q", "--no-face-crop", "--width", "64", "--height", "64",
            "--steps", "1", "--length", "3", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def reference(media, shared_data):
    (media / "ref.png").write_bytes((shared_data / "images" / "portrait_a.png").read_bytes())
    return media / "ref.png"


# ------------------------------------------------------------------------------------------ the checks
def test_each_refused_combination_names_the_problem_and_the_fix():
    with pytest.raises(EchoMimicError) as e:
        check_speed_options(CPU, cuda_graphs=True)
    assert all(w in str(e.value) for w in ("--cuda-graphs", "needs a CUDA GPU", "'cpu'", "drop --cuda-graphs", "--device"))
    with pytest.raises(EchoMimicError) as e:
        check_speed_options(torch.device("mps"), cuda_graphs=True, compile=True)
    assert "'mps'" in str(e.value)
    with pytest.raises(EchoMimicError) as e:
        check_speed_options(CUDA, cuda_graphs=True, low_vram=True)
    assert all(w in str(e.value) for w in ("--cuda-graphs cannot go with --low-vram", "streams", "Drop one of them"))
    with pytest.raises(EchoMimicError) as e:
        check_speed_options(CUDA, compile=True, low_vram=True)
    assert all(w in str(e.value) for w in ("--compile cannot go with --low-vram", "recompile", "Drop one of them"))
    check_speed_options(CUDA, compile=True, cuda_graphs=True)  # together: fine
    check_speed_options(CPU, low_vram=True)  # neither option: nothing to check
    names = OptionNames("'compile'", "'cuda_graphs'", "'low_vram'", "start ComfyUI on a GPU")
    with pytest.raises(EchoMimicError, match="'cuda_graphs' records .* drop 'cuda_graphs', or start ComfyUI on a GPU"):
        check_speed_options(CPU, cuda_graphs=True, names=names)
    assert CLI.compile == "--compile"


def test_compile_off_a_gpu_is_allowed_and_says_that_compiling_takes_minutes(caplog):
    caplog.set_level(logging.WARNING, "echomimic_lib.speed")
    check_speed_options(CPU, compile=True)
    assert "several minutes" in caplog.text and "Drop --compile" in caplog.text
    caplog.clear()
    check_speed_options(CUDA, compile=True)
    assert caplog.text == ""


# ------------------------------------------------------------------------------------------ compile
@pytest.mark.slow
def test_fp8_upcast_hooks_are_traced_into_the_compiled_blocks_without_a_graph_break():
    """fp8 + compile is allowed: the per-layer upcast is part of each layer's forward (fullgraph=True fails on any
    graph break), and the compiled blocks compute what the eager fp8 blocks do."""
    import torch._dynamo

    from echomimic_lib.config import TINY
    from echomimic_lib.memory import to_fp8
    from echomimic_lib.models.unet import EchoUNet
    from echomimic_lib.models.unet.compile import compile_regions, uncompile_regions
    from echomimic_lib.tiny import randomize_

    ref = randomize_(EchoUNet(TINY, "reference"), 7).eval()
    den = randomize_(EchoUNet(TINY, "denoiser"), 8).eval()
    to_fp8(den)
    g = torch.Generator().manual_seed(3)
    x, audio, r = torch.randn(2, 4, 2, 8, 8, generator=g), torch.randn(1, 2, 10, 384, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        kv = den.prepare_reference(ref.forward_reference(r)[0], join_budget=0)
        eager = den(x, 500, audio=audio, reference=kv, uncond_rows=1)
        torch._dynamo.reset()
        try:
            n = compile_regions(den.down_blocks[0], backend="aot_eager", fullgraph=True)
            n += compile_regions(den.mid_block, backend="aot_eager", fullgraph=True)
            compiled = den(x, 500, audio=audio, reference=kv, uncond_rows=1)
        finally:
            uncompile_regions(den)
    assert n == 10 and den.down_blocks[0].resnets[0].conv1.weight.dtype == torch.float8_e4m3fn
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_animate_compile_compiles_the_denoiser_after_fp8_and_renders_the_same_frames(media, reference, compile_calls,
                                                                                     tmp_path, caplog, monkeypatch):
    from echomimic_lib.pipeline import Sampler

    frames, call = [], Sampler.__call__

    def keep_frames(self, *args, frame_sink=None, **kw):  # the decoded frames, before H.264 (not bit-stable) encodes them
        def sink(start, batch):
            frames[-1].append(batch.clone())
            frame_sink(start, batch)

        frames.append([])
        return call(self, *args, frame_sink=sink, **kw)

    monkeypatch.setattr(Sampler, "__call__", keep_frames)
    plain, compiled = tmp_path / "plain.mp4", tmp_path / "compiled.mp4"
    assert cli(_animate(media, plain, "--fp8")) == 0
    assert compile_calls == []  # off by default
    caplog.set_level(logging.INFO)
    assert cli(_animate(media, compiled, "--fp8", "--compile")) == 0
    assert len(compile_calls) == 1
    first = compile_calls[0]
    assert first["module"].role == "denoiser" and first["fp8"]  # the denoiser, compiled after the fp8 conversion
    assert "several minutes" in caplog.text  # on the CPU: said before the run
    assert read_video(compiled).frames.shape == (3, 64, 64, 3)
    a, b = (torch.cat(f) for f in frames)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)  # (aot_eager: the same kernels; inductor: float rounding)


def test_batch_workers_compile_the_set_once_when_they_load_it(media, reference, compile_calls):
    from echomimic_lib.jobs.animate import AnimateRequest
    from echomimic_lib.jobs.animate_checks import preflight
    from echomimic_lib.jobs.batch.render import _load_animate
    from echomimic_lib.models.unet.compile import is_compiled

    for on in (False, True):
        req = AnimateRequest(str(reference), str(media / "speech.wav"), str(media / "o.mp4"), models=str(media / "models"),
                             face_crop=False, width=64, height=64, length=3, device="cpu", download=False, compile=on)
        plan = preflight(req)
        models, place = _load_animate(plan, plan.request)
        assert is_compiled(models.denoiser) is on and len(compile_calls) == int(on)
    assert compile_calls[0]["module"] is models.denoiser


# ------------------------------------------------------------------------------------------ cuda_graphs
class _Stop(Exception):
    pass


@pytest.fixture
def sampler_settings(monkeypatch):
    """The SampleSettings each Sampler call receives (the call then stops: no GPU to record on)."""
    from echomimic_lib.pipeline import Sampler

    seen = []

    def record(self, reference, audio, condition, settings, **kw):
        seen.append(settings)
        raise _Stop

    monkeypatch.setattr(Sampler, "__call__", record)
    return seen


def test_cuda_graphs_reaches_the_settings_the_sampler_receives(media, reference, sampler_settings, monkeypatch):
    import echomimic_lib.jobs.animate_checks as checks
    from echomimic_lib.jobs.animate import AnimateRequest, run

    checked = []
    monkeypatch.setattr(checks, "check_speed_options", lambda device, **kw: checked.append(kw))  # (the CPU would be refused)
    for on in (False, True):
        req = AnimateRequest(str(reference), str(media / "speech.wav"), str(media / f"cg{on}.mp4"), models=str(media / "models"),
                             face_crop=False, width=64, height=64, length=3, steps=1, device="cpu", download=False, cuda_graphs=on)
        with pytest.raises(_Stop):
            run(req)
        assert sampler_settings[-1].cuda_graphs is on and checked[-1]["cuda_graphs"] is on
        assert not (media / f"cg{on}.mp4").exists()


def test_dub_takes_the_speed_options_too(shared_data, monkeypatch, tmp_path):
    import echomimic_lib.speed as speed
    from echomimic_lib.jobs.dub import DubRequest, _validate

    req = DubRequest(str(shared_data / "video" / "driving_a.mp4"), None, str(tmp_path / "d.mp4"), device="cpu", download=False,
                     mediapipe_model=str(shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"), cuda_graphs=True)
    with pytest.raises(EchoMimicError, match="--cuda-graphs records"):
        _validate(req)
    monkeypatch.setattr(speed, "check_speed_options", lambda device, **kw: None)
    assert _validate(req).settings.cuda_graphs is True
    assert _validate(dataclasses.replace(req, cuda_graphs=False)).settings.cuda_graphs is False
    args = build_parser().parse_args(["dub", "--video", "v.mp4", "-o", "o.mp4", "--compile", "--cuda-graphs"])
    assert args.compile and args.cuda_graphs


# ------------------------------------------------------------------------------------------ batch rows
def test_batch_rows_and_flags_take_the_options_and_older_fingerprints_stay(media, reference, tmp_path):
    from echomimic_lib.cli.batch import _defaults
    from echomimic_lib.jobs.batch import check_jobs, read_manifest
    from echomimic_lib.jobs.batch.results import fingerprint

    common = "ref.png,speech.wav,models,true,true,64,64,3"
    (media / "rows.csv").write_text("name,reference,audio,models,no-face-crop,offline,width,height,length,compile,cuda-graphs\n"
                                    f"plain,{common},,\ncompiled,{common},true,\ngraphs,{common},,yes\n")
    jobs = {j.name: j for j in check_jobs(read_manifest(media / "rows.csv", tmp_path))}
    plain, compiled, graphs = jobs["plain"], jobs["compiled"], jobs["graphs"]
    assert compiled.request.compile and not plain.request.compile and graphs.request.cuda_graphs
    assert plain.error is None and compiled.error is None  # compile on the CPU: allowed (a warning)
    assert "--cuda-graphs" in graphs.error and "needs a CUDA GPU" in graphs.error  # an error row, the others go on
    assert len(plain.weight_key) == 9 and compiled.weight_key == plain.weight_key + ("compiled",)  # its own loaded set
    # a row without the new options keeps the fingerprint it had before they existed (a rerun finds it done)
    settings = {k: v for k, v in dataclasses.asdict(plain.request).items()
                if k not in ("compile", "cuda_graphs", "deep_cache", "deep_cache_branch", "stabilize", "resumable", "output",
                             "device", "reference", "audio", "landmarks", "pose", "lora")}
    inputs = {k: hashlib.sha256(open(getattr(plain.request, k), "rb").read()).hexdigest() for k in ("reference", "audio")}
    doc = {"kind": "animate", "settings": settings, "inputs": inputs, "weights": [str(k) for k in plain.weight_key]}
    assert fingerprint(plain) == hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    for field in ("compile", "cuda_graphs"):  # hashed once set
        changed = dataclasses.replace(plain, request=dataclasses.replace(plain.request, **{field: True}))
        assert fingerprint(changed) != fingerprint(plain)
    args = build_parser().parse_args(["batch", "rows.csv", "-o", "out", "--compile", "--cuda-graphs"])
    assert _defaults(args) == {"compile": "true", "cuda_graphs": "true"}
    assert _defaults(build_parser().parse_args(["batch", "rows.csv", "-o", "out"])) == {}
