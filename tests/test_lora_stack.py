"""Stacked LoRAs: ``--lora`` given several times (``--lora-strength`` once for all or once each), a batch cell of files
separated by ``;``, a list for library callers. Counts and duplicates are refused before any weight loads; every adapter
is read and checked first; the merged network is ``W + sum_i s_i * dW_i`` (V1/V2 on tiny UNets, V3 on the tiny Wan);
``animate`` with two adapters renders through that network; a batch row with one LoRA keeps the fingerprint and weight
key it had before stacks existed."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from echomimic_lib.cli import build_parser
from echomimic_lib.cli import main as cli
from echomimic_lib.errors import EchoMimicError
from tests._wan_lora import expected_deltas, make_parts, write_layout

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REF, WAV = DATA / "images" / "portrait_a.png", DATA / "audio" / "echomimic_en.wav"
PATHS = {"a": {"denoiser": ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                            "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0"],
               "reference": ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v"]},
         "b": {"denoiser": ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",  # shared with a
                            "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"]}}


class _Stop(Exception):
    pass


def _models(root):
    from echomimic_lib.model_set import load_models

    return load_models(root, "v1_audio", "normal", with_audio=False, with_vae=False)


def _tensors(models, paths, rank, seed, gain):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for net, ps in paths.items():
        for p in ps:
            w = getattr(models, net).get_submodule(p).weight
            out[f"{net}.{p}.lora_A.weight"] = torch.randn(rank, w.shape[1], generator=g)
            out[f"{net}.{p}.lora_B.weight"] = torch.randn(w.shape[0], rank, generator=g) * gain
    return out


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    """Tiny V1 weights and two adapters on them (a: rank 4, alpha 6; b: rank 2, alpha 2), each with the base weights'
    fingerprint, large enough that an adapter merged first would move the other's fingerprint."""
    from echomimic_lib.lora import LoraInfo, fingerprint, resolve_layers, write_lora
    from tests._tiny_shared import tiny_v1_copy

    d = tmp_path_factory.mktemp("stack")
    tiny_v1_copy(tmp_path_factory, d / "models")
    base = _models(d / "models")
    nets = {"reference": base.reference, "denoiser": base.denoiser}
    files = {}
    for name, rank, alpha, seed in (("a", 4, 6.0, 1), ("b", 2, 2.0, 2)):
        tensors = _tensors(base, PATHS[name], rank, seed, gain=2.0)
        info = LoraInfo(weights="v1_audio", rank=rank, alpha=alpha, networks=sorted(PATHS[name]))
        from echomimic_lib.lora import LoraAdapter

        probe = LoraAdapter(Path(name), info, {k[: -len(".lora_A.weight")]: (v, tensors[k.replace("_A.", "_B.")])
                                               for k, v in tensors.items() if k.endswith(".lora_A.weight")})
        info.base = {"path": str(d / "models"), "fingerprint": fingerprint(resolve_layers(probe, nets))}
        files[name] = write_lora(d / f"{name}.safetensors", tensors, info)
    return {"root": d, "models": d / "models", **files}


def _state(models) -> dict:
    return {f"{n}.{k}": v.detach().clone() for n in ("reference", "denoiser") for k, v in getattr(models, n).state_dict().items()}


def _by_hand(v1, pairs) -> dict:
    """The base weights plus sum_i s_i * scale_i * B_i @ A_i, computed here from the files' tensors."""
    from safetensors.torch import load_file

    out = _state(_models(v1["models"]))
    for name, s in pairs:
        t = load_file(str(v1[name]))
        for k in t:
            if k.endswith(".lora_A.weight"):
                layer = k[: -len(".lora_A.weight")]
                scale = float(t[layer + ".alpha"]) / t[k].shape[0]
                out[layer + ".weight"] = out[layer + ".weight"] + s * scale * t[layer + ".lora_B.weight"] @ t[k]
    return out


def _close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, msg=k)


def _animate(v1, out, *extra):
    return ["animate", "--reference", str(REF), "--audio", str(WAV), "-o", str(out), "--models", str(v1["models"]),
            "--offline", "-q", "--no-face-crop", "--width", "64", "--height", "64", "--steps", "2", "--length", "3",
            "--device", "cpu", *extra]


