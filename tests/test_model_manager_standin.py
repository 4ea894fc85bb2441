"""The stand-in ModelPatcher patches on load what ComfyUI's ``ModelPatcher.load`` patches (the parameters of modules
without parameters in their sub-modules), so that the bridge's load callback, which patches the rest (a Wan block's
``modulation``), is exercised by the stand-in tests as it is inside ComfyUI."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tests._pack import sub


class _Block(nn.Module):
    """A Wan-like block: a parameter of its own next to a sub-module with weights, and a holder whose only child
    has no parameters (ComfyUI loads that one: none of its parameters sit in a sub-module)."""

    def __init__(self):
        super().__init__()
        self.modulation = nn.Parameter(torch.zeros(1, 3, 4))
        self.lin = nn.Linear(4, 4)
        self.holder = nn.Module()
        self.holder.scale = nn.Parameter(torch.ones(4))
        self.holder.act = nn.GELU()
        self.register_buffer("table", torch.zeros(2))


def _diffs(keys):
    return {k: ("diff", (torch.full_like(v, 0.5),)) for k, v in keys.items()}


def test_loaded_parameter_keys_follow_comfyuis_load_list():
    mm = sub("nodes._model_manager")
    net = mm.ManagedNetwork(_Block())
    assert mm.loaded_parameter_keys(net) == {"net.lin.weight", "net.lin.bias", "net.holder.scale"}


def test_the_stand_in_load_alone_leaves_a_non_leaf_modules_parameter_unpatched():
    """ComfyUI's load silently skips a patch on ``blocks.N.modulation``; the stand-in does the same."""
    mm = sub("nodes._model_manager")
    block = _Block()
    base = {k: v.detach().clone() for k, v in block.state_dict().items()}
    patcher = mm.StandInPatcher(mm.ManagedNetwork(block), "cpu", "cpu")
    keys = ("modulation", "lin.weight", "holder.scale")
    assert patcher.add_patches(_diffs({"net." + k: base[k] for k in keys})) == ["net." + k for k in keys]
    patcher.load(torch.device("cpu"))
    assert torch.equal(block.modulation, base["modulation"])  # not patched by the load
    for k in ("lin.weight", "holder.scale"):
        torch.testing.assert_close(block.get_parameter(k), base[k] + 0.5, rtol=0, atol=0)
    assert set(patcher.backup) == {"net.lin.weight", "net.holder.scale"}
    patcher.unpatch_model()
    assert all(torch.equal(v, base[k]) for k, v in block.state_dict().items())


def test_load_callbacks_run_after_the_load_with_comfyuis_arguments_and_clones_keep_them():
    mm = sub("nodes._model_manager")
    block = _Block()
    bias = block.lin.bias.detach().clone()
    patcher = mm.StandInPatcher(mm.ManagedNetwork(block), "cpu", "cpu")
    seen = []
    patcher.add_callback(mm.StandInCallbacksMP.ON_LOAD,
                         lambda *a: seen.append((a, a[0].model.current_weight_patches_uuid, block.lin.bias.detach().clone())))
    clone = patcher.clone()
    clone.add_patches(_diffs({"net.lin.bias": bias}))
    clone.load(torch.device("cpu"))
    assert [s[:2] for s in seen] == [((clone, torch.device("cpu"), 0, False, True), clone.patches_uuid)]
    torch.testing.assert_close(seen[0][2], bias + 0.5, rtol=0, atol=0)  # the weights were patched before it ran


@pytest.fixture
def bridge():
    C = sub("nodes.comfy_bridge")
    C.MODEL_MANAGER.reset()
    yield C
    C.MODEL_MANAGER.reset()


def test_a_managed_networks_load_patches_a_blocks_modulation_through_the_bridges_callback(bridge, monkeypatch):
    """Through ``managed_model`` + ``load_models`` (what the V3 LoRA node's patches go through): the modulation delta is
    in after the load and the base is back after the unload. Without the bridge's workaround (the no-op below) the
    delta is lost, as in ComfyUI."""
    from tests._v3_tiny import tiny_model

    C = bridge
    net = tiny_model(seed=1)
    base = {k: v.detach().clone() for k, v in net.state_dict().items()}
    patcher = C.managed_model("v3_transformer", net)
    keys = ("blocks.0.modulation", "blocks.0.self_attn.q.weight")
    delta = {k: torch.randn_like(base[k]) for k in keys}
    clone = patcher.clone()
    clone.add_patches({"net." + k: ("diff", (d,)) for k, d in delta.items()})
    C.load_models([clone])
    for k in keys:
        torch.testing.assert_close(net.get_parameter(k), base[k] + delta[k], rtol=0, atol=0)
    C.load_models([patcher])  # the base network: the clone's patches come out, the modulation's too
    assert all(torch.equal(v, base[k]) for k, v in net.state_dict().items())
    C.load_models([clone])  # and go in again, once
    for k in keys:
        torch.testing.assert_close(net.get_parameter(k), base[k] + delta[k], rtol=0, atol=0)
    C.unload_models([clone])
    assert all(torch.equal(v, base[k]) for k, v in net.state_dict().items())

    monkeypatch.setattr(C, "_patch_inner_parameters", lambda patcher, device_to: None)
    C.load_models([clone])
    assert torch.equal(net.blocks[0].modulation, base["blocks.0.modulation"])
    assert not torch.equal(net.blocks[0].self_attn.q.weight, base["blocks.0.self_attn.q.weight"])
