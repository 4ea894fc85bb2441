"""The V3 LoRA node's patch path against the real ComfyUI modules, when a ComfyUI checkout is at hand:
``COMFYUI_PATH=/path/to/ComfyUI pytest tests/test_v3_lora_comfyui_real.py`` (skipped without it; the stand-in tests in
test_v3_lora_run.py run everywhere). In a fresh interpreter with ComfyUI on sys.path (``--cpu``), on the tiny V3 network
handed to the real ``ModelPatcher`` (castable layers): the node's patches give the command line's merge bit for bit,
ComfyUI's own ``load_lora`` reads the same ComfyUI-layout file (low-rank pairs with alpha, ``.diff`` on norms and a bare
parameter, ``.diff_b`` on biases) to the same weights, and unloading restores the base exactly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFY = os.environ.get("COMFYUI_PATH")

SCRIPT = r'''
import copy, json, sys
from pathlib import Path
tmp = Path(sys.argv[-1])
sys.argv = ["main.py", "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch
import comfy.lora
from safetensors.torch import load_file
from tests._pack import sub
from tests._v3_tiny import tiny_model
from tests._wan_lora import make_parts, write_layout

C, N, V = sub("nodes.comfy_bridge"), sub("nodes.v3_lora"), sub("nodes.v3")
lora = sub("echomimic_lib.lora")
assert C.in_comfyui() and C.WeightAdapterBase is not None
out = {}
model = tiny_model(seed=3)
cli = copy.deepcopy(model)
base = {k: v.detach().clone() for k, v in model.state_dict().items()}
f = write_layout(make_parts(model, seed=5), "comfyui", tmp / "style.safetensors")
handle = V.V3Handle(C.managed_model("v3_transformer", model), None, "")
one = N.add_wan_lora(handle, f, 0.8)
out["patch_is_adapter"] = all(isinstance(p[0][1], C.WeightAdapterBase) for p in one.patcher.patches.values())
C.load_models([one.patcher])
ours = {k: v.detach().clone() for k, v in model.state_dict().items()}
lora.apply_wan_lora(cli, f, 0.8)
out["same_as_cli"] = all(torch.equal(ours[k], v) for k, v in cli.state_dict().items())
out["changed"] = sum(not torch.equal(ours[k], base[k]) for k in base)
C.unload_all_models()
out["restored"] = all(torch.equal(v, base[k]) for k, v in model.state_dict().items())

# ComfyUI's own reader on the same file (its generic key map: diffusion_model.<module> -> the weight, a bare
# parameter -> itself)
key_map = {}
for k in base:
    key_map["diffusion_model." + (k[: -len(".weight")] if k.endswith(".weight") else k)] = "net." + k
patches = comfy.lora.load_lora(load_file(str(f)), key_map, log_missing=True)
theirs = handle.patcher.clone()
added = theirs.add_patches(patches, 0.8)
out["comfy_loaded"] = len(added)
C.load_models([theirs])
got = {k: v.detach().clone() for k, v in model.state_dict().items()}
out["comfy_max_err"] = max(float((got[k] - ours[k]).abs().max()) for k in base)
C.unload_all_models()
print("RESULT " + json.dumps(out))
'''


@pytest.mark.skipif(not COMFY, reason="set COMFYUI_PATH to a ComfyUI checkout to run the patch path against the real modules")
def test_the_v3_lora_patch_path_against_real_comfyui(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([COMFY, str(ROOT)]))
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert res["patch_is_adapter"] and res["same_as_cli"] and res["restored"], res
    assert res["changed"] == 16 and res["comfy_loaded"] == 16, res  # 10 low-rank weights + 6 full deltas
    assert res["comfy_max_err"] < 1e-6, res  # ComfyUI's reader gives the same weights
