"""Run by tests/test_workflow_sharing.py with a ComfyUI environment's python: ComfyUI's own ``execution.validate_inputs``
on prompts from another machine. argv: ComfyUI checkout, the pack's root, a scratch folder. Prints one JSON line:
[[ok, [error details ...]], ...] per prompt of PROMPTS."""
import asyncio
import importlib.util
import json
import sys
from pathlib import Path

comfy, pack_root, tmp = sys.argv[1], sys.argv[2], Path(sys.argv[3])
sys.path.insert(0, comfy)
sys.argv = ["main.py", "--cpu"]
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import folder_paths  # noqa: E402

folder_paths.models_dir = str(tmp)
for f in ("echomimic/finetunes/anna/denoising_unet.pth", "vae/sd/sd-vae-ft-mse.safetensors",
          "echomimic/loras/people/anna.safetensors"):
    (tmp / f).parent.mkdir(parents=True, exist_ok=True)
    (tmp / f).write_bytes(b"")
folder_paths.folder_names_and_paths["vae"] = ([str(tmp / "vae")], folder_paths.supported_pt_extensions)
folder_paths.add_model_folder_path("echomimic", str(tmp / "echomimic"))
import execution  # noqa: E402
import nodes  # noqa: E402

spec = importlib.util.spec_from_file_location("echomimic_real_pack", Path(pack_root) / "__init__.py",
                                              submodule_search_locations=[pack_root])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
nodes.NODE_CLASS_MAPPINGS.update(pack.NODE_CLASS_MAPPINGS)
LOADER = {"version": "V1 audio", "variant": "normal", "dtype": "auto", "attention": "sdpa", "keep_loaded": False,
          "weights_folder": "auto", "vae": "auto", "auto_download": False}
PROMPTS = [{"weights_folder": "finetunes\\anna", "vae": "sd\\sd-vae-ft-mse.safetensors", "lora": "people\\anna.safetensors"},
           {"vae": "..\\..\\x.safetensors"}, {"vae": "SD/SD-VAE-FT-MSE.safetensors"}, {"version": "V9"}]
out = []
for extra in PROMPTS:
    prompt = {"1": {"class_type": "EchoMimicModelLoader", "inputs": dict(LOADER, **extra)}}
    ok, errors, _ = asyncio.run(execution.validate_inputs("p", prompt, "1", {}))
    out.append([ok, [f"{e['message']}: {e['details']}" for e in errors]])
print(json.dumps(out))
