"""A researcher fine-tuning with ``echomimic-train`` (seventh hunt): loading the result back, which trainer a config is
for, and the damaged-record refusals shared.

Before: a full fine-tune's checkpoint (or its run folder, or its ``model.safetensors``) given as ``--lora`` was told to
"export the adapter" (there is none: the run trained the whole model, which is exported as a model set and loaded as
the models folder); a V1/V2 checkpoint given to the V3 reader (or a V3 one to the V1/V2 reader) was told to run the
reader's export command, which refuses it; a V3 LoRA config holding only keys both trainers have (its ``lora.targets``
V3's layer names) was read as a V1/V2 config: ``plan`` and ``fit`` said to add ``lora.enabled`` (a V1/V2 key).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_trust_audit3_train import _fresh_state  # noqa: F401 - autouse fixture


def _checkpoint(root: Path, meta: dict, key: str = "denoiser.conv_in.weight") -> Path:
    import torch
    from safetensors.torch import save_file

    ckpt = root / "runs" / "anna" / "checkpoints" / "step-00000004"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"step": 4, **meta}))
    save_file({key: torch.zeros(4, 8)}, str(ckpt / "model.safetensors"))
    return ckpt


FULL = {"weights": "v1_audio", "lora": None}


# 1. a full fine-tune given as --lora ----------------------------------------------------------------------------------

@pytest.mark.parametrize("reader", ["v1", "v3"])
@pytest.mark.parametrize("given", ["run", "checkpoint", "weights"])
def test_a_full_fine_tune_given_as_lora_says_what_it_is_and_how_to_load_it(reader, given, tmp_path):
    from echomimic_lib.errors import WeightsError
    from echomimic_lib.lora.files import read_lora
    from echomimic_lib.lora.wan_files import read_wan_lora

    ckpt = _checkpoint(tmp_path, FULL)
    path = {"run": ckpt.parent.parent, "checkpoint": ckpt, "weights": ckpt / "model.safetensors"}[given]
    with pytest.raises(WeightsError) as e:
        (read_lora if reader == "v1" else read_wan_lora)(path)
    msg = str(e.value)
    assert "adapter" not in msg and "v3-export" not in msg, msg
    assert "full fine-tune" in msg and "no LoRA" in msg, msg
    src = ckpt if given != "run" else ckpt.parent.parent
    assert f"`echomimic-train export {src} EXPORT/`" in msg and "--models EXPORT/" in msg, msg


@pytest.mark.parametrize("reader,meta,export", [
    ("v3", {"weights": "v2", "lora": {"rank": 4}}, "echomimic-train export"),
    ("v1", {"family": "v3", "lora": {"rank": 4}}, "echomimic-train v3-export"),
])
def test_a_checkpoint_of_the_other_family_names_its_own_export_and_reader(reader, meta, export, tmp_path):
    from echomimic_lib.errors import WeightsError
    from echomimic_lib.lora.files import read_lora
    from echomimic_lib.lora.wan_files import read_wan_lora

    ckpt = _checkpoint(tmp_path, meta)
    with pytest.raises(WeightsError) as e:
        (read_lora if reader == "v1" else read_wan_lora)(ckpt)
    msg = str(e.value)
    assert f"`{export} {ckpt} LORA.safetensors`" in msg, msg
    assert ("EchoMimicV3" in msg and "--version v3-flash" in msg) if reader == "v1" else "V1/V2" in msg, msg


# 2. which trainer a config of shared keys is for ----------------------------------------------------------------------

V3_SHARED_ONLY = """output_dir: {out}
data: {{roots: [data], width: 64, height: 64}}
lora: {{rank: 16, alpha: 16, targets: [self_attn.q, self_attn.k, cross_attn.k_audio]}}
optim: {{lr: 1.0e-4}}
"""


def test_a_v3_config_of_shared_keys_is_told_by_its_lora_targets(tmp_path):
    """Every key of this V3 LoRA config is one both trainers have; its lora.targets are V3's layer names."""
    from trainer.plan.v3 import read_plan_mapping

    cfg = tmp_path / "v3.yaml"
    cfg.write_text(V3_SHARED_ONLY.format(out=tmp_path / "run"))
    family, _, decided_by = read_plan_mapping(cfg)
    assert family == "v3" and any("lora.targets" in k for k in decided_by), (family, decided_by)
    v12 = tmp_path / "v12.yaml"  # V1/V2 layer names (or V3 and other names mixed): as before
    v12.write_text(V3_SHARED_ONLY.format(out=tmp_path / "run").replace("cross_attn.k_audio", "to_q"))
    assert read_plan_mapping(v12)[0] == "v1v2"


