"""``--fp8`` for EchoMimicV3 flash-pro: the transformer blocks' Linear weights stored in float8_e4m3fn (upcast per layer),
from the command line (after any LoRA merge), batch rows (their own loaded set; old rows' fingerprints unchanged) and
the V3 Loader node's ``fp8`` switch (ComfyUI's LoRA patches round into the fp8 weights). Tiny random weights."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from echomimic_lib.memory.fp8 import FP8, Fp8Linear, compute_param
from tests._pack import load_pack, sub
from tests.test_v3_lora_run import REF, WAV, _smoke, _weights, tiny_set  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(FP8 is None, reason="this torch has no float8")


def _frames(path):
    from echomimic_lib.io.video_io import read_video

    return read_video(path).frames.astype(np.float32)


def test_only_the_blocks_linear_weights_are_stored_in_fp8():
    from echomimic_lib.models.wan import transformer_to_fp8
    from echomimic_lib.models.wan.tiny import TINY_V3, WanV3Transformer

    torch.manual_seed(0)
    model = WanV3Transformer(TINY_V3).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = {n for n, m in model.named_modules() if n.startswith("blocks.") and type(m) is torch.nn.Linear}
    expect = sum(model.get_submodule(n).weight.numel() for n in blocks)  # one byte saved per bf16 weight
    assert transformer_to_fp8(model) == expect
    fp8 = {n for n, m in model.named_modules() if isinstance(m, Fp8Linear)}
    assert fp8 == blocks and blocks
    for key, value in model.state_dict().items():
        if key.rpartition(".")[0] in blocks and key.endswith(".weight"):
            assert value.dtype == FP8 and torch.equal(value, before[key].to(FP8))
        else:  # embeddings, audio projector, head, norms, biases: as they were
            assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
    assert compute_param(model).dtype == torch.bfloat16


def test_the_command_line_renders_with_fp8_after_the_lora_merge(tiny_set, tmp_path, monkeypatch, capsys):  # noqa: F811
    import echomimic_lib.jobs.animate_v3 as v3

    plain, small = tmp_path / "plain.mp4", tmp_path / "fp8.mp4"
    assert _smoke(tiny_set, plain) == 0, capsys.readouterr().err
    seen = {}
    real = v3.ready_models

    def spy(models, plan):
        out = real(models, plan)
        seen["weights"] = {k: v.clone() for k, v in out.transformer.state_dict().items()}
        return out

    monkeypatch.setattr(v3, "ready_models", spy)
    assert _smoke(tiny_set, small, "--fp8") == 0, capsys.readouterr().err
    a, b = _frames(plain), _frames(small)
    assert a.shape == b.shape and np.isfinite(b).all()
    diff = np.abs(a - b).mean()
    assert 0 < diff < 8.0, diff  # fp8 changes the video a little (mean |delta| in 0..255; tiny random weights)
    assert seen["weights"]["blocks.0.ffn.0.weight"].dtype == FP8
    merged = tmp_path / "lora_fp8.mp4"  # the LoRA is merged first, in the compute dtype, then stored in fp8
    assert _smoke(tiny_set, merged, "--fp8", "--lora", str(tiny_set["kohya"])) == 0, capsys.readouterr().err
    from tests._wan_lora import expected_deltas

    key, delta = next((k, d) for k, d in expected_deltas(tiny_set["parts"]).items()
                      if k.startswith("blocks.") and k.endswith(".weight"))
    from echomimic_lib.models.wan import load_v3_transformer

    base, _ = load_v3_transformer(tiny_set["folder"] / "Wan2.1-Fun-V1.1-1.3B-InP",
                                  tiny_set["folder"] / "echomimicv3-flash-pro" / "diffusion_pytorch_model.safetensors")
    want = (base.state_dict()[key] + delta).to(FP8)
    assert torch.equal(seen["weights"][key], want)


def test_fp8_is_refused_on_apple_mps_before_any_file_is_read(tmp_path):
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3

    req = V3Request(reference=str(tmp_path / "none.png"), audio=str(tmp_path / "none.wav"), output=str(tmp_path / "o.mp4"),
                    models=str(tmp_path), device="mps", fp8=True)
    with pytest.raises(EchoMimicError, match="not supported on Apple MPS"):
        plan_v3(req)


def test_batch_rows_take_an_fp8_column_and_old_rows_keep_their_fingerprint(tiny_set, tmp_path, monkeypatch):  # noqa: F811
    from echomimic_lib.jobs.batch import results
    from echomimic_lib.jobs.batch.manifest import check_jobs, read_manifest

    (tmp_path / "ref.png").write_bytes(REF.read_bytes())
    (tmp_path / "s.wav").write_bytes(WAV.read_bytes())
    row = {"version": "v3-flash", "reference": "ref.png", "audio": "s.wav", "smoke": True, "models": str(tiny_set["models"])}
    (tmp_path / "m.jsonl").write_text(json.dumps(dict(row, name="plain")) + "\n" + json.dumps(dict(row, name="small", fp8=True)) + "\n")
    jobs = {j.name: j for j in check_jobs(read_manifest(tmp_path / "m.jsonl", tmp_path / "out"))}
    assert jobs["small"].error is None and jobs["small"].request.fp8 is True
    assert jobs["plain"].weight_key == ("v3-flash", str(tiny_set["folder"]), "auto")  # as before fp8 existed
    assert jobs["small"].weight_key == jobs["plain"].weight_key + ("fp8",)  # a loaded set of its own
    plain = jobs["plain"]
    now = results.fingerprint(plain)
    old = {k: v for k, v in dataclasses.asdict(plain.request).items() if k != "fp8"}  # the row as recorded before fp8
    monkeypatch.setattr(results, "asdict", lambda request: dict(old))
    assert results.fingerprint(plain) == now
    monkeypatch.undo()
    assert results.fingerprint(jobs["small"]) != now


# ------------------------------------------------------------------------------------------ the node
@pytest.fixture
def nodes(tiny_set, tmp_path, monkeypatch):  # noqa: F811
    C = sub("nodes.comfy_bridge")
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    (models / "echomimic").symlink_to(tiny_set["models"])
    (models / "loras" / "style.safetensors").write_bytes(tiny_set["comfy"].read_bytes())
    monkeypatch.setattr(C, "MODELS_DIR", models)
    C.MODEL_MANAGER.reset()
    yield C, load_pack().NODE_CLASS_MAPPINGS
    C.MODEL_MANAGER.reset()


def test_the_loader_nodes_fp8_switch_and_a_lora_patched_into_fp8_weights(nodes):
    C, mapping = nodes
    Fp8Linear = sub("echomimic_lib.memory.fp8").Fp8Linear  # the pack's own module (loaded as ComfyUI loads it)
    loader = mapping["EchoMimicV3Loader"]
    assert loader.INPUT_TYPES()["optional"]["fp8"][1]["default"] is False  # old workflows: off
    (plain,) = loader().execute("tiny-v3", "fp32")
    (small,) = loader().execute("tiny-v3", "fp32", fp8=True)
    net = small.patcher.model.net
    assert isinstance(net.blocks[0].ffn[0], Fp8Linear) and not any(isinstance(m, Fp8Linear) for m in plain.patcher.model.net.modules())
    assert compute_param(net).dtype == torch.float32
    base = _weights(small)
    (patched,) = mapping["EchoMimicV3Lora"]().execute(small, "style.safetensors", 1.0)
    C.load_models([patched.patcher])
    after = _weights(patched)
    changed = [k for k in base if not torch.equal(after[k], base[k])]
    assert changed and all(after[k].dtype == base[k].dtype for k in changed)  # patched within the fp8 storage
    assert any(after[k].dtype == FP8 for k in changed)
    C.unload_all_models()
    assert all(torch.equal(v, base[k]) for k, v in _weights(small).items())  # unloaded: the fp8 base exactly
