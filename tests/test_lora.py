"""LoRA fine-tuning end to end on tiny weights and the shared clips (CPU): the one-identity preset trains peft
adapters on a released-layout model with everything else frozen (loss drops), checkpoints hold only the
adapters and resume exactly, export writes one adapter file (or --merge the official set, equal to the adapter
applied at strength 1), and ``echomimic animate --lora`` renders with it; strength 0 is the base bit for bit."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_trainer_helpers import DATA, headshot_dataset, shared_dir, tiny_weights, v1_config, write_yaml

STEPS = 12
RESUME_AT = 9  # checkpoints every 3 steps; the resume test continues from step 9


def lora_config(base: Path, out: Path, **extra) -> dict:
    cfg = v1_config(base, out, steps=STEPS, preset="v1_lora_identity", mixed_precision="no", loss={"spatial": {"weight": 0.0}},
                    model={"weights": "v1_audio", "motion_init": "released", "gradient_checkpointing": True},
                    data={"condition": "face_mask"}, optim={"lr": 1e-2, "batch_size": 2, "warmup_steps": 0},
                    lora={"rank": 4, "alpha": 4.0}, ema={"enabled": True, "decay": 0.9},
                    phases=[{"name": "lora", "steps": STEPS}], checkpoint={"every": 3, "keep_last": 2}, validation={"every": 0})
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One LoRA run of STEPS steps (checkpoints RESUME_AT and STEPS kept), shared by the tests below."""
    from trainer.config_file import load_config
    from trainer.loop import fit

    base = shared_dir(tmp_path_factory)
    headshot_dataset(base)
    out = tmp_path_factory.mktemp("lora") / "run"
    cfg = load_config(write_yaml(out.parent / "run.yaml", lora_config(base, out)))
    fit(cfg)
    return {"base": base, "out": out, "cfg": cfg, "weights": tiny_weights(base, "v1")}


def _ckpt(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:08d}"


def test_lora_run_trains_only_adapters_and_the_loss_drops(run):
    from safetensors.torch import load_file

    from trainer.evaluate import fixed_loss

    final = _ckpt(run["out"], STEPS)
    state = load_file(str(final / "model.safetensors"))
    assert state and all(".lora_A.default." in k or ".lora_B.default." in k for k in state)  # adapters only: no base weights
    layers = {k.split(".lora_")[0] for k in state}
    assert all(k.startswith("denoiser.") and "motion_modules." not in k and k.endswith(("to_q", "to_k", "to_v", "to_out.0"))
               for k in layers)
    assert any(".attn1." in k for k in layers) and any(".attn2." in k for k in layers)  # self/reference and audio attention
    assert sum(p.stat().st_size for p in final.iterdir()) < 5e6
    before, after = fixed_loss(run["cfg"], None, samples=2), fixed_loss(run["cfg"], final, samples=2)
    assert after < 0.8 * before, (before, after)  # overfits the two clips


def test_lora_resume_is_exact(run, tmp_path):
    """A new process state (fresh fit, rebuilt base, re-injected adapters) resumed from an earlier checkpoint
    ends with the same adapter weights, AdamW state and EMA bytes as the uninterrupted run."""
    from trainer.config_file import load_config
    from trainer.loop import fit

    b = tmp_path / "b"
    shutil.copytree(_ckpt(run["out"], RESUME_AT), _ckpt(b, RESUME_AT))
    fit(load_config(write_yaml(tmp_path / "b.yaml", lora_config(run["base"], b))), resume=True)
    ka, kb = _ckpt(run["out"], STEPS), _ckpt(b, STEPS)
    for name in ("model.safetensors", "optimizer.bin", "custom_checkpoint_2.pkl"):  # adapters, AdamW state, EMA
        assert (ka / name).read_bytes() == (kb / name).read_bytes(), name




@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    from trainer.export import export

    d = tmp_path_factory.mktemp("lora_export")
    adapter = export(run["out"], d / "loras" / "me.safetensors")[0]
    ema = export(run["out"], d / "loras", ema=True)[0]  # a folder: <run>-step<N>-ema.safetensors
    merged = d / "merged"
    export(run["out"], merged, merge=True, formats=(".safetensors",))
    return {"adapter": adapter, "ema": ema, "merged": merged}