def test_fit_given_a_v3_config_of_shared_keys_names_v3_fit(tmp_path, capsys):
    from trainer.cli import main

    cfg = tmp_path / "v3.yaml"
    cfg.write_text(V3_SHARED_ONLY.format(out=tmp_path / "run"))
    assert main(["fit", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"echomimic-train v3-fit --config {cfg}" in err and "lora.enabled" not in err, err
    assert not (tmp_path / "run").exists()


def test_plan_of_a_v3_config_of_shared_keys_plans_it_as_v3(tmp_path, capsys):
    from trainer.cli import main

    cfg = tmp_path / "v3.yaml"
    cfg.write_text(V3_SHARED_ONLY.format(out=tmp_path / "run"))
    rc = main(["plan", str(cfg), "--arch", "tiny"])
    out, err = capsys.readouterr()
    assert rc == 0 and "lora.enabled" not in err and "flash attention" in out, (out, err)


# 3. the damaged-record and another-run refusals, written once: the words as before ------------------------------------

def test_the_shared_refusals_say_what_they_said(tmp_path):
    from types import SimpleNamespace as NS

    from trainer import resume_match as rm
    from trainer.config import ConfigError
    from trainer.lora import lora_info
    from trainer.v3.lora import _check_lora_record

    ck = tmp_path / "run" / "checkpoints" / "step-00000002"
    cfg = NS(output_dir="/o", model=NS(weights="v2"), lora=NS(enabled=True, rank=4, alpha=4, use_rslora=False,
                                                              targets=["to_q"], networks=["denoiser"]))
    calls = [lambda: lora_info({"lora": {"rank": 0}, "weights": "v2", "step": 2}, ck, False),
             lambda: _check_lora_record(ck, {"rank": 0, "alpha": 1}),
             lambda: rm.check_resume_matches(cfg, ck, {"weights": "v2", "lora": 5}),
             lambda: rm.check_resume_matches(cfg, ck, {"weights": "v1_audio", "lora": None}),
             lambda: rm.check_v3_resume_matches(cfg, ck, {"config": {"lora": {"rank": 8}}})]
    said = []
    for call in calls:
        with pytest.raises(ConfigError) as e:
            call()
        said.append(str(e.value))
    meta, tail = ck / "meta.json", "the file was edited or damaged. {} an earlier checkpoint of this run, or put back the " \
        "meta.json the run wrote."
    assert said[0] == (f"{meta}: not a readable checkpoint record (its lora settings are not as fit writes them: a rank of "
                       f"1 or more, a positive alpha, targets, networks, base): {tail.format('Export')}")
    assert said[1] == (f"{meta}: not a readable checkpoint record (its lora rank / alpha are not a rank of 1 or more and a "
                       f"positive number): {tail.format('Export')}")
    assert said[2] == f"{meta}: not a readable checkpoint record (lora 5 is not the adapter's settings): {tail.format('Resume from')}"
    again = ("resume it with the config it was trained with (`echomimic-train {} --config " + str(tmp_path / "run" / "config.yaml")
             + " --resume`), or start this config in a new output_dir. Nothing was written.")
    assert said[3] == (f"{ck} is a checkpoint of another run (v1_audio full fine-tune) than this config's (v2 LoRA (rank 4)): "
                       "it was trained with model.weights v1_audio (this config: v2); lora.enabled false (this config: true)."
                       f" --resume continues a run with its own settings: {again.format('fit')}")
    assert said[4] == (f"{ck} is a checkpoint of another run than this config's: it was trained with lora.rank 8 (this config: "
                       f"4). --resume continues a run with its own adapters: {again.format('v3-fit')}")


# 4. a key written twice in the config -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,key,lines", [
    ("preset: v1_stage1\noptim: {batch_size: 4}\nseed: 3\noptim: {lr: 1.0e-4}\n", "optim", (2, 4)),
    ("data:\n  roots: [data]\n  width: 64\n  roots: [data2]\n", "data.roots", (2, 4)),
    ("phases:\n  - {name: stage1, steps: 10, steps: 20}\n", "phases[0].steps", (2, 2)),
])
def test_a_key_written_twice_is_refused_naming_both_lines(text, key, lines, tmp_path):
    """YAML keeps the last of two equal keys: a section appended at the end (a second ``optim:``) dropped the first
    one's settings (batch_size back to its default) without a word."""
    from trainer.config import ConfigError
    from trainer.config_checks import read_yaml_mapping

    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_yaml_mapping(cfg)
    msg = str(e.value)
    assert f"'{key}' is written twice (lines {lines[0]} and {lines[1]})" in msg and str(cfg) in msg, msg


