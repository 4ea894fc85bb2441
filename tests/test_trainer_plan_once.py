"""`echomimic-train plan` traces each phase once per process: a run planned again (the CLI's table, then its verdict
with another --gpu-gib; the docs and --all-presets) reuses its phases' traces, and the memory pass leaves out the VAE
encode (it keeps nothing for the backward). The figures are the old algorithm's, computed live here: its two passes
per phase, each with the VAE encode, no cache."""
from __future__ import annotations

import pytest
import torch

import trainer.plan.memory as M
import trainer.plan.networks as N
from trainer.plan import load_plan_config
from trainer.plan.checkpointing import apply_layer_checkpointing, remove_layer_checkpointing
from trainer.plan.report import format_plan
from trainer.plan.trace import SavedBytes, count_flops, flash_attention_saves, unet_blocks, unet_layers


def _old_trace_phase(nets, cfg, phase, batch, dtype=torch.bfloat16):
    """trainer.plan.networks.trace_phase as it was: a memory pass (VAE encode included), then a FLOPs pass."""
    N._prepare(nets, phase, dtype)
    net, vae = nets.net, nets.vae
    for u in (net.reference, net.denoiser):
        u.gradient_checkpointing = False
    blocks = {**unet_blocks("ref", net.reference), **unet_blocks("den", net.denoiser)}
    layers = {**unet_layers("ref", net.reference), **unet_layers("den", net.denoiser)}
    dblocks, dlayers = unet_blocks("vae", vae.decoder), unet_layers("vae", vae.decoder)
    tracer = SavedBytes(list(net.parameters()) + list(vae.parameters()))
    tracer.watch({**blocks, **layers, **dblocks, **dlayers})
    try:
        with flash_attention_saves(), torch.autograd.graph.saved_tensors_hooks(tracer.pack, lambda t: t):
            N._step(nets, cfg, phase, batch, dtype, backward=False)
    finally:
        tracer.close()
    units = {"none": (set(), set()), "block": (set(blocks), set(dblocks)), "layer": (set(layers), set(dlayers))}
    saved = {(a, b): tracer.total(units[a][0] | units[b][1]) for a in N.GRANULARITIES for b in N.GRANULARITIES}
    del tracer
    level, dec = N.checkpointing_of(cfg)
    if level == "layer":
        apply_layer_checkpointing(net, vae if dec != "none" else None)
    else:
        for u in (net.reference, net.denoiser):
            u.gradient_checkpointing = level == "block"
        if dec == "block":
            vae.enable_gradient_checkpointing()
    try:
        flops = count_flops(lambda: N._step(nets, cfg, phase, batch, dtype, backward=True))
    finally:
        remove_layer_checkpointing(net, vae)
        for u in (net.reference, net.denoiser):
            u.gradient_checkpointing = False
        if vae.is_gradient_checkpointing:
            vae.disable_gradient_checkpointing()
        for p in list(net.parameters()):
            p.grad = None
    return N.PhaseTrace(saved=saved, flops=flops)


def _old_plan(monkeypatch, cfg, **kw):
    with monkeypatch.context() as m:
        m.setattr(M, "trace_phase", _old_trace_phase)
        m.setattr(M, "cached_trace", lambda key, trace: trace())
        return M.plan_run(cfg, **kw)


def _passes() -> int:
    return sum(N.PASSES.values())


# what the memory pass reads: motion modules over 24 frames, the VAE decoder (PhD), layer checkpointing (v2_apdh's phase
# 4); LoRA adapters, a face-mask condition, one frame (v1_lora_identity)
CASES = [("v2_apdh", -1), ("v1_lora_identity", 0)]


@pytest.mark.parametrize("preset, index", CASES)
def test_a_phase_traces_as_before_with_one_vae_encode_less(monkeypatch, preset, index):
    """The trace of a phase is the old one, figure for figure; the memory pass leaves the VAE encode out (it keeps
    nothing for the backward: no_grad), the FLOPs pass counts it."""
    cfg = load_plan_config(preset=preset)
    nets = N.build_meta(cfg, N.ARCH_PRESETS["tiny"], N.TINY_VAE)
    phase, dtype = cfg.phases[index], getattr(torch, M.MIXED[cfg.mixed_precision])
    calls = []
    real = type(nets.vae).encode
    monkeypatch.setattr(type(nets.vae), "encode", lambda self, x: calls.append(x.shape) or real(self, x))
    before = dict(N.PASSES)
    new = N.trace_phase(nets, cfg, phase, cfg.optim.batch_size, dtype)
    assert len(calls) == 1 and {k: N.PASSES[k] - before.get(k, 0) for k in ("memory", "flops")} == {"memory": 1, "flops": 1}
    old = _old_trace_phase(nets, cfg, phase, cfg.optim.batch_size, dtype)
    assert len(calls) == 3  # the old trace encoded in both passes
    assert new == old and new.flops > 0 and new.at("layer", "layer") > 0


def test_a_run_planned_again_traces_nothing_and_another_run_is_traced(monkeypatch):
    """The CLI's table, then its verdict with another --gpu-gib: one trace per phase in all (the old code traced again);
    a run that differs in anything a trace reads (here the batch) is traced again, with its own figures. Every plan is
    the old algorithm's (its two passes per phase, no cache)."""
    kw = dict(gpus=8, arch="tiny", vae_layout=N.TINY_VAE)
    monkeypatch.setattr(N, "_TRACES", type(N._TRACES)())  # a fresh process's cache
    cfg = load_plan_config(preset="v1_stage2")
    before = _passes()
    first = M.plan_run(cfg, **kw)
    assert _passes() - before == 2  # one phase: a memory pass and a FLOPs pass
    again = M.plan_run(load_plan_config(preset="v1_stage2", overrides=["memory.gpu_gib=1"]), **kw)
    assert _passes() - before == 2 and again.phases == first.phases and again.budget_gib == 1 and not first.over_budget()
    assert again.over_budget() == again.phases  # the verdict is the new budget's
    old = _old_plan(monkeypatch, cfg, **kw)
    assert first == old and format_plan(first, "v1_stage2", "d") == format_plan(old, "v1_stage2", "d")
    small = load_plan_config(preset="v1_stage2", overrides=["optim.batch_size=2"])
    before = _passes()
    other = M.plan_run(small, **kw)
    assert _passes() - before == 2 and other.phases != first.phases
    assert other.phases[0].configured < first.phases[0].configured and other.phases[0].flops < first.phases[0].flops


def test_a_v3_plan_traces_no_v1_v2_phase(tmp_path, capsys):
    """A V3 LoRA config plans from the trainer's step on fake tensors (trainer.plan.v3_step): the same table from the
    CLI as from plan_v3, and no V1/V2 pass."""
    import yaml

    from echomimic_lib.models.wan.tiny import TINY_V3
    from trainer.cli import main
    from trainer.plan.v3 import format_v3_plan, load_v3_plan_config, plan_v3, read_plan_mapping

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": "m"}, "data": {"frames": 17, "width": 64, "height": 64},
                                    "lora": {"rank": 8, "alpha": 8}}))
    before = _passes()
    assert main(["plan", str(path), "--arch", "tiny", "--gpu-gib", "80"]) == 0
    out = capsys.readouterr().out
    _, data, keys = read_plan_mapping(path)
    plan = plan_v3(load_v3_plan_config(path, data, keys), TINY_V3, "the tiny test transformer (--arch tiny)", gpu_gib=80)
    assert out == format_v3_plan(plan, str(path)) + "\n\n" and plan.fits and plan.step.peak > 0
    assert _passes() == before