def test_another_base_is_refused_on_resume_and_warned_about_at_inference(run, exported, caplog, tmp_path):
    """The tiny folder's acc denoiser stands in for other base weights."""
    from echomimic_lib.lora import apply_lora
    from echomimic_lib.model_set import load_models
    from trainer.config import ConfigError
    from trainer.config_file import load_config
    from trainer.init import build
    from trainer.lora import load_adapter_checkpoint

    cfg = lora_config(run["base"], tmp_path / "b")
    cfg["model"] = {**cfg["model"], "variant": "acc"}
    net = build(load_config(write_yaml(tmp_path / "b.yaml", cfg))).net
    with pytest.raises(ConfigError, match="other base weights"):  # the load hook of a resumed run
        load_adapter_checkpoint(net, _ckpt(run["out"], RESUME_AT))
    with caplog.at_level("WARNING", logger="echomimic_lib.lora"):
        apply_lora(load_models(run["weights"], "v1_audio", "acc", with_audio=False, with_vae=False), exported["adapter"])
    assert "trained on other base weights" in caplog.text and "applied to the 'acc' ones" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="echomimic_lib.lora"):
        apply_lora(_models(run["weights"]), exported["adapter"])
    assert "other base weights" not in caplog.text


def test_lora_under_ddp(run, tmp_path):
    """2 CPU processes (gloo, accelerate launch as the trainer's DDP test): the adapters are the DDP-wrapped
    trainable set, both ranks hold the same weights, checkpoints hold only the adapters."""
    from safetensors.torch import load_file

    from tests.test_trainer_helpers import events
    from tests.test_trainer_v1 import _launch2

    out = tmp_path / "ddp"
    cfg = lora_config(run["base"], out, optim={"lr": 1e-2, "batch_size": 1}, ema={"enabled": False},
                      phases=[{"name": "lora", "steps": 2}], checkpoint={"every": 2, "keep_last": 1})
    r = _launch2(write_yaml(tmp_path / "ddp.yaml", cfg))
    assert r.returncode == 0, r.stderr[-4000:]
    assert events(out, "start")[0]["processes"] == 2
    ck = events(out, "checkpoint")[-1]
    assert ck["ranks_consistent"] and len(ck["rank_checksums"]) == 2
    state = load_file(str(_ckpt(out, 2) / "model.safetensors"))
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
    assert any(float(v.abs().max()) > 0 for k, v in state.items() if ".lora_B." in k)  # the adapters trained


def test_adapter_file_records_its_config_and_base(run, exported):
    from echomimic_lib.lora import read_lora

    a = read_lora(exported["adapter"])
    assert (a.info.weights, a.info.variant, a.info.rank, a.info.alpha) == ("v1_audio", "normal", 4, 4.0)
    assert a.info.targets == ["to_q", "to_k", "to_v", "to_out.0"] and a.info.networks == ["denoiser"]
    assert a.info.base["path"] == str(run["weights"]) and set(a.info.base["fingerprint"]) == {"denoiser"}
    assert a.info.training["step"] == STEPS
    assert any(float(b.abs().max()) > 0 for _, b in a.layers.values())  # trained: B moved away from its zero init
    e = read_lora(exported["ema"])
    assert exported["ema"].name == f"run-step{STEPS}-ema.safetensors" and e.info.training["ema"]
    assert e.layers.keys() == a.layers.keys() and any(not torch.equal(e.layers[k][1], a.layers[k][1]) for k in a.layers)


def _models(root):
    from echomimic_lib.model_set import load_models

    return load_models(root, "v1_audio", "normal", with_audio=False)