def test_merge_keys_and_equal_keys_in_other_sections_are_fine(tmp_path):
    from trainer.config_checks import read_yaml_mapping

    cfg = tmp_path / "run.yaml"
    cfg.write_text("base: &b {lr: 1.0e-4, batch_size: 2}\noptim: {<<: *b, lr: 2.0e-4}\ncheckpoint: {every: 5}\n"
                   "validation: {every: 5}\n")
    data = read_yaml_mapping(cfg)
    assert data["optim"] == {"lr": 2.0e-4, "batch_size": 2} and data["checkpoint"]["every"] == 5


# 5. the validation video's sampler settings, checked before the run ------------------------------------------------------

SMALL_V1 = """preset: v1_stage1
output_dir: {out}
model: {{init: echomimic, echomimic_path: {out}}}
data: {{roots: [{out}], width: 64, height: 64, num_workers: 0}}
phases: [{{name: stage1, steps: 10}}]
validation: {{every: 5, {extra}}}
"""


@pytest.mark.parametrize("extra,key", [("steps: 0", "validation.steps"), ("steps: 500", "validation.steps"),
                                       ("cfg: 30", "validation.cfg"), ("cfg: -1", "validation.cfg"),
                                       ("frames: 0", "validation.frames")])
def test_validation_sampler_settings_are_checked_before_the_run(extra, key, tmp_path):
    """They were first used by the validation render, after validation.every steps of training: the run stopped there
    with the sampler's "steps must be at least 1." (no key named; the steps since the last checkpoint lost)."""
    from trainer.config import ConfigError
    from trainer.config_file import load_config

    cfg = tmp_path / "run.yaml"
    cfg.write_text(SMALL_V1.format(out=tmp_path, extra=extra))
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert str(e.value).startswith(f"{key}: "), str(e.value)
    cfg.write_text(SMALL_V1.format(out=tmp_path, extra=extra).replace("every: 5", "every: 0"))
    load_config(cfg)  # no validation video: not used, not refused


# 6. resuming on another dataset ------------------------------------------------------------------------------------------