# ------------------------------------------------------------------------------------------ parsing
def test_the_command_line_gives_the_request_one_file_as_before_and_several_as_tuples(v1):
    from echomimic_lib.cli.animate import request_from_args

    def req(*extra):
        r = request_from_args(build_parser().parse_args(_animate(v1, "o.mp4", *extra)))
        return r.lora, r.lora_strength

    a, b = str(v1["a"]), str(v1["b"])
    assert req() == (None, 1.0) and req("--lora-strength", "0.3") == (None, 0.3)
    assert req("--lora", a) == (a, 1.0) and req("--lora", a, "--lora-strength", "0.8") == (a, 0.8)  # a str and a float
    assert req("--lora", a, "--lora", b) == ((a, b), (1.0, 1.0))
    assert req("--lora", a, "--lora", b, "--lora-strength", "0.5") == ((a, b), (0.5, 0.5))
    assert req("--lora", b, "--lora", a, "--lora-strength", "0.5", "--lora-strength", "-0.2") == ((b, a), (0.5, -0.2))


def test_v3_takes_the_same_stack(v1, tmp_path, monkeypatch):
    import echomimic_lib.jobs.animate_v3 as v3

    seen = []

    def record(req, progress=None):  # the request the command built; a summary for its last line, nothing rendered
        seen.append(req)
        return {"output": req.output, "frames": 0, "video_seconds": 0, "size": [64, 64], "seconds": 0}

    monkeypatch.setattr(v3, "run_v3", record)
    argv = ["animate", "--version", "v3-flash", "--smoke", "--reference", str(REF), "--audio", str(WAV), "-o",
            str(tmp_path / "x.mp4"), "--models", str(tmp_path), "--device", "cpu", "--lora", str(v1["a"]), "--lora",
            str(v1["b"]), "--lora-strength", "0.7", "--lora-strength", "0.1"]
    assert cli(argv) == 0
    assert (seen[0].lora, seen[0].lora_strength) == ((str(v1["a"]), str(v1["b"])), (0.7, 0.1))


@pytest.fixture
def no_weights(monkeypatch):
    """Every way to a weight or an adapter's tensors fails the test."""
    import echomimic_lib.jobs.animate_v3 as v3
    import echomimic_lib.lora.files as files
    import echomimic_lib.lora.wan_files as wan_files
    import echomimic_lib.model_set as model_set

    def fail(name):
        return lambda *a, **k: pytest.fail(f"{name} called before the LoRA stack was checked")

    for mod, name in ((model_set, "load_models"), (model_set, "ensure_weights"), (files, "read_lora"),
                      (wan_files, "read_wan_lora"), (v3, "load_v3"), (v3, "model_files")):
        monkeypatch.setattr(mod, name, fail(name))


@pytest.mark.parametrize("version", ["v1", "v3-flash"])
def test_bad_counts_and_a_file_twice_are_refused_before_anything_is_read(v1, version, tmp_path, no_weights, capsys):
    a, b = str(v1["a"]), str(v1["b"])
    (tmp_path / "link.safetensors").symlink_to(v1["a"])
    cases = [(["--lora", a, "--lora", b, "--lora", a + "x", "--lora-strength", "1", "--lora-strength", "0.5"],
              ["3 --lora file(s) but 2 --lora-strength values", "once (it applies to every LoRA) or once per --lora"]),
             (["--lora-strength", "1", "--lora-strength", "0.5"], ["2 --lora-strength values but no --lora file"]),
             (["--lora", a, "--lora", b, "--lora", a, "--lora-strength", "0.5", "--lora-strength", "0.3",
               "--lora-strength", "0.4"], [f"--lora {a} is given twice", "give it once with a larger --lora-strength",
                                          "0.5 + 0.4 = 0.9"]),
             (["--lora", a, "--lora", str(tmp_path / "link.safetensors")], ["is given twice (also as " + a])]
    out = tmp_path / "o.mp4"
    for extra, words in cases:
        argv = _animate(v1, out, *extra) if version == "v1" else [
            "animate", "--version", "v3-flash", "--reference", str(REF), "--audio", str(WAV), "-o", str(out), "--models",
            str(tmp_path), "--offline", "--device", "cpu", *extra]
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words) and "Traceback" not in err, err
    assert not out.exists()


