"""A researcher fine-tuning with ``echomimic-train`` (ninth hunt).

1. A LoRA rank above a target layer's smaller dimension (``lora.rank: 512`` on SD1.5's 320-wide attention, ``rank: 2048``
   on V3's 1536-wide blocks -- a typo for 32 or 64) was taken: peft made adapters of that rank, the memory of the
   extra rows and columns spent on nothing (the update of an in x out layer has rank at most min(in, out)). Refused
   where the adapters are attached (``fit``, ``v3-fit``, both ``plan``s), before the first step, naming the layer, its
   size and the largest rank that helps every target.
2. The stop after ``max_nonfinite`` NaN losses exited with status 2, a config error's: a script or a scheduler could
   not tell "the config is wrong, fix it" from "the run diverged, lower the LR and resume". It exits with 4.
"""
from __future__ import annotations

from pathlib import Path

import pytest


def _tiny_v1_net():
    from echomimic_lib.config import TINY
    from echomimic_lib.models.unet import ConditionEncoder, EchoUNet
    from echomimic_lib.modes import WEIGHT_SETS
    from trainer.net import TrainingNet

    ws = WEIGHT_SETS["v1_audio"]
    return TrainingNet(EchoUNet(TINY, "reference"), EchoUNet(TINY, "denoiser", motion=True),
                       ConditionEncoder(ws.cond_channels, TINY.cond_out_channels, TINY.cond_block_channels))


def _v1_cfg(rank: int, *more: str):
    from trainer.config_file import load_config

    return load_config(None, [f"lora.rank={rank}", f"lora.alpha={rank}", *more], preset="v1_lora_identity", files=False)


# 1. a LoRA rank above a layer's size ----------------------------------------------------------------------------------

def test_v1_lora_rank_above_a_target_layers_size_is_refused_naming_the_layer(tmp_path):
    """The tiny UNet's attention is 32 and 64 wide: rank 33 adds nothing to a 32-wide layer."""
    from trainer.config import ConfigError
    from trainer.lora import inject
    from trainer.net import is_lora_param

    net = _tiny_v1_net()
    with pytest.raises(ConfigError) as e:
        inject(net, _v1_cfg(33))
    msg = str(e.value)
    assert "lora.rank 33 is above" in msg and "32 in x 32 out" in msg and "lora.rank: 32" in msg, msg
    assert "denoiser." in msg and msg.split("denoiser.", 1)[1].split(" ", 1)[0].rstrip(",:").endswith(("to_q", "to_k", "to_v", "to_out.0")), msg
    assert not any(is_lora_param(n) for n, _ in net.named_parameters())  # refused before peft touched the network
    desc = inject(_tiny_v1_net(), _v1_cfg(32))  # the largest useful rank itself is fine
    assert desc["rank"] == 32 and desc["layers"] > 0


def test_v1_plan_refuses_the_rank_too(tmp_path, capsys):
    """`echomimic-train plan --arch tiny` builds the network on the meta device with the adapters: the same refusal,
    without weights."""
    from trainer.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"preset: v1_lora_identity\noutput_dir: {tmp_path / 'run'}\nlora: {{rank: 40, alpha: 40}}\n")
    assert main(["plan", str(cfg), "--arch", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "lora.rank 40 is above" in err and "lora.rank: 32" in err and "Traceback" not in err, err


def _v3_cfg(tmp_path: Path, rank: int, targets: str = ""):
    from trainer.v3.config import load_v3_config

    cfg = tmp_path / "v3.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'run'}\nmodel: {{path: {tmp_path}}}\n"
                   f"lora: {{rank: {rank}, alpha: {rank}{targets}}}\ndata: {{roots: [{tmp_path}]}}\n")
    return load_v3_config(cfg)


def test_v3_lora_rank_above_the_tiny_transformers_width_is_refused(tmp_path):
    from echomimic_lib.models.wan import WanV3Transformer
    from echomimic_lib.models.wan.tiny import TINY_V3
    from trainer.config import ConfigError
    from trainer.v3.lora import inject

    with pytest.raises(ConfigError) as e:
        inject(WanV3Transformer(TINY_V3), _v3_cfg(tmp_path, 33))
    msg = str(e.value)
    assert "lora.rank 33 is above" in msg and "blocks.0.self_attn.q" in msg and "32 in x 32 out" in msg, msg
    assert "lora.rank: 32" in msg, msg
    assert inject(WanV3Transformer(TINY_V3), _v3_cfg(tmp_path, 32))["rank"] == 32


def test_v3_plan_says_it_before_any_memory_is_computed(tmp_path, capsys):
    from trainer.cli import main

    cfg = tmp_path / "v3.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'run'}\nmodel: {{path: {tmp_path}}}\nlora: {{rank: 64, alpha: 64}}\n"
                   f"data: {{roots: [{tmp_path}]}}\n")
    assert main(["plan", str(cfg), "--arch", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "lora.rank 64 is above" in err and "Traceback" not in err, err


# 2. the NaN stop has its own exit status ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["fit", "v3-fit"])
def test_the_nan_stop_exits_4_not_a_config_errors_2(command, tmp_path, capsys, monkeypatch):
    import trainer.loop as loop
    import trainer.v3.loop as v3_loop
    from tests.test_train_user_4 import _yaml
    from trainer.cli import main
    from trainer.loop import NonFiniteError

    def nan_run(cfg, **k):
        raise NonFiniteError("5 consecutive steps with non-finite loss/gradients (last at step 7)")
    monkeypatch.setattr(loop, "fit", nan_run)
    monkeypatch.setattr(v3_loop, "fit_v3", nan_run)
    if command == "fit":
        cfg = _yaml(tmp_path, tmp_path / "run", "preset: v1_stage1\nmodel: {init: echomimic, echomimic_path: %s, "
                    "weights: v1_pose}\n" % tmp_path)
    else:
        cfg = tmp_path / "v3.yaml"
        cfg.write_text(f"output_dir: {tmp_path / 'run'}\nmodel: {{path: {tmp_path}}}\nlora: {{rank: 4, alpha: 4}}\n"
                       f"data: {{roots: [{tmp_path}]}}\n")
    assert main([command, "--config", str(cfg)]) == 4
    err = capsys.readouterr().err
    assert "error: 5 consecutive steps" in err and "Traceback" not in err, err
    assert main([command, "--config", str(tmp_path / "missing.yaml")]) == 2  # a config error stays 2
