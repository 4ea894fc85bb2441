"""Wan LoRAs through the front ends of EchoMimicV3 flash-pro on tiny weights: ``echomimic animate --version v3-flash --lora``
(--smoke, end to end; a bad LoRA fails before any weight loads), the EchoMimic V3 LoRA node through the stand-in
ModelPatcher (same weights as the command line's merge, input model untouched, unloading restores), and batch rows
with ``lora`` / ``lora-strength`` columns (own weight key per file and strength; bad values refused)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from echomimic_lib.cli import main
from tests._pack import load_pack, sub
from tests._wan_lora import expected_deltas, make_parts, write_layout

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REF, WAV = DATA / "images" / "portrait_a.png", DATA / "audio" / "echomimic_en.wav"


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """A models folder with the tiny V3 set (the --smoke one) and LoRAs for its network."""
    from echomimic_lib.models.wan import WanV3Transformer
    from echomimic_lib.models.wan.tiny import TINY_V3, ensure_tiny_v3

    root = tmp_path_factory.mktemp("v3lora")
    ensure_tiny_v3(root / "models" / "tiny-v3")
    with torch.device("meta"):
        shapes = WanV3Transformer(TINY_V3)
    parts = make_parts(shapes, seed=7)
    big = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 5120),
           "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(5120, 4)}
    from safetensors.torch import save_file

    save_file(big, str(root / "wan14b.safetensors"))
    return {"root": root, "models": root / "models", "folder": root / "models" / "tiny-v3", "parts": parts,
            "kohya": write_layout(parts, "kohya", root / "style_kohya.safetensors"),
            "comfy": write_layout(parts, "comfyui", root / "style.safetensors"), "big": root / "wan14b.safetensors"}


def _smoke(tiny_set, out, *extra):
    return main(["animate", "--version", "v3-flash", "--smoke", "--reference", str(REF), "--audio", str(WAV), "-o", str(out),
                 "--models", str(tiny_set["models"]), "--length", "5", "--device", "cpu", *extra])


def test_cli_smoke_with_a_lora_merges_it_and_renders(tiny_set, tmp_path, monkeypatch, capsys):
    import echomimic_lib.lora.wan_files as wf
    seen = {}
    original = wf.apply_wan_lora

    def spy(model, lora, strength=1.0, keep_base=True):
        base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        patch = original(model, lora, strength, keep_base)
        seen.update(base=base, after={k: v.detach().clone() for k, v in model.state_dict().items()}, strength=strength)
        return patch

    monkeypatch.setattr(wf, "apply_wan_lora", spy)
    out = tmp_path / "lora.mp4"
    assert _smoke(tiny_set, out, "--lora", str(tiny_set["kohya"]), "--lora-strength", "0.5") == 0, capsys.readouterr().err
    assert out.is_file() and seen["strength"] == 0.5
    for key, delta in expected_deltas(tiny_set["parts"]).items():  # merged at 0.5 into the loaded float32 transformer
        torch.testing.assert_close(seen["after"][key], seen["base"][key] + 0.5 * delta, rtol=0, atol=1e-6)
    assert [k for k in seen["base"] if k not in expected_deltas(tiny_set["parts"]) and not torch.equal(seen["base"][k], seen["after"][k])] == []


def test_cli_refuses_a_bad_lora_before_any_weight_loads(tiny_set, tmp_path, monkeypatch, capsys):
    import echomimic_lib.jobs.animate_v3 as v3
    monkeypatch.setattr(v3, "load_v3", lambda *a, **k: pytest.fail("weights loaded before the LoRA was checked"))
    monkeypatch.setattr(v3, "model_files", lambda *a, **k: pytest.fail("files resolved before the LoRA was checked"))
    out = tmp_path / "x.mp4"
    assert _smoke(tiny_set, out, "--lora", str(tiny_set["big"])) == 2
    assert "it was made for Wan 14B" in capsys.readouterr().err
    pt = tmp_path / "lora.pt"
    torch.save({}, pt)
    assert _smoke(tiny_set, out, "--lora", str(pt)) == 2 and "safetensors files only" in capsys.readouterr().err
    assert _smoke(tiny_set, out, "--lora", str(tiny_set["comfy"]), "--lora-strength", "3") == 2
    assert "--lora-strength 3" in capsys.readouterr().err and not out.exists()
    rc = main(["animate", "--version", "v3-flash", "--reference", str(REF), "--audio", str(WAV), "-o", str(out), "--models",
               str(tmp_path / "empty"), "--offline", "--lora", str(tiny_set["big"])])  # no set yet: the release's shapes
    assert rc == 2 and "it was made for Wan 14B" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the node
@pytest.fixture
def comfy(tiny_set, tmp_path, monkeypatch):
    C = sub("nodes.comfy_bridge")
    models = tmp_path / "models"
    (models / "loras" / "wan").mkdir(parents=True)
    (models / "echomimic").symlink_to(tiny_set["models"])  # holds tiny-v3/, a folder with the V3 layout
    for name, src in (("wan/style.safetensors", tiny_set["comfy"]), ("style_kohya.safetensors", tiny_set["kohya"]),
                      ("wan14b.safetensors", tiny_set["big"])):
        (models / "loras" / name).write_bytes(src.read_bytes())
    monkeypatch.setattr(C, "MODELS_DIR", models)
    C.MODEL_MANAGER.reset()
    nodes = load_pack().NODE_CLASS_MAPPINGS
    (handle,) = nodes["EchoMimicV3Loader"]().execute("tiny-v3", "fp32")
    yield {"C": C, "handle": handle, "node": nodes["EchoMimicV3Lora"]}
    C.MODEL_MANAGER.reset()


def _weights(handle):
    return {k: v.detach().clone() for k, v in handle.patcher.model.net.state_dict().items()}


def test_the_node_gives_the_command_lines_weights_and_leaves_its_input_alone(comfy, tiny_set):
    from echomimic_lib.lora import apply_wan_lora
    from echomimic_lib.models.wan import load_v3_transformer

    C, handle, node = comfy["C"], comfy["handle"], comfy["node"]
    assert {"wan/style.safetensors", "style_kohya.safetensors"} <= set(node.INPUT_TYPES()["required"]["lora"][0])
    base = _weights(handle)
    (out,) = node().execute(handle, "wan/style.safetensors", 0.7)
    assert out is not handle and out.patcher.is_clone(handle.patcher) and not handle.patcher.patches
    assert len(out.patcher.patches) == len(expected_deltas(tiny_set["parts"]))
    C.load_models([out.patcher])
    patched = _weights(out)
    cli, _ = load_v3_transformer(tiny_set["folder"] / "Wan2.1-Fun-V1.1-1.3B-InP",
                                 tiny_set["folder"] / "echomimicv3-flash-pro" / "diffusion_pytorch_model.safetensors")
    apply_wan_lora(cli, tiny_set["comfy"], 0.7)
    assert all(torch.equal(patched[k], v) for k, v in cli.state_dict().items())  # bit for bit
    assert any(not torch.equal(patched[k], base[k]) for k in base)
    (two,) = node().execute(out, "style_kohya.safetensors", -0.7)  # chained: the two cancel (within rounding)
    C.load_models([two.patcher])
    assert all(torch.allclose(v, base[k], atol=1e-6) for k, v in _weights(two).items())
    C.unload_all_models()
    assert all(torch.equal(v, base[k]) for k, v in _weights(handle).items())  # unpatched: the base exactly
    assert node().execute(handle, "wan/style.safetensors", 0.0)[0] is handle
    assert node().execute(handle, "none", 1.0)[0] is handle


def test_the_node_refuses_a_wrong_size_lora_and_escaping_names(comfy):
    errors = sub("echomimic_lib.errors")
    handle, node = comfy["handle"], comfy["node"]
    with pytest.raises(errors.WeightsError, match="Wan 14B"):
        node().execute(handle, "wan14b.safetensors", 1.0)
    with pytest.raises(errors.EchoMimicError, match="'..' are refused"):
        node().execute(handle, "../echomimic/tiny-v3/x.safetensors", 1.0)
    with pytest.raises(errors.EchoMimicError, match="not found"):
        node().execute(handle, "absent.safetensors", 1.0)
    assert not handle.patcher.patches


def test_a_delta_on_a_blocks_own_parameter_is_patched_after_comfyuis_load(tiny_set):
    """ComfyUI's ModelPatcher.load patches leaf modules' parameters only; the bridge's load callback patches the rest
    (a block's modulation) once, and leaves leaf parameters to ComfyUI."""
    from echomimic_lib.lora import load_wan_lora, shapes_of
    from tests._v3_tiny import tiny_model

    C = sub("nodes.comfy_bridge")
    net = tiny_model(seed=1)
    patcher = C.StandInPatcher(C.ManagedNetwork(net), "cpu", "cpu")
    lora = load_wan_lora(write_layout(make_parts(net, seed=2), "comfyui", tiny_set["root"] / "mod.safetensors"), shapes_of(net))
    clone = patcher.clone()
    clone.add_patches({"net." + k: C.lora_weight_patch(lora, k, torch.float32) for k in lora.keys}, 1.0)
    base = {k: v.detach().clone() for k, v in net.state_dict().items()}
    for _ in range(2):  # a second load of the same patches changes nothing more
        C._patch_inner_parameters(clone, torch.device("cpu"))
    after = net.state_dict()
    assert [k for k in base if not torch.equal(after[k], base[k])] == ["blocks.1.modulation"]
    torch.testing.assert_close(after["blocks.1.modulation"], base["blocks.1.modulation"] + lora.delta("blocks.1.modulation"),
                               rtol=0, atol=0)
    clone.unpatch_model()
    assert torch.equal(net.blocks[1].modulation, base["blocks.1.modulation"])


# ------------------------------------------------------------------------------------------ batch rows
def test_batch_rows_take_lora_columns_with_their_own_weight_key(tiny_set, tmp_path):
    from echomimic_lib.jobs.batch.manifest import ManifestError, check_jobs, read_manifest

    d = tmp_path
    (d / "ref.png").write_bytes(REF.read_bytes())
    (d / "s.wav").write_bytes(WAV.read_bytes())
    (d / "style.safetensors").write_bytes(tiny_set["comfy"].read_bytes())
    (d / "big.safetensors").write_bytes(tiny_set["big"].read_bytes())
    row = {"version": "v3-flash", "reference": "ref.png", "audio": "s.wav", "smoke": True, "models": str(tiny_set["models"])}
    rows = [dict(row, name="plain"), dict(row, name="one", lora="style.safetensors"),
            dict(row, name="same", lora="style.safetensors", **{"lora-strength": 1.0}),
            dict(row, name="half", lora="style.safetensors", **{"lora-strength": 0.5}), dict(row, name="big", lora="big.safetensors")]
    (d / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs = {j.name: j for j in check_jobs(read_manifest(d / "m.jsonl", d / "out"))}
    assert jobs["one"].request.lora == str(d / "style.safetensors") and jobs["half"].request.lora_strength == 0.5
    assert jobs["plain"].error is None and jobs["one"].error is None
    assert jobs["one"].weight_key == jobs["same"].weight_key  # same file, same strength: one loaded set
    assert len({jobs[n].weight_key for n in ("plain", "one", "half")}) == 3
    assert jobs["plain"].weight_key == ("v3-flash", str(tiny_set["folder"]), "auto")  # rows without a LoRA: as before
    assert "it was made for Wan 14B" in jobs["big"].error  # the job's own check: an error row, the others go on
    for bad, message in (({"lora": "absent.safetensors"}, "lora: .*absent.safetensors not found"),
                         ({"lora": "style.safetensors", "lora-strength": "strong"}, "lora.strength")):
        (d / "bad.jsonl").write_text(json.dumps(dict(row, name="x", **bad)) + "\n")
        with pytest.raises(ManifestError, match=message):
            read_manifest(d / "bad.jsonl", d / "out")


def test_a_batch_row_with_a_lora_renders_through_the_merged_set(tiny_set, tmp_path, monkeypatch):
    from echomimic_lib.jobs.batch import v3 as batch_v3
    from echomimic_lib.jobs.batch.manifest import check_jobs, read_manifest

    row = {"version": "v3-flash", "reference": str(REF), "audio": str(WAV), "smoke": True, "models": str(tiny_set["models"]),
           "length": 5, "lora": str(tiny_set["comfy"]), "lora-strength": 0.25}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    (job,) = check_jobs(read_manifest(tmp_path / "m.jsonl", tmp_path / "out"))

    from echomimic_lib.jobs.batch.render import ModelCache

    cache = ModelCache()  # a worker's
    monkeypatch.setattr(job.request, "device", "cpu")
    res = batch_v3.render_v3_job(job, cache)
    assert Path(res["output"]).is_file() and cache.key == job.weight_key
    params = dict(cache.value.transformer.named_parameters())
    from echomimic_lib.models.wan import load_v3_transformer

    base, _ = load_v3_transformer(tiny_set["folder"] / "Wan2.1-Fun-V1.1-1.3B-InP",
                                  tiny_set["folder"] / "echomimicv3-flash-pro" / "diffusion_pytorch_model.safetensors")
    for key, delta in expected_deltas(tiny_set["parts"]).items():
        torch.testing.assert_close(params[key].detach(), base.get_parameter(key).detach() + 0.25 * delta, rtol=0, atol=1e-6)