def test_library_requests_take_a_list_and_are_checked_before_any_weight(v1, tmp_path, no_weights):
    from echomimic_lib.jobs.animate import AnimateRequest, run
    from echomimic_lib.jobs.animate_checks import preflight

    kw = dict(reference=str(REF), audio=str(WAV), output=str(tmp_path / "o.mp4"), models=str(v1["models"]), download=False,
              face_crop=False, width=64, height=64, steps=2, length=3)
    with pytest.raises(EchoMimicError, match="2 --lora file.s. but 3 --lora-strength values"):
        run(AnimateRequest(**kw, lora=[str(v1["a"]), str(v1["b"])], lora_strength=[1, 1, 1]))
    with pytest.raises(EchoMimicError, match="is given twice"):
        run(AnimateRequest(**kw, lora=[str(v1["a"]), str(v1["a"])]))
    with pytest.raises(EchoMimicError, match="--lora-strength 3: use -2..2"):
        run(AnimateRequest(**kw, lora=(str(v1["a"]), str(v1["b"])), lora_strength=(0.5, 3)))
    assert preflight(AnimateRequest(**kw, lora=str(v1["a"]), lora_strength=0.5)).request.lora == str(v1["a"])


def test_every_adapter_is_read_and_checked_before_the_weights_load(v1, tmp_path, monkeypatch):
    from echomimic_lib.errors import WeightsError
    from echomimic_lib.jobs.animate import AnimateRequest, run
    from echomimic_lib.lora import read_lora, write_lora

    src = read_lora(v1["b"])
    tensors = {f"{k}.lora_{n}.weight": t for k, (ta, tb) in src.layers.items() for n, t in (("A", ta), ("B", tb))}
    v2 = write_lora(tmp_path / "v2.safetensors", tensors, dataclasses.replace(src.info, weights="v2"))
    monkeypatch.setattr("echomimic_lib.model_set.load_models", lambda *a, **k: pytest.fail("weights loaded before the check"))
    req = AnimateRequest(reference=str(REF), audio=str(WAV), output=str(tmp_path / "x.mp4"), models=str(v1["models"]),
                         download=False, face_crop=False, width=64, height=64, steps=2, length=3, lora=[str(v1["a"]), str(v2)])
    with pytest.raises(WeightsError, match="'v2.safetensors' was trained for EchoMimicV2"):
        run(req)


# ------------------------------------------------------------------------------------------ merging
def test_two_adapters_merge_to_the_hand_sum_in_any_order_without_a_false_base_warning(v1, caplog):
    from echomimic_lib.lora import apply_lora, apply_stack, load_stack

    loaded = load_stack([(str(v1["a"]), 0.7), (str(v1["b"]), -0.4)], "v1_audio", "normal")
    want = _by_hand(v1, [("a", 0.7), ("b", -0.4)])
    m = _models(v1["models"])
    with caplog.at_level("WARNING", logger="echomimic_lib.lora"):
        apply_stack(m, loaded, keep_base=False)
    assert "other base weights" not in caplog.text  # every adapter checked on the unmerged weights
    _close(_state(m), want)
    swapped = _models(v1["models"])
    apply_stack(swapped, loaded[::-1])
    _close(_state(swapped), want)
    seq = _models(v1["models"])  # one after the other with keep_base=False: each merges into the previous result
    with caplog.at_level("WARNING", logger="echomimic_lib.lora"):
        for adapter, s in loaded:
            apply_lora(seq, adapter, s, keep_base=False)
    _close(_state(seq), want)
    assert "'b.safetensors' was trained on other base weights" in caplog.text  # why the stack checks on the base first
    base = _state(_models(v1["models"]))
    assert any(not torch.equal(v, base[k]) for k, v in want.items())


def test_strength_zero_is_skipped_one_active_adapter_is_the_single_merge_and_remove_restores(v1):
    from echomimic_lib.lora import apply_lora, apply_stack, load_stack

    base = _state(_models(v1["models"]))
    m = _models(v1["models"])
    assert apply_stack(m, load_stack([(str(v1["a"]), 0.0), (str(v1["b"]), 0.0)], "v1_audio")) is None
    assert all(torch.equal(v, base[k]) for k, v in _state(m).items())
    one, single = _models(v1["models"]), _models(v1["models"])
    apply_stack(one, load_stack([(str(v1["a"]), 0.0), (str(v1["b"]), 0.6)], "v1_audio"))
    apply_lora(single, v1["b"], 0.6, keep_base=False)
    want = _state(single)
    assert all(torch.equal(v, want[k]) for k, v in _state(one).items())  # bit for bit
    kept = _models(v1["models"])
    patch = apply_stack(kept, load_stack([(str(v1["a"]), 1.0), (str(v1["b"]), 1.0)], "v1_audio"), keep_base=True)
    patch.remove()
    assert all(torch.equal(v, base[k]) for k, v in _state(kept).items())