def test_merged_export_equals_the_adapter_at_strength_one(run, exported):
    from echomimic_lib.lora import apply_lora

    base, merged = _models(run["weights"]), _models(exported["merged"])
    apply_lora(base, exported["adapter"], 1.0)
    for name in ("reference", "denoiser", "cond_encoder"):
        a, b = getattr(base, name).state_dict(), getattr(merged, name).state_dict()
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    plain = _models(run["weights"]).denoiser.state_dict()
    changed = {k for k, v in merged.denoiser.state_dict().items() if not torch.equal(v, plain[k])}
    assert changed and all(k.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")) for k in changed)


def _render(models, seed=5):
    from echomimic_lib.audio import AudioFeatures
    from echomimic_lib.pipeline import MaskCondition, Sampler, settings_for

    g = torch.Generator().manual_seed(0)
    feats = AudioFeatures(torch.randn(16, 5, 384, generator=g), 16 * 320)
    ref = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    s = settings_for("v1-audio", "normal", width=64, height=64, steps=2, num_frames=4, seed=seed)
    return Sampler(models)(ref, feats, MaskCondition(np.pad(np.ones((32, 32)), 16)), s, decode=False).latents


def test_strength_zero_is_the_base_bit_for_bit_and_strengths_never_compound(run, exported):
    from echomimic_lib.lora import apply_lora

    ref = _render(_models(run["weights"]))
    m = _models(run["weights"])
    before = {k: v.clone() for k, v in m.denoiser.state_dict().items()}
    patch = apply_lora(m, exported["adapter"], 0.0)
    assert all(torch.equal(v, before[k]) for k, v in m.denoiser.state_dict().items())
    assert torch.equal(_render(m), ref)
    patch.set_strength(1.0)
    one = _render(m)
    assert not torch.allclose(one, ref)
    patch.set_strength(0.5)
    patch.set_strength(1.0)  # from the kept base, never from the current weights
    assert torch.equal(_render(m), one)
    patch.set_strength(0.0)
    assert all(torch.equal(v, before[k]) for k, v in m.denoiser.state_dict().items())
    assert torch.equal(_render(m), ref)


def test_animate_cli_with_lora(run, exported, tmp_path):
    from echomimic_lib.cli import main
    from echomimic_lib.io.video_io import probe

    out = tmp_path / "anim.mp4"
    assert main(["animate", "--models", str(run["weights"]), "--version", "v1", "--mode", "audio", "--no-face-crop",
                 "--reference", str(DATA / "images" / "portrait_a.png"), "--audio", str(DATA / "audio" / "echomimic_en.wav"),
                 "-o", str(out), "--offline", "--steps", "2", "--width", "64", "--height", "64", "--length", "4", "-q",
                 "--lora", str(exported["adapter"]), "--lora-strength", "0.8"]) == 0
    assert probe(out)["frames"] == 4


def _retag(adapter, dest: Path, **changes) -> Path:
    from dataclasses import replace

    from echomimic_lib.lora import read_lora, write_lora

    a = read_lora(adapter)
    tensors = {f"{k}.lora_{n}.weight": t for k, (ta, tb) in a.layers.items() for n, t in (("A", ta), ("B", tb))}
    return write_lora(dest, tensors, replace(a.info, **changes))


def test_a_lora_for_another_version_is_refused_before_loading(run, exported, tmp_path, monkeypatch):
    from echomimic_lib.jobs import animate
    from echomimic_lib.errors import WeightsError
    from echomimic_lib.lora import apply_lora

    v2 = _retag(exported["adapter"], tmp_path / "v2.safetensors", weights="v2")
    monkeypatch.setattr("echomimic_lib.model_set.load_models", lambda *a, **k: pytest.fail("weights loaded before the LoRA check"))
    req = animate.AnimateRequest(reference=str(DATA / "images" / "portrait_a.png"), audio=str(DATA / "audio" / "echomimic_en.wav"),
                                 output=str(tmp_path / "x.mp4"), models=str(run["weights"]), download=False, face_crop=False, lora=str(v2))
    with pytest.raises(WeightsError, match=r"trained for EchoMimicV2 half-body \(v2\).*V1 audio-driven"):
        animate.run(req)
    monkeypatch.undo()
    with pytest.raises(WeightsError, match="trained for EchoMimicV2"):
        apply_lora(_models(run["weights"]), v2)


def test_bad_adapter_files_are_refused_with_a_fix(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    from echomimic_lib.errors import WeightsError
    from echomimic_lib.lora import read_lora

    state = load_file(str(exported["adapter"]))
    save_file(state, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(WeightsError, match="not an EchoMimic LoRA"):
        read_lora(tmp_path / "nometa.safetensors")
    with pytest.raises(WeightsError, match="not found"):
        read_lora(tmp_path / "missing.safetensors")
    (tmp_path / "a.pth").write_bytes(b"x")
    with pytest.raises(WeightsError, match=".safetensors files only"):
        read_lora(tmp_path / "a.pth")
    from safetensors import safe_open

    with safe_open(str(exported["adapter"]), "pt") as f:
        meta = f.metadata()
    first_b = next(k for k in state if k.endswith("lora_B.weight"))
    save_file({k: v for k, v in state.items() if k != first_b}, str(tmp_path / "noB.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="lacks its lora_B"):
        read_lora(tmp_path / "noB.safetensors")
    save_file({**state, first_b: state[first_b] * float("nan")}, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="NaN"):
        read_lora(tmp_path / "nan.safetensors")
    save_file(state, str(tmp_path / "rank.safetensors"), metadata={**meta, "rank": "8"})
    with pytest.raises(WeightsError, match="not rank 8"):
        read_lora(tmp_path / "rank.safetensors")
    again = _retag(exported["adapter"], tmp_path / "ok.safetensors")  # round trip
    assert read_lora(again).info == read_lora(exported["adapter"]).info


def test_lora_config_is_checked(run):
    from trainer.config import ConfigError
    from trainer.config_file import load_config

    def cfg(*over):
        return load_config(None, [f"model.echomimic_path={run['weights']}", *over], preset="v1_lora_identity")

    assert cfg().lora.enabled and cfg().optim.lr == 1e-4 and cfg().lora.rank == 16
    v2 = load_config(None, [f"model.echomimic_path={run['weights']}"], preset="v2_lora_identity")
    assert (v2.model.weights, v2.data.width, v2.optim.batch_size * v2.optim.grad_accum, v2.lora.enabled) == ("v2", 768, 4, True)
    with pytest.raises(ConfigError, match="model.init: echomimic"):
        cfg("model.init=random", "model.arch=tiny", "model.motion_path=/released/motion_module.pth")
    with pytest.raises(ConfigError, match="motion_init: released"):
        cfg("model.motion_init=random")
    with pytest.raises(ConfigError, match="motion modules only run in temporal phases"):
        cfg("lora.networks=[motion]")
    with pytest.raises(ConfigError, match="lora.networks"):
        cfg("lora.networks=[unet]")
    with pytest.raises(ConfigError, match="rank must be"):
        cfg("lora.rank=0")


def test_loader_node_lists_applies_and_refuses_loras(run, exported, tmp_path, monkeypatch):
    """The ComfyUI loader (stand-ins outside ComfyUI): the LoRA picked from models/echomimic/loras/ gives, once ComfyUI
    loads the networks, the weights of the merged export, strength 0 the base bit for bit; another version's LoRA and escaping names are refused."""
    from tests._pack import load_pack, sub

    C, L = sub("nodes.comfy_bridge"), sub("nodes.loader")
    EchoMimicError = sub("echomimic_lib.errors").EchoMimicError
    models = tmp_path / "models"
    (models / "echomimic" / "loras" / "people").mkdir(parents=True)
    (models / "echomimic" / "v1").symlink_to(run["weights"])  # the run's base, as ComfyUI's models/echomimic/v1
    shutil.copy(exported["adapter"], models / "echomimic" / "loras" / "people" / "me.safetensors")
    shutil.copytree(exported["merged"], models / "echomimic" / "merged")
    monkeypatch.setattr(C, "MODELS_DIR", models)
    monkeypatch.setattr(C, "INPUT_DIR", tmp_path / "input")
    node = load_pack().NODE_CLASS_MAPPINGS["EchoMimicModelLoader"]
    assert "people/me.safetensors" in node.INPUT_TYPES()["optional"]["lora"][0]

    def load(version="V1 audio", **kw):
        args = dict(dtype="fp32", attention="sdpa", keep_loaded=False, weights_folder="auto", vae="auto", auto_download=False)
        return node().execute(version, "normal", **{**args, **kw})[0]

    def state(handle):  # the weights as ComfyUI loads them (LoRAs are patches, put in on load, taken out on unload)
        C.load_models([handle.patchers[n] for n in ("reference", "denoiser")])
        out = {f"{n}.{k}": v.clone() for n in ("reference", "denoiser") for k, v in getattr(handle.models, n).state_dict().items()}
        C.unload_all_models()
        return out

    base, zero = state(load()), load(lora="people/me.safetensors", lora_strength=0.0)
    assert all(torch.equal(v, base[k]) for k, v in state(zero).items())
    one, merged = load(lora="people/me.safetensors", lora_strength=1.0), state(load(weights_folder="merged"))
    assert one.key != zero.key  # the LoRA is part of the loaded set's identity
    for k, v in state(one).items():
        torch.testing.assert_close(v, merged[k], rtol=1e-5, atol=1e-6, msg=k)
    assert any(not torch.equal(v, base[k]) for k, v in state(one).items())
    monkeypatch.setattr(L, "load_models", lambda *a, **k: pytest.fail("weights read before the LoRA check"))
    with pytest.raises(EchoMimicError, match=r"trained for EchoMimic V1 audio-driven \(v1_audio\).*V2 half-body"):
        load("V2", lora="people/me.safetensors")
    with pytest.raises(EchoMimicError, match="'..' are refused"):
        load(lora="../../vae/x.safetensors")
    with pytest.raises(EchoMimicError, match="not found"):
        load(lora="nobody.safetensors")


def test_export_format_pth_of_a_lora_run_says_the_adapter_is_a_safetensors_file(run, tmp_path, caplog):
    """`--format pth` on a LoRA run wrote the adapter as .safetensors without a word (a train-user hunt left it)."""
    import logging

    from trainer.cli import main

    out = tmp_path / "me.safetensors"
    with caplog.at_level(logging.WARNING, logger="trainer"):
        assert main(["export", str(run["out"]), str(out), "--format", "pth"]) == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert out.is_file() and not out.with_suffix(".pth").exists()
    assert "--format pth" in said and ".safetensors" in said and "--merge" in said, said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainer"):
        assert main(["export", str(run["out"]), str(tmp_path / "b.safetensors")]) == 0  # the default: nothing to say
    assert "--format pth" not in " ".join(r.getMessage() for r in caplog.records)


def test_export_format_peft_writes_the_adapter_file_and_peft_folders(run, tmp_path, capsys):
    from peft import PeftModel
    from safetensors.torch import load_file

    from echomimic_lib.lora import apply_lora, read_lora
    from trainer.cli import main
    out = tmp_path / "me.safetensors"
    assert main(["export", str(run["out"]), str(out), "--format", "peft"]) == 0
    adapter = read_lora(out)
    assert adapter.alphas and set(adapter.alphas.values()) == {4.0}  # the alpha in the tensors, not only the metadata
    folder = tmp_path / "me-peft" / "denoiser"
    state = load_file(str(folder / "adapter_model.safetensors"))
    assert len(state) == 2 * len(adapter.layers) and all(k.startswith("base_model.model.") for k in state)
    merged, base = _models(run["weights"]), _models(run["weights"])
    apply_lora(merged, adapter, 1.0)
    got = PeftModel.from_pretrained(base.denoiser, str(folder)).merge_and_unload().state_dict()
    for k, v in merged.denoiser.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    capsys.readouterr()
    assert main(["export", str(run["out"]), str(out), "--format", "peft"]) != 0
    assert "me-peft already exist" in capsys.readouterr().err
    assert main(["export", str(run["out"]), str(tmp_path / "m"), "--format", "peft", "--merge"]) != 0
    assert "--format peft writes a LoRA run's adapter" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
