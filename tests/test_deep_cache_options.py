"""DeepCache's two options (``deep_cache``: the interval, ``deep_cache_branch``) from every V1/V2 entry point to the
SampleSettings the Sampler receives: ``echomimic animate`` / ``dub`` (``--deep-cache N``, ``--deep-cache-branch B``),
``echomimic batch`` (columns, ``--set``, the flags for every row) and the EchoMimic Sampler node (two optional INT
inputs, last). Bad values are refused by name, with the fix, before any weight is read; EchoMimicV3 flash-pro refuses
both by name; a batch row without them keeps the fingerprint it had before they existed.

What DeepCache does to the pixels is the sampler's business (tested with it); here the Sampler is replaced by a
recorder that keeps the settings it is given and stops."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from echomimic_lib.cli import build_parser
from echomimic_lib.cli import main as cli
from echomimic_lib.config import SD15, TINY
from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io.audio_file import read_audio
from echomimic_lib.speed import CLI, check_deep_cache
from tests._media import write_wav
from tests._pack import load_pack, sub
from tests.test_cli_bad_input import loads  # noqa: F401 (fixture: weight loading that fails if reached)
from tests.test_nodes_speed import comfy  # noqa: F401 (fixture: ComfyUI folders and a recording model manager)
from tests.test_speed_options import _Stop, sampler_settings  # noqa: F401 (fixture: the settings a Sampler receives)

MP_MODEL = "face_landmarker_v2_with_blendshapes.task"


@pytest.fixture(scope="module")
def media(tmp_path_factory, shared_data):
    from tests._tiny_shared import tiny_v1_copy

    d = tmp_path_factory.mktemp("deep_cache")
    tiny_v1_copy(tmp_path_factory, d / "models")
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    write_wav(d / "speech.wav", wav[0, : int(0.5 * sr)], sr)
    (d / "ref.png").write_bytes((shared_data / "images" / "portrait_a.png").read_bytes())
    (d / "empty").mkdir()
    return d


def _animate(media, out, *extra):
    return ["animate", "--reference", str(media / "ref.png"), "--audio", str(media / "speech.wav"), "-o", str(out),
            "--models", str(media / "models"), "--offline", "-q", "--no-face-crop", "--width", "64", "--height", "64",
            "--steps", "3", "--length", "3", "--device", "cpu", *extra]


def _dub(shared_data, out, models, *extra):
    return ["dub", "--video", str(shared_data / "video" / "driving_a.mp4"), "-o", str(out), "--models", str(models),
            "--offline", "-q", "--device", "cpu", "--mediapipe-model", str(shared_data / "mediapipe" / MP_MODEL), *extra]


# ------------------------------------------------------------------------------------------ the check
@pytest.mark.parametrize("interval,branch,words", [
    (11, 0, ["--deep-cache 11", "0 (off) to 10", "2 or 3 is typical", "Use --deep-cache 2 or 3, or 0 to switch it off"]),
    (-1, 0, ["--deep-cache -1", "0 (off) to 10"]),
    (3, -1, ["--deep-cache-branch -1", "branches 0 to 11", "0, the shallowest, is the fastest", "--deep-cache-branch 0 to 11"]),
    (3, 12, ["--deep-cache-branch 12", "branches 0 to 11"]),
    (0, 2, ["--deep-cache-branch has no effect without --deep-cache N (N >= 2)", "add --deep-cache 2 or 3"]),
    (1, 1, ["--deep-cache-branch has no effect without --deep-cache N (N >= 2)"]),
    ("three", 0, ["--deep-cache 'three'", "whole number"]),
    (2.5, 0, ["--deep-cache 2.5", "whole number"]),
    (3, True, ["--deep-cache-branch True", "whole number"]),
])
def test_each_bad_value_is_refused_naming_the_option_and_the_fix(interval, branch, words):
    with pytest.raises(EchoMimicError) as e:
        check_deep_cache(interval, branch)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_good_values_pass_as_whole_numbers_and_the_branches_are_the_denoisers():
    assert check_deep_cache(0, 0) == (0, 0) and check_deep_cache(1, 0) == (1, 0)  # off: nothing to refuse
    assert check_deep_cache(3, 11) == (3, 11) and check_deep_cache(10, 0) == (10, 0)
    assert check_deep_cache("3", 2.0) == (3, 2)  # (a batch cell, a JSON number)
    assert check_deep_cache(2, 11, TINY) == (2, 11)  # the tiny test set has SD1.5's 12 up-path layers too
    shallow = SD15.with_(layers_per_block=1)  # 4 x 2 up-path layers: branches 0..7
    assert check_deep_cache(2, 7, shallow) == (2, 7)
    with pytest.raises(EchoMimicError, match="branches 0 to 7"):
        check_deep_cache(2, 8, shallow)
    assert CLI.deep_cache == "--deep-cache" and CLI.deep_cache_branch == "--deep-cache-branch"


# ------------------------------------------------------------------------------------------ command line
def test_animate_flags_reach_the_settings_the_sampler_receives(media, sampler_settings):
    from echomimic_lib.cli.animate import request_from_args
    from echomimic_lib.jobs.animate import run

    for extra, want in (((), (0, 0)), (("--deep-cache", "3"), (3, 0)), (("--deep-cache", "2", "--deep-cache-branch", "5"), (2, 5))):
        args = build_parser().parse_args(_animate(media, media / "out.mp4", *extra))
        req = request_from_args(args)
        assert (req.deep_cache, req.deep_cache_branch) == want
        with pytest.raises(_Stop):
            run(req)
        s = sampler_settings[-1]
        assert (s.deep_cache, s.deep_cache_branch) == want and s.steps == 3 and s.width == 64
    assert not (media / "out.mp4").exists()


def test_dub_flags_reach_its_settings(shared_data, media, monkeypatch):
    import echomimic_lib.jobs.dub as dub

    requests = []

    def capture(req, progress=None):  # the request the command built; a summary for its last line, nothing rendered
        requests.append(req)
        return dict(output=req.output, frames=0, fps=24, video_seconds=0, size=(64, 64), reference_frame=0, crop=None,
                    passthrough=0, seconds=0)

    monkeypatch.setattr(dub, "run_dub", capture)
    assert cli(_dub(shared_data, media / "d.mp4", media / "empty", "--deep-cache", "3", "--deep-cache-branch", "1")) == 0
    req = requests[-1]
    assert (req.deep_cache, req.deep_cache_branch) == (3, 1)
    s = dub._validate(req).settings
    assert (s.deep_cache, s.deep_cache_branch) == (3, 1)
    s = dub._validate(dataclasses.replace(req, deep_cache=0, deep_cache_branch=0)).settings
    assert (s.deep_cache, s.deep_cache_branch) == (0, 0)


@pytest.mark.parametrize("extra,words", [
    (["--deep-cache", "11"], ["--deep-cache 11", "0 (off) to 10"]),
    (["--deep-cache", "3", "--deep-cache-branch", "12"], ["--deep-cache-branch 12", "branches 0 to 11"]),
    (["--deep-cache", "3", "--deep-cache-branch", "-2"], ["--deep-cache-branch -2", "branches 0 to 11"]),
    (["--deep-cache-branch", "4"], ["--deep-cache-branch has no effect without --deep-cache N (N >= 2)"]),
])
@pytest.mark.parametrize("command", ["animate", "dub"])
def test_bad_values_stop_the_command_before_any_weight(command, extra, words, media, shared_data, loads, capsys, tmp_path):
    out = tmp_path / "o.mp4"
    argv = _animate(media, out, *extra) if command == "animate" else _dub(shared_data, out, media / "empty", *extra)
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and "Traceback" not in err, err
    assert loads == [] and not out.exists()


def test_v3_flash_refuses_both_options_by_name(tmp_path, capsys):
    base = ["animate", "--version", "v3-flash", "--reference", str(tmp_path / "none.png"), "--audio",
            str(tmp_path / "none.wav"), "-o", str(tmp_path / "x.mp4"), "--models", str(tmp_path), "--offline"]
    for extra, said in ((["--deep-cache", "3"], "--deep-cache is a V1/V2 option"),
                        (["--deep-cache", "2", "--deep-cache-branch", "1"], "--deep-cache and --deep-cache-branch are V1/V2 options")):
        assert cli(base + extra) == 2
        assert said in capsys.readouterr().err, extra
    assert not (tmp_path / "x.mp4").exists()


# ------------------------------------------------------------------------------------------ batch
def test_batch_columns_set_and_flags_reach_the_request_and_its_settings(media, tmp_path):
    from echomimic_lib.cli.batch import _defaults
    from echomimic_lib.jobs.animate_checks import preflight
    from echomimic_lib.jobs.batch import check_jobs, read_manifest

    common = "ref.png,speech.wav,models,true,true,64,64,3"
    (media / "dc.csv").write_text("name,reference,audio,models,no-face-crop,offline,width,height,length,deep-cache,"
                                  f"deep-cache-branch\nplain,{common},,\ncached,{common},3,\nbranch,{common},2,4\n"
                                  f"too_deep,{common},11,\nlone_branch,{common},,3\n")
    jobs = {j.name: j for j in check_jobs(read_manifest(media / "dc.csv", tmp_path))}
    want = {"plain": (0, 0), "cached": (3, 0), "branch": (2, 4)}
    for name, (interval, branch) in want.items():
        job = jobs[name]
        assert job.error is None and (job.request.deep_cache, job.request.deep_cache_branch) == (interval, branch)
        s = preflight(job.request).settings
        assert (s.deep_cache, s.deep_cache_branch) == (interval, branch)
    assert jobs["cached"].weight_key == jobs["plain"].weight_key  # the same networks: one loaded set for both
    assert "--deep-cache 11" in jobs["too_deep"].error  # an error row, found up front; the others go on
    assert "--deep-cache-branch has no effect without --deep-cache N" in jobs["lone_branch"].error

    args = build_parser().parse_args(["batch", "rows.csv", "-o", "out", "--set", "deep_cache=3", "--set", "deep_cache_branch=1"])
    rows = read_manifest(media / "dc.csv", tmp_path, _defaults(args))
    got = {j.name: (j.request.deep_cache, j.request.deep_cache_branch) for j in rows}
    assert got["plain"] == (3, 1) and got["cached"] == (3, 1) and got["branch"] == (2, 4)  # a row's own value wins
    args = build_parser().parse_args(["batch", "rows.csv", "-o", "out", "--deep-cache", "2", "--deep-cache-branch", "1"])
    assert _defaults(args) == {"deep_cache": "2", "deep_cache_branch": "1"}
    assert _defaults(build_parser().parse_args(["batch", "rows.csv", "-o", "out"])) == {}


def test_batch_rows_with_a_value_that_is_no_whole_number_or_a_v3_row_are_manifest_errors(media, tmp_path):
    from echomimic_lib.jobs.batch import read_manifest
    from echomimic_lib.jobs.batch.manifest import ManifestError
    from echomimic_lib.jobs.batch.manifest_row import build_job

    (media / "bad.jsonl").write_text(json.dumps({"reference": "ref.png", "audio": "speech.wav", "deep-cache": 2.5}) + "\n")
    with pytest.raises(ManifestError, match="deep_cache: '2.5' is not a whole number"):
        read_manifest(media / "bad.jsonl", tmp_path)
    with pytest.raises(ValueError, match="column 'deep_cache' is not an EchoMimicV3 flash-pro option"):
        build_job({"version": "v3-flash", "reference": "a.png", "audio": "a.wav", "deep-cache": "3"}, 1, tmp_path, tmp_path)


@pytest.mark.parametrize("kind", ["animate", "dub"])
def test_batch_fingerprint_without_deep_cache_is_the_one_recorded_before_the_options(kind, tmp_path):
    """Rows recorded before ``deep_cache`` / ``deep_cache_branch`` existed stay done; setting either is hashed."""
    from echomimic_lib.jobs.animate import AnimateRequest
    from echomimic_lib.jobs.batch.results import INPUT_FIELDS, fingerprint
    from echomimic_lib.jobs.dub import DubRequest

    cls = AnimateRequest if kind == "animate" else DubRequest
    new = {"deep_cache", "deep_cache_branch", "stabilize", "resumable"}  # (and the fields added after them)
    old_fields = [(f.name, f.type, f) for f in dataclasses.fields(cls) if f.name not in new]
    Old = dataclasses.make_dataclass(cls.__name__, old_fields)  # the request as it was before the options
    src, audio = tmp_path / ("a.png" if kind == "animate" else "a.mp4"), tmp_path / "a.wav"
    src.write_bytes(b"picture")
    audio.write_bytes(b"speech")
    kw = dict(audio=str(audio), output=str(tmp_path / "a.mp4"), seed=7, compile=False)
    kw["reference" if kind == "animate" else "video"] = str(src)

    def job(request):
        return SimpleNamespace(kind=kind, request=request, weight_key=("models", "v1_audio", "normal"))

    old = fingerprint(job(Old(**kw)))
    settings = {k: v for k, v in dataclasses.asdict(Old(**kw)).items()
                if k not in ("compile", "cuda_graphs", "output", "device") + INPUT_FIELDS[kind]}
    inputs = {k: hashlib.sha256(p.read_bytes()).hexdigest()
              for k, p in ((("reference" if kind == "animate" else "video"), src), ("audio", audio))}
    doc = {"kind": kind, "settings": settings, "inputs": inputs, "weights": ["models", "v1_audio", "normal"]}
    assert old == hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()  # the recorded one
    assert fingerprint(job(cls(**kw))) == old
    assert fingerprint(job(cls(**kw, deep_cache=0, deep_cache_branch=0))) == old
    cached = fingerprint(job(cls(**kw, deep_cache=3)))
    assert cached != old and fingerprint(job(cls(**kw, deep_cache=3, deep_cache_branch=2))) not in (old, cached)


# ------------------------------------------------------------------------------------------ ComfyUI node
N = load_pack().NODE_CLASS_MAPPINGS
NodeError = sub("echomimic_lib.errors").EchoMimicError
SIZE = 64
REFERENCE = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def node(comfy, shared_data, monkeypatch):
    """(a loaded tiny V1 audio handle, its audio features, the settings each Sampler call receives)."""
    sampler_mod = sub("nodes.sampler")
    seen = []

    class Recording(sampler_mod.Sampler):
        def __call__(self, reference, audio, condition, settings, **kw):
            seen.append(settings)
            raise _Stop

    monkeypatch.setattr(sampler_mod, "Sampler", Recording)
    args = dict(dtype="auto", attention="sdpa", keep_loaded=False, weights_folder="auto", vae="auto", auto_download=False)
    handle = N["EchoMimicModelLoader"]().execute("V1 audio", "normal", **args)[0]
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    clip = {"waveform": torch.from_numpy(np.ascontiguousarray(wav[:, : sr // 2])).unsqueeze(0), "sample_rate": sr}
    feats = N["EchoMimicAudioEncoder"]().execute(handle, clip, 24.0)[0]
    comfy.requests.clear()
    return handle, feats, seen


def _run(handle, feats, **kw):
    return N["EchoMimicSampler"]().execute(handle, REFERENCE, feats, 7, 2, 0.0, SIZE, SIZE, 12, 12, 3, **kw)


def test_node_inputs_are_two_optional_ints_after_the_existing_ones():
    spec = N["EchoMimicSampler"].INPUT_TYPES()
    assert list(spec["optional"])[-4:-1] == ["cuda_graphs", "deep_cache", "deep_cache_branch"]  # saved widget order kept
    assert list(spec["optional"])[-1] == "resumable"  # (added after them: tests/test_nodes_resume.py)
    assert not {"deep_cache", "deep_cache_branch"} & set(spec["required"])
    (kind, dc), (kind_b, branch) = spec["optional"]["deep_cache"], spec["optional"]["deep_cache_branch"]
    assert (kind, dc["default"], dc["min"], dc["max"]) == ("INT", 0, 0, 10)
    assert (kind_b, branch["default"], branch["min"], branch["max"]) == ("INT", 0, 0, 11)
    assert all(w in dc["tooltip"] for w in ("Speed", "changes the output", "2-3", "0 = off"))
    assert "0 (the shallowest, fastest)" in branch["tooltip"]


def test_node_passes_the_inputs_into_the_sample_settings(node):
    handle, feats, seen = node
    for kw, want in (({}, (0, 0)), ({"deep_cache": 3}, (3, 0)), ({"deep_cache": 2, "deep_cache_branch": 11}, (2, 11))):
        with pytest.raises(_Stop):  # without the inputs: a prompt saved before they existed
            _run(handle, feats, **kw)
        assert (seen[-1].deep_cache, seen[-1].deep_cache_branch) == want


def test_node_refuses_bad_values_before_any_network_is_loaded(node, comfy):
    handle, feats, seen = node
    for kw, words in (({"deep_cache": 11}, "'deep_cache' 11: the DeepCache interval is 0 (off) to 10"),
                      ({"deep_cache": 0, "deep_cache_branch": 2}, "'deep_cache_branch' has no effect without 'deep_cache' N"),
                      ({"deep_cache": 3, "deep_cache_branch": 12}, "'deep_cache_branch' 12: this denoiser has DeepCache "
                                                                   "branches 0 to 11")):
        with pytest.raises(NodeError) as e:
            _run(handle, feats, **kw)
        assert words in str(e.value), str(e.value)
    handle.models.config = handle.models.config.with_(layers_per_block=1)  # the loaded denoiser's own count: 8 branches
    with pytest.raises(NodeError, match="branches 0 to 7"):
        _run(handle, feats, deep_cache=2, deep_cache_branch=8)
    assert comfy.requests == [] and seen == []  # nothing loaded onto the device, the sampler never reached


def test_node_validate_inputs_refuses_bad_values_when_the_prompt_is_queued():
    validate = N["EchoMimicSampler"].VALIDATE_INPUTS
    base = dict(width=0, height=0, context_frames=12, context_overlap=3)
    assert validate(**base, deep_cache=0, deep_cache_branch=0) is True
    assert validate(**base, deep_cache=3, deep_cache_branch=11) is True
    assert validate(**base) is True  # a prompt saved before the inputs existed
    assert validate(**base, deep_cache=None, deep_cache_branch=4) is True  # a linked value: checked when the node runs
    assert "'deep_cache' 12" in validate(**base, deep_cache=12, deep_cache_branch=0)
    assert "'deep_cache_branch' -1" in validate(**base, deep_cache=3, deep_cache_branch=-1)
    assert "has no effect without 'deep_cache' N (N >= 2)" in validate(**base, deep_cache=1, deep_cache_branch=4)


def test_animate_with_deep_cache_renders_another_video_and_with_interval_1_the_same(media, tmp_path, monkeypatch):
    """End to end through the real sampler (tiny weights, 3 steps): interval 2 changes the result; interval 1 (every
    step full) is the default path exactly. The final latents are compared: the encoder's bytes of a 64-px clip
    are not always the same from run to run, whatever the latents."""
    from echomimic_lib.io.video_io import probe
    from echomimic_lib.pipeline import Sampler

    latents = []
    call = Sampler.__call__

    def record(self, *args, **kwargs):
        result = call(self, *args, **kwargs)
        latents.append(result.latents.clone())
        return result

    monkeypatch.setattr(Sampler, "__call__", record)
    for name, extra in (("off", ()), ("one", ("--deep-cache", "1")), ("two", ("--deep-cache", "2", "--deep-cache-branch", "1"))):
        assert cli(_animate(media, tmp_path / f"{name}.mp4", *extra)) == 0
        assert probe(tmp_path / f"{name}.mp4")["frames"] == 3
    off, one, two = latents
    assert torch.equal(off, one)
    assert two.shape == off.shape and torch.isfinite(two).all() and not torch.allclose(off, two, atol=1e-3)


def test_the_check_imports_nothing_heavy():
    """The command line checks its options before torch loads (a bad value is refused in a moment)."""
    import subprocess
    import sys

    code = ("import sys\nfrom echomimic_lib.speed import check_deep_cache\ncheck_deep_cache(3, 2)\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith(('torch', 'diffusers')))\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).resolve().parents[1]))