def test_two_wan_loras_merge_to_the_hand_sum(tmp_path):
    from echomimic_lib.lora import apply_wan_lora, apply_wan_stack, load_wan_lora, shapes_of
    from tests._v3_tiny import tiny_model

    net = tiny_model(seed=3)
    p1, p2 = make_parts(net, seed=1), make_parts(net, seed=2)
    f1, f2 = write_layout(p1, "comfyui", tmp_path / "distill.safetensors"), write_layout(p2, "kohya", tmp_path / "style.safetensors")
    loras = [(load_wan_lora(f1, shapes_of(net)), 0.8), (load_wan_lora(f2, shapes_of(net)), -0.5)]
    base = {k: v.detach().clone() for k, v in net.state_dict().items()}
    want = dict(base)
    for parts, s in ((p1, 0.8), (p2, -0.5)):
        for k, d in expected_deltas(parts).items():
            want[k] = want[k] + s * d
    apply_wan_stack(net, loras, keep_base=False)
    _close(net.state_dict(), want)
    seq = tiny_model(seed=3)
    for lora, s in loras[::-1]:
        apply_wan_lora(seq, lora, s, keep_base=False)
    _close(seq.state_dict(), want)


# ------------------------------------------------------------------------------------------ end to end
def test_animate_with_two_adapters_renders_the_hand_summed_network(v1, tmp_path, monkeypatch):
    """Up to the sampler: the networks it gets equal the base plus both deltas (and one adapter of the concatenated
    ranks, the hand-summed delta); then full renders: two adapters give other frames than one."""
    from echomimic_lib.cli.animate import request_from_args
    from echomimic_lib.io.video_io import read_video
    from echomimic_lib.jobs.animate import run
    from echomimic_lib.lora import LoraInfo, read_lora, write_lora
    from echomimic_lib.pipeline import Sampler

    a, b = read_lora(v1["a"]), read_lora(v1["b"])
    tensors = {}
    for layer in sorted(set(a.layers) | set(b.layers)):  # rank 8: [A_a; 0] / [0; A_b] pairs, the scales in B
        parts = [(ad, s) for ad, s in ((a, 0.7), (b, 0.5)) if layer in ad.layers]
        tensors[layer + ".lora_A.weight"] = torch.cat([ad.layers[layer][0] for ad, _ in parts])
        tensors[layer + ".lora_B.weight"] = torch.cat([ad.layers[layer][1] * s * ad.scale(layer) for ad, s in parts], 1)
    for layer in list(tensors):  # pad to one rank
        r = tensors[layer].shape[0 if "lora_A" in layer else 1]
        if r < 6:
            pad = (0, 0, 0, 6 - r) if "lora_A" in layer else (0, 6 - r)
            tensors[layer] = torch.nn.functional.pad(tensors[layer], pad)
    summed = write_lora(tmp_path / "summed.safetensors", tensors, LoraInfo(weights="v1_audio", rank=6, alpha=6.0,
                                                                            networks=["denoiser", "reference"]))
    seen = []
    real = Sampler.__call__

    def record(self, *args, **kw):
        seen.append(_state(self.models))
        raise _Stop

    monkeypatch.setattr(Sampler, "__call__", record)
    for extra in (("--lora", str(v1["a"]), "--lora", str(v1["b"]), "--lora-strength", "0.7", "--lora-strength", "0.5"),
                  ("--lora", str(summed))):
        with pytest.raises(_Stop):  # the command's request and job (the command line would report the stop as a crash)
            run(request_from_args(build_parser().parse_args(_animate(v1, tmp_path / "x.mp4", *extra))))
    _close(seen[0], _by_hand(v1, [("a", 0.7), ("b", 0.5)]))
    _close(seen[1], seen[0])
    monkeypatch.setattr(Sampler, "__call__", real)
    frames = {}
    for name, extra in (("one", ("--lora", str(v1["a"]), "--lora-strength", "0.7")),
                        ("two", ("--lora", str(v1["a"]), "--lora", str(v1["b"]), "--lora-strength", "0.7",
                                 "--lora-strength", "0.5"))):
        assert cli(_animate(v1, tmp_path / f"{name}.mp4", *extra)) == 0
        frames[name] = np.stack(read_video(tmp_path / f"{name}.mp4", with_audio=False).frames)
    assert frames["one"].shape == frames["two"].shape and not np.array_equal(frames["one"], frames["two"])