def test_resume_on_another_dataset_is_said(tmp_path, caplog, monkeypatch):
    """data.roots edited between two runs of one output_dir: ``fit --resume`` went on with the data position of the
    earlier clip set without a word (``v3-fit`` says it). The checkpoint records its clip set; a resume on another is
    said, naming the counts; the same set, or a checkpoint without the record, says nothing."""
    import logging

    import trainer.init as init
    from tests.test_train_user_4 import Built, _dataset, _yaml
    from tests.test_trust import _fake_checkpoint
    from trainer.config_file import load_config
    from trainer.data.dataset import build_pools, clip_set
    from trainer.loop import fit

    def no(*a, **k):
        raise Built("the networks were built")
    monkeypatch.setattr(init, "build", no)
    monkeypatch.setattr(init, "echomimic_files", lambda cfg: None)  # (no weights here)
    a = _dataset(tmp_path / "a", {"talk": 48, "sing": 48})
    b = _dataset(tmp_path / "b", {"talk": 48, "sing": 48, "laugh": 48})
    ckpt = _fake_checkpoint(tmp_path, False)
    extra = "preset: v1_stage1\nmodel: {init: echomimic, echomimic_path: %s, weights: v1_audio}\n" \
            "data: {roots: [%s], num_workers: 0, condition: face_mask}\nphases: [{name: stage1, steps: 50}]\n"
    cfg_a = load_config(_yaml(tmp_path, ckpt.parent.parent, extra % (tmp_path, a)))
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["clips"] = clip_set(build_pools(cfg_a))
    (ckpt / "meta.json").write_text(json.dumps(meta))

    def said(cfg):
        caplog.clear()
        with caplog.at_level(logging.WARNING), pytest.raises(Built):
            fit(cfg, resume=True)
        return [r.getMessage() for r in caplog.records if "clips" in r.getMessage() and "changed" in r.getMessage()]

    assert said(cfg_a) == []
    cfg_b = load_config(_yaml(tmp_path, ckpt.parent.parent, extra % (tmp_path, b)))
    msgs = said(cfg_b)
    assert len(msgs) == 1 and "2 then, 3 now" in msgs[0] and "step-00000002" in msgs[0], msgs


@pytest.mark.slow
def test_a_real_checkpoint_records_its_clip_set(tmp_path_factory, tmp_path):
    """The record ``fit --resume`` compares is written by a real run (tiny weights, the shared headshot clips)."""
    from tests.test_trainer_helpers import shared_dir, v1_config, write_yaml
    from trainer.config_file import load_config
    from trainer.data.dataset import build_pools, clip_set
    from trainer.loop import fit

    base = shared_dir(tmp_path_factory)
    run = tmp_path / "run"
    cfg = load_config(write_yaml(tmp_path / "c.yaml", v1_config(base, run, steps=1, optim={"batch_size": 1},
                                                               checkpoint={"every": 1})))
    assert fit(cfg)["step"] == 1
    meta = json.loads((run / "checkpoints" / "step-00000001" / "meta.json").read_text())
    assert meta["clips"] == clip_set(build_pools(cfg)) and meta["clips"]["count"] >= 1


@pytest.mark.parametrize("reader", ["v1", "v3"])
def test_an_exported_model_set_given_as_lora_says_to_load_it_as_the_models(reader, tmp_path):
    """``export`` of a full fine-tune writes a folder of network files and export.json; given as --lora it was told
    "give the .safetensors file (e.g. one inside it)", and each network file inside is no LoRA."""
    from echomimic_lib.errors import WeightsError
    from echomimic_lib.lora.files import read_lora
    from echomimic_lib.lora.wan_files import read_wan_lora

    export = tmp_path / "EXPORT"
    export.mkdir()
    (export / "export.json").write_text(json.dumps({"checkpoint": "runs/anna/checkpoints/step-00000004", "step": 4,
                                                    "weights": "v1_audio", "ema": False, "dtype": "float32"}))
    (export / "denoising_unet.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError) as e:
        (read_lora if reader == "v1" else read_wan_lora)(export)
    msg = str(e.value)
    assert "one inside it" not in msg and "exported model set" in msg and f"--models {export}" in msg, msg


@pytest.mark.parametrize("dest", ["out", "out/anna.safetensors"])
def test_export_of_a_v3_run_names_v3_export(dest, tmp_path, capsys):
    """``echomimic-train export`` of an EchoMimicV3 run called its meta.json "edited or damaged"."""
    from trainer.cli import main

    ckpt = _checkpoint(tmp_path, {"family": "v3", "lora": {"rank": 4, "alpha": 4, "targets": ["self_attn.q"], "layers": 1,
                                                           "base": {"path": "x"}}, "config": {}},
                       key="blocks.0.self_attn.q.lora_A.default.weight")
    run = ckpt.parent.parent
    assert main(["export", str(run), str(tmp_path / dest)]) == 2
    err = capsys.readouterr().err
    assert "damaged" not in err and "EchoMimicV3" in err and f"echomimic-train v3-export {run} " in err, err
    assert not (tmp_path / "out").exists()
