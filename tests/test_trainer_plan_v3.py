"""`echomimic-train plan RUN.yaml` on an EchoMimicV3 LoRA config: the figure is the bench's (one implementation, the
trainer's own step on fake tensors), the verdict against --gpu-gib and its exit code, the speed from the analytic
FLOPs (checked against FlopCounterMode), which trainer a file is for, and clear errors for a wrong file."""
from __future__ import annotations

import re

import pytest
import torch
import yaml

from echomimic_lib.models.wan.tiny import TINY_V3
from tests._bench import load_bench
from trainer.cli import main
from trainer.config import ConfigError
from trainer.plan.memory import GIB
from trainer.plan.v3 import advice, load_v3_plan_config, plan_v3, read_plan_mapping

V3_RUN = {"output_dir": "runs/t", "model": {"path": "models/v3-flash"}, "data": {"roots": ["data/t"], "frames": 17, "width": 64,
                                                                                "height": 64}, "lora": {"rank": 8, "alpha": 8}}


def _yaml(tmp_path, data, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _v3(path, overrides=()):
    family, data, keys = read_plan_mapping(path, list(overrides))
    assert family == "v3"
    return load_v3_plan_config(path, data, keys)


def _row(out: str) -> list[str]:
    """The cells of the plan's table row."""
    row = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| weights")][0]
    return [c.strip() for c in row.strip("|").split("|")]


@pytest.mark.parametrize("checkpointing", [True, False])
def test_the_plan_of_a_tiny_config_is_the_bench_figure(tmp_path, monkeypatch, capsys, checkpointing):
    """The same settings through the plan (a YAML file, the CLI) and through bench/bench_v3_train_memory.py: the same
    peak and parts, byte for byte; the table shows them in GiB."""
    bench = load_bench("bench_v3_train_memory", monkeypatch)
    row = bench.measure(17, 64, checkpointing, rank=8, preset="tiny")
    path = _yaml(tmp_path, {**V3_RUN, "gradient_checkpointing": checkpointing})
    plan = plan_v3(_v3(path), TINY_V3)
    assert plan.step.peak == row["peak_bytes"] and plan.step.parts == row["parts_bytes"]
    assert (plan.step.lora_layers, plan.step.adapter_params, plan.step.tokens) == (24, row["adapter_params"], row["tokens"])
    assert main(["plan", path, "--arch", "tiny", "--gpu-gib", "80"]) == 0
    out = capsys.readouterr().out
    cells = _row(out)
    assert cells[5] == f"{row['peak_bytes'] / GIB:.2f}" and cells[7] == "yes"
    assert "17 frames at 64x64 (80 video tokens), batch 1 per GPU" in out and "LoRA rank 8 (alpha 8)" in out
    assert f"gradient checkpointing {'on' if checkpointing else 'off'}" in out and "mixed precision bf16" in out
    assert "self_attn.q/k/v/o, cross_attn.q/k/v/o/k_audio/v_audio, ffn.0/2 (24 layers" in out


def test_the_settings_bench_rows_lack_reach_the_step(tmp_path):
    """Batch, width != height, fewer targets, float32: each moves the computed step as it moves the trainer's."""
    base = plan_v3(_v3(_yaml(tmp_path, V3_RUN)), TINY_V3).step
    batch2 = plan_v3(_v3(_yaml(tmp_path, V3_RUN), ["optim.batch_size=2"]), TINY_V3).step
    wide = plan_v3(_v3(_yaml(tmp_path, V3_RUN), ["data.width=128"]), TINY_V3).step
    few = plan_v3(_v3(_yaml(tmp_path, V3_RUN), ["lora.targets=[self_attn.q, self_attn.v]"]), TINY_V3).step
    fp32 = plan_v3(_v3(_yaml(tmp_path, V3_RUN), ["mixed_precision=no"]), TINY_V3).step
    assert batch2.parts["batch"] == 2 * base.parts["batch"] and batch2.peak > base.peak
    assert wide.tokens == 2 * base.tokens and wide.peak > base.peak
    assert few.lora_layers == 2 * 2 and few.adapter_params < base.adapter_params / 5
    assert fp32.parts["weights"] == 4 * fp32.base_params + 4 * fp32.adapter_params
    assert base.parts["weights"] == 2 * base.base_params + 4 * base.adapter_params


def test_checkpointing_changes_the_verdict_and_the_over_budget_run_exits_3_with_advice(tmp_path, capsys):
    """--gpu-gib between the two totals: checkpointing on fits (exit 0), off does not (exit 3, the advice on stderr
    names gradient_checkpointing first, then fewer frames, a smaller size, a lower rank)."""
    on = plan_v3(_v3(_yaml(tmp_path, V3_RUN)), TINY_V3)
    off_path = _yaml(tmp_path, {**V3_RUN, "gradient_checkpointing": False, "data": {**V3_RUN["data"], "frames": 33},
                                "lora": {"rank": 32, "alpha": 32}}, "off.yaml")
    off = plan_v3(_v3(off_path), TINY_V3)
    on33 = plan_v3(_v3(off_path, ["gradient_checkpointing=true"]), TINY_V3)
    assert on33.total < off.total and on33.step.parts["kept_activations"] < off.step.parts["kept_activations"] / 2
    gib = (on33.total + off.total) / 2 / GIB
    assert main(["plan", off_path, "--arch", "tiny", "--gpu-gib", str(gib), "--set", "gradient_checkpointing=true"]) == 0
    assert _row(capsys.readouterr().out)[7] == "yes"
    assert main(["plan", off_path, "--arch", "tiny", "--gpu-gib", str(gib)]) == 3
    out, err = capsys.readouterr()
    assert _row(out)[7] == f"**NO** (> {gib:g})"
    assert f"more than --gpu-gib {gib:g}: turn on gradient_checkpointing: true" in err
    assert "fewer data.frames (e.g. 17 instead of 33)" in err and "lower lora.rank" in err
    assert "data.width" not in err and "batch_size" not in err  # 64x64, batch 1: nothing to say about them
    assert "gradient_checkpointing" not in advice(on) and "fewer data.frames" in advice(on)
    # the default budget of a V3 plan is 24 GiB
    assert main(["plan", off_path, "--arch", "tiny"]) == 0 and "| yes |" in capsys.readouterr().out


def test_speed_is_the_analytic_forward_times_3_plus_recompute(tmp_path, capsys):
    from echomimic_lib.models.wan.flops import call_flops

    path = _yaml(tmp_path, {**V3_RUN, "optim": {"batch_size": 2, "grad_accum": 3}})
    forward = call_flops(TINY_V3, (5, 8, 8), batch=2, project_audio=True)["total"]
    on = plan_v3(_v3(path), TINY_V3, peak_tflops=100, mfu=0.5)
    off = plan_v3(_v3(path, ["gradient_checkpointing=false"]), TINY_V3, peak_tflops=100, mfu=0.5)
    assert on.forward_flops == forward and on.step_flops == 4 * 3 * forward and off.step_flops == 3 * 3 * forward
    assert on.s_per_step == pytest.approx(on.step_flops / 50e12)
    assert main(["plan", path, "--arch", "tiny", "--peak-tflops", "100", "--mfu", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "100 TFLOP/s peak x 50% MFU" in out and float(_row(out)[9]) == pytest.approx(on.s_per_step, rel=1e-2)
    # several GPUs: DDP's buckets (a float32 copy of the adapters' gradients) per GPU
    two = plan_v3(_v3(path), TINY_V3, gpus=2)
    assert two.ddp_buckets == 4 * two.step.adapter_params and two.total == on.total + two.ddp_buckets


def test_the_analytic_training_forward_is_what_the_flop_counter_counts(monkeypatch):
    """The training call (audio windows through the projector, the prompt padded to text_len) on a tiny network
    with non-square latents: call_flops(project_audio=True) equals FlopCounterMode's count, products and attention."""
    from torch.utils.flop_counter import FlopCounterMode

    from echomimic_lib.models.wan.flops import call_flops
    from tests._v3_tiny import TINY, inputs, tiny_model

    load_bench("bench_pipeline", monkeypatch)._register_cpu_sdpa()
    model = tiny_model()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(**inputs(TINY, t_lat=3, h=4, w=6))
    counts = fc.get_flop_counts()["Global"]
    attention = sum(v for op, v in counts.items() if "attention" in str(op))
    want = call_flops(TINY, (3, 4, 6), project_audio=True)
    assert attention > 0 and want["linear"] > call_flops(TINY, (3, 4, 6))["linear"]
    assert (fc.get_total_flops() - attention, attention) == (want["linear"], want["attention"])


def test_which_trainer_a_file_is_for(tmp_path):
    assert read_plan_mapping(_yaml(tmp_path, V3_RUN))[0] == "v3"
    assert read_plan_mapping(_yaml(tmp_path, {"gradient_checkpointing": True}))[0] == "v3"
    assert read_plan_mapping(_yaml(tmp_path, {"preset": "v1_stage1", "optim": {"lr": 1e-5}}))[0] == "v1v2"
    assert read_plan_mapping(_yaml(tmp_path, {"optim": {"lr": 1e-5}, "seed": 3}))[0] == "v1v2"  # shared keys only: as before
    # an override counts as the file's key
    assert read_plan_mapping(_yaml(tmp_path, {"optim": {"lr": 1e-5}}), ["data.frames=33"])[0] == "v3"


def test_a_v1_config_plans_as_before(tmp_path, capsys):
    """A V1/V2 file goes the V1/V2 way: the CLI prints plan_text's table; --gpu-gib sets memory.gpu_gib."""
    from trainer.plan import load_plan_config, plan_text

    path = _yaml(tmp_path, {"preset": "v1_stage1", "optim": {"batch_size": 2}})
    want, _ = plan_text(load_plan_config(path), "v1_stage1", arch="tiny")
    assert main(["plan", path, "--arch", "tiny"]) == 0
    assert capsys.readouterr().out == want + "\n\n"
    assert main(["plan", path, "--arch", "tiny", "--gpu-gib", "1"]) == 3
    out, err = capsys.readouterr()
    assert "**NO** (> 1)" in out and "does not fit 1 GiB" in err


@pytest.mark.parametrize("data, overrides, want", [
    ({**V3_RUN, "phases": []}, [], r"keys of an EchoMimicV3 LoRA config \(data\.frames, model\.path\) and of a V1/V2 "
                                  r"config \(phases\).*v3-fit"),
    ({**V3_RUN, "lora": {"rnk": 8}}, [], r"read as an EchoMimicV3 LoRA config: it has data\.frames, model\.path\).*"
                                        r"lora\.rnk: unknown key; did you mean 'rank'\?"),
    (V3_RUN, ["data.frames=50"], r"data\.frames 50: EchoMimicV3 takes 4k\+1 frames"),
    (V3_RUN, ["lora.targets=[to_q]"], r"lora\.targets \['to_q'\]: choose from self_attn\.q"),
    ({"model": {"path": "m"}, "data": {"frames": 17, "width": 64, "height": 64}}, ["--preset", "v1_stage1"],
     r"--preset v1_stage1: presets are V1/V2 runs"),
])
def test_a_wrong_file_gives_a_clear_error(tmp_path, capsys, data, overrides, want):
    """Exit 2 with the problem and the fix; a V3 file needs no output_dir, model.path or data.roots to be planned."""
    args = [a for o in overrides for a in (["--set", o] if "=" in o else [o])]
    assert main(["plan", _yaml(tmp_path, data), "--arch", "tiny", *args]) == 2
    err = capsys.readouterr().err
    assert re.search(want, err), err
    with pytest.raises(ConfigError, match="unknown key"):
        _v3(_yaml(tmp_path, {**V3_RUN, "steps": 10, "data": {"frame": 17}}))
    assert _v3(_yaml(tmp_path, {"data": {"frames": 9}})).model.path  # placeholders: a plan reads no files


@pytest.mark.slow
def test_release_size_at_16_gib(tmp_path, capsys):
    """The release's transformer (about 30 s): 49 frames 512x512 fit 16 GiB, 81 frames 768x768 do not (exit 3)."""
    run = {"output_dir": "runs/a", "model": {"path": "models/v3-flash"}, "data": {"roots": ["d"], "frames": 49}}
    assert main(["plan", _yaml(tmp_path, run), "--gpu-gib", "16"]) == 0
    cells = _row(capsys.readouterr().out)
    assert cells[:2] == ["3.66", "0.37"] and cells[5] == "7.67" and cells[7] == "yes"  # 8.23 GB: the bench's grid
    big = {**run, "data": {"roots": ["d"], "frames": 81, "width": 768, "height": 768}}
    assert main(["plan", _yaml(tmp_path, big, "big.yaml"), "--gpu-gib", "16"]) == 3
    out, err = capsys.readouterr()
    assert _row(out)[5] == "17.19" and "**NO** (> 16)" in out and "fewer data.frames (e.g. 41 instead of 81)" in err


def test_adapters_without_fp32_inputs_keep_less(tmp_path):
    """lora.fp32_inputs: false (the adapters compute in the autocast dtype): the bf16 step's working set (one block
    recomputed and its backward, with checkpointing) is smaller, and without checkpointing the kept activations too;
    in float32 (no autocast) nothing changes."""
    base = plan_v3(_v3(_yaml(tmp_path, V3_RUN)), TINY_V3).step
    lean = plan_v3(_v3(_yaml(tmp_path, V3_RUN), ["lora.fp32_inputs=false"]), TINY_V3).step
    assert lean.parts["working_set"] < base.parts["working_set"] and lean.peak < base.peak
    keep = [plan_v3(_v3(_yaml(tmp_path, V3_RUN), ["gradient_checkpointing=false", *o]), TINY_V3).step.parts["kept_activations"]
            for o in ([], ["lora.fp32_inputs=false"])]
    assert keep[1] < keep[0]
    f32 = [plan_v3(_v3(_yaml(tmp_path, V3_RUN), ["mixed_precision=no", *o]), TINY_V3).step.peak
           for o in ([], ["lora.fp32_inputs=false"])]
    assert f32[0] == f32[1]
