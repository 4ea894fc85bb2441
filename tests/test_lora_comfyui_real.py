"""The LoRA patch path against the real ComfyUI modules (issue 26), when a ComfyUI checkout is at hand:
``COMFYUI_PATH=/path/to/ComfyUI pytest tests/test_lora_comfyui_real.py`` (skipped without it; the stand-in tests in
test_lora_nodes.py run everywhere). In a fresh interpreter with ComfyUI on sys.path (``--cpu``): the bridge hands the
networks to the real ``ModelPatcher``, the EchoMimic LoRA node's patches are ``WeightAdapterBase`` objects that
``comfy.model_management.load_models_gpu`` patches in, two adapters stack, unloading restores the base bit for bit,
a 0.1 % adapter keeps its effect in bf16 and fp16, and ComfyUI's own ``load_lora`` reads the file's key names and
per-layer alpha to the same delta."""
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
import json, sys
from pathlib import Path
from types import SimpleNamespace
tmp = Path(sys.argv[-1])
sys.argv = ["main.py", "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch
import comfy.lora, comfy.model_management as mm
from tests._pack import sub

C, L, P = sub("nodes.comfy_bridge"), sub("nodes.lora"), sub("nodes.payloads")
lora = sub("echomimic_lib.lora")
assert C.in_comfyui() and C.WeightAdapterBase is not None
out = {}

def slope(o, e):
    return float((o * e).sum() / (e * e).sum())

def network(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(320, 320, bias=False), torch.nn.Linear(320, 320, bias=False))
    with torch.no_grad():
        for m in net:
            m.weight.copy_(torch.randn(320, 320, generator=g) * 0.05)
    return net.to(dtype)

def adapter(net, relative, seed, name):
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for i in ("0", "1"):
        w = net.get_submodule(i).weight.float()
        a, b = torch.randn(16, 320, generator=g), torch.randn(320, 16, generator=g)
        layers["denoiser." + i] = (a, b * (relative * w.norm() / (b @ a).norm()))
    return lora.LoraAdapter(Path(name), lora.LoraInfo(weights="v1_audio", rank=16, alpha=16.0), layers)

for dname, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
    den, ref = network(dtype, 0), network(dtype, 1)
    models = SimpleNamespace(reference=ref, denoiser=den)
    patchers = {"reference": C.managed_model("reference", ref), "denoiser": C.managed_model("denoiser", den)}
    handle = P.ModelHandle(models, "v1_audio", "normal", False, ("test",), patchers=patchers)
    base = {k: v.clone() for k, v in den.state_dict().items()}
    small = adapter(den, 0.001, 2, "small.safetensors")
    one = L.add_lora(handle, small, 1.0)
    patch = one.patchers["denoiser"].patches["net.0.weight"][0][1]
    assert isinstance(patch, C.WeightAdapterBase)
    assert not handle.patchers["denoiser"].patches and type(one.patchers["denoiser"]).__name__ == "ModelPatcher"
    C.load_models([one.patchers["denoiser"]])
    x = torch.randn(512, 320, generator=torch.Generator().manual_seed(3))
    slopes = []
    for i in ("0", "1"):
        got = den.get_submodule(i).weight.detach().float() - base[i + ".weight"].float()
        slopes.append(slope(x @ got.T, x @ small.delta("denoiser." + i).T))
    out[dname + "_slope"] = min(slopes)
    out[dname + "_slope_max"] = max(slopes)
    C.unload_all_models()
    out[dname + "_restored"] = all(torch.equal(v, base[k]) for k, v in den.state_dict().items())
    # a plain ComfyUI 'diff' patch of the same delta, for comparison (ComfyUI's cast rounds to nearest)
    plain = handle.patchers["denoiser"].clone()
    plain.add_patches({"net.0.weight": (small.delta("denoiser.0"),)}, 1.0)
    C.load_models([plain])
    out[dname + "_plain_slope"] = slope(x @ (den.get_submodule("0").weight.detach().float() - base["0.weight"].float()).T,
                                        x @ small.delta("denoiser.0").T)
    C.unload_all_models()

# stacking in float32: base + 0.7 dA - 0.4 dB; unload restores exactly
den = network(torch.float32, 4)
models = SimpleNamespace(reference=network(torch.float32, 5), denoiser=den)
patchers = {n: C.managed_model(n, getattr(models, n)) for n in ("reference", "denoiser")}
handle = P.ModelHandle(models, "v1_audio", "normal", False, ("test",), patchers=patchers)
base = {k: v.clone() for k, v in den.state_dict().items()}
A, B = adapter(den, 0.05, 6, "a.safetensors"), adapter(den, 0.05, 7, "b.safetensors")
two = L.add_lora(L.add_lora(handle, A, 0.7), B, -0.4)
C.load_models([two.patchers["denoiser"]])
err = max(float((den.get_submodule(i).weight - (base[i + ".weight"] + A.delta("denoiser." + i, 0.7) + B.delta("denoiser." + i, -0.4))).abs().max())
          for i in ("0", "1"))
out["stack_max_err"] = err
C.load_models([handle.patchers["denoiser"]])  # the base handle: ComfyUI swaps the clone's patches out
out["base_again"] = all(torch.equal(v, base[k]) for k, v in den.state_dict().items())
C.unload_all_models()

# ComfyUI's own LoRA loader reads the exported names and per-layer alpha
f = lora.write_lora(tmp / "x.safetensors", lora.adapter_tensors(A), lora.LoraInfo(weights="v1_audio", rank=16, alpha=16.0))
from safetensors.torch import load_file
sd = load_file(str(f))
patches = comfy.lora.load_lora(sd, {"denoiser.0": "net.0.weight", "denoiser.1": "net.1.weight"}, log_missing=True)
w = base["0.weight"].clone()
got = comfy.lora.calculate_weight([(1.0, patches["net.0.weight"], 1.0, None, None)], w.clone(), "net.0.weight")
out["comfy_reader_err"] = float((got - (w + A.delta("denoiser.0"))).abs().max())
out["comfy_reader_loaded_all"] = sorted(patches) == ["net.0.weight", "net.1.weight"]
print("RESULT " + json.dumps(out))
'''


@pytest.mark.skipif(not COMFY, reason="set COMFYUI_PATH to a ComfyUI checkout to run the patch path against the real modules")
def test_the_patch_path_against_real_comfyui(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([COMFY, str(ROOT)]))
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    for d in ("bf16", "fp16"):
        assert 0.9 <= res[d + "_slope"] and res[d + "_slope_max"] <= 1.1, res
        assert res[d + "_restored"], res
    assert res["bf16_plain_slope"] < 0.7, res  # what the pack's patch avoids
    assert res["stack_max_err"] < 1e-6 and res["base_again"], res
    assert res["comfy_reader_err"] < 1e-6 and res["comfy_reader_loaded_all"], res