# ------------------------------------------------------------------------------------------ batch
@pytest.fixture(scope="module")
def rows(v1, tmp_path_factory):
    """A manifest folder: the media, the two V1 adapters, the tiny V3 set and two Wan LoRAs for it."""
    from echomimic_lib.models.wan import WanV3Transformer
    from echomimic_lib.models.wan.tiny import TINY_V3, ensure_tiny_v3

    d = tmp_path_factory.mktemp("stack_rows")
    (d / "ref.png").write_bytes(REF.read_bytes())
    (d / "s.wav").write_bytes(WAV.read_bytes())
    for n in ("a", "b"):
        (d / f"{n}.safetensors").write_bytes(v1[n].read_bytes())
    ensure_tiny_v3(d / "models" / "tiny-v3")
    with torch.device("meta"):
        shapes = WanV3Transformer(TINY_V3)
    for n, seed in (("w1", 1), ("w2", 2)):
        write_layout(make_parts(shapes, seed=seed), "comfyui", d / f"{n}.safetensors")
    return d


COLS = "name,reference,audio,models,no-face-crop,offline,width,height,length,lora,lora-strength\n"


def _v1_jobs(v1, d, lines: str, out):
    from echomimic_lib.jobs.batch.manifest import check_jobs, read_manifest

    common = f"ref.png,s.wav,{v1['models']},true,true,64,64,3"
    (d / "m.csv").write_text(COLS + "".join(line.format(common=common) + "\n" for line in lines.splitlines()))
    return {j.name: j for j in check_jobs(read_manifest(d / "m.csv", out))}


def test_a_batch_cell_stacks_files_and_the_weight_key_holds_every_adapter(v1, rows, tmp_path):
    from echomimic_lib.jobs.animate_checks import preflight
    from echomimic_lib.jobs.batch.render import _load_animate

    d = rows
    jobs = _v1_jobs(v1, d, "one,{common},a.safetensors,0.7\n"
                           "two,{common},a.safetensors;b.safetensors,0.7;0.5\n"
                           "spaced,{common}, a.safetensors ; b.safetensors ;,0.7 ; 0.5\n"
                           "swapped,{common},a.safetensors;b.safetensors,0.5;0.7\n"
                           "for_all,{common},a.safetensors;b.safetensors,0.5\n"
                           "each,{common},a.safetensors;b.safetensors,0.5;0.5", tmp_path)
    assert all(j.error is None for j in jobs.values()), {n: j.error for n, j in jobs.items()}
    pair = (str(d / "a.safetensors"), str(d / "b.safetensors"))
    assert (jobs["two"].request.lora, jobs["two"].request.lora_strength) == (pair, (0.7, 0.5))
    assert (jobs["one"].request.lora, jobs["one"].request.lora_strength) == (str(d / "a.safetensors"), 0.7)
    key = {n: j.weight_key for n, j in jobs.items()}
    assert key["two"] == key["spaced"] and key["for_all"] == key["each"]  # the same adapters at the same strengths
    assert len({key["one"], key["two"], key["swapped"], key["each"]}) == 4 and pair in key["two"] and (0.7, 0.5) in key["two"]
    assert jobs["two"].fingerprint == jobs["spaced"].fingerprint != jobs["swapped"].fingerprint
    (jsonl,) = _jsonl_jobs(d, [{"name": "two", "reference": "ref.png", "audio": "s.wav", "models": str(v1["models"]),
                               "no-face-crop": True, "offline": True, "width": 64, "height": 64, "length": 3,
                               "lora": ["a.safetensors", "b.safetensors"], "lora-strength": [0.7, 0.5]}], tmp_path)
    assert jsonl.weight_key == key["two"] and jsonl.fingerprint == jobs["two"].fingerprint  # a JSONL list, the same row
    plan = preflight(jobs["two"].request)
    models, _ = _load_animate(plan, plan.request)  # a worker's load: both merged
    _close(_state(models), _by_hand(v1, [("a", 0.7), ("b", 0.5)]))


def _jsonl_jobs(d, items, out):
    from echomimic_lib.jobs.batch.manifest import check_jobs, read_manifest

    (d / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return check_jobs(read_manifest(d / "m.jsonl", out))


@pytest.mark.parametrize("lora,strength,message", [
    ("a.safetensors;b.safetensors", "0.5;0.5;0.5", "2 lora file.s. but 3 lora-strength values: give lora-strength once"),
    ("a.safetensors;a.safetensors", "", "lora .*a.safetensors is given twice"),
    ("a.safetensors;absent.safetensors", "", "lora: .*absent.safetensors not found"),
    ("a.safetensors;b.safetensors", "0.5;strong", "lora_strength: 'strong' is not a number"),
])
def test_bad_batch_cells_are_manifest_errors(v1, rows, lora, strength, message, tmp_path):
    from echomimic_lib.jobs.batch.manifest import ManifestError

    with pytest.raises(ManifestError, match=message):
        _v1_jobs(v1, rows, f"x,{{common}},{lora},{strength}", tmp_path)


def test_a_v3_row_stacks_wan_loras_each_in_the_weight_key(rows, tmp_path):
    row = {"version": "v3-flash", "reference": "ref.png", "audio": "s.wav", "smoke": True, "models": str(rows / "models")}
    jobs = {j.name: j for j in _jsonl_jobs(rows, [dict(row, name="one", lora="w1.safetensors"),
                                                  dict(row, name="two", lora="w1.safetensors;w2.safetensors",
                                                       **{"lora-strength": "0.5;-0.2"})], tmp_path)}
    assert jobs["two"].error is None and jobs["two"].request.lora == (str(rows / "w1.safetensors"), str(rows / "w2.safetensors"))
    lora = [k for k in jobs["two"].weight_key if isinstance(k, tuple)]
    assert lora == [("lora", str(rows / "w1.safetensors"), 0.5), ("lora", str(rows / "w2.safetensors"), -0.2)]
    assert [k for k in jobs["one"].weight_key if isinstance(k, tuple)] == [("lora", str(rows / "w1.safetensors"), 1.0)]


@pytest.mark.parametrize("version", ["v1", "v3-flash"])
def test_a_row_with_one_lora_keeps_the_fingerprint_and_weight_key_of_before(v1, rows, version, tmp_path):
    """Computed here the old way: the request's settings with ``lora_strength`` the float the old manifest gave, the
    inputs (the LoRA file by content), the old weight key."""
    from echomimic_lib.jobs.animate_checks import preflight
    from echomimic_lib.jobs.batch.results import INPUT_FIELDS, LATER_FIELDS, LATER_V3_FIELDS, NOT_HASHED

    d, name = rows, ("a" if version == "v1" else "w1")
    lora = str(d / f"{name}.safetensors")
    item = {"name": "r", "reference": "ref.png", "audio": "s.wav", "lora": f"{name}.safetensors", "lora-strength": "0.7"}
    if version == "v1":
        item.update({"models": str(v1["models"]), "no-face-crop": True, "offline": True, "width": 64, "height": 64, "length": 3})
    else:
        item.update({"version": "v3-flash", "smoke": True, "models": str(d / "models")})
    (job,) = _jsonl_jobs(d, [item], tmp_path)
    assert job.error is None
    if version == "v1":
        old_key = (str(preflight(job.request).models_root), "v1_audio", "normal", "auto", lora, 0.7, False, False, False)
    else:
        old_key = ("v3-flash", str(d / "models" / "tiny-v3"), "auto", ("lora", lora, 0.7))
    assert job.weight_key == old_key
    settings = dataclasses.asdict(job.request)
    settings["lora_strength"] = 0.7  # the old manifest's float
    for key in NOT_HASHED + INPUT_FIELDS["animate"]:
        settings.pop(key, None)
    later = dict(LATER_FIELDS, **(LATER_V3_FIELDS if version != "v1" else {}))
    settings = {k: v for k, v in settings.items() if not (k in later and v == later[k])}
    inputs = {k: hashlib.sha256(Path(p).read_bytes()).hexdigest()
              for k, p in (("reference", d / "ref.png"), ("audio", d / "s.wav"), ("lora", lora))}
    doc = {"kind": "animate", "settings": settings, "inputs": inputs, "weights": [str(k) for k in old_key]}
    assert job.fingerprint == hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
