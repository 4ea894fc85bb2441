"""ComfyUI node pack without weights: node schemas, import hygiene, safe names, the ComfyUI bridge (with fake
ComfyUI modules), device placement and condition building. The end-to-end runs are in test_nodes.py."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from tests._pack import PACK, load_pack, sub  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
COMFY_MODULES = {"comfy", "comfy_extras", "comfy_api", "comfy_execution", "folder_paths", "latent_preview", "server",
                 "execution", "node_helpers", "nodes"}






@pytest.fixture
def bridge(tmp_path, monkeypatch):
    c = sub("nodes.comfy_bridge")
    monkeypatch.setattr(c, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(c, "INPUT_DIR", tmp_path / "input")
    return c


# ------------------------------------------------------------------------------------------ schemas
def _inputs(cls):
    spec = cls.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


def test_every_node_is_a_v1_class_with_unique_prefixed_id_category_and_tooltips(bridge):
    pack = load_pack()
    mappings, names = pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS
    assert len(mappings) == 20 and set(names) == set(mappings)
    for node_id, cls in mappings.items():
        assert node_id.startswith("EchoMimic") and cls.__name__ == node_id
        assert cls.CATEGORY == "EchoMimic" and cls.DESCRIPTION
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
        inputs = _inputs(cls)
        for name, spec in inputs.items():
            assert len(spec) == 2 and spec[1].get("tooltip", "").strip(), f"{node_id}.{name} has no tooltip"
        custom = [t for t in cls.RETURN_TYPES + tuple(s[0] for s in inputs.values()) if isinstance(t, str) and t.isupper()
                  and t not in ("IMAGE", "MASK", "AUDIO", "FLOAT", "INT", "STRING", "BOOLEAN", "CONDITIONING",
                                                  "CLIP_VISION_OUTPUT", "VAE", "VIDEO")]
        assert all(t.startswith("ECHOMIMIC_") for t in custom), custom
        # execute accepts exactly the declared inputs
        params = inspect.signature(getattr(cls(), cls.FUNCTION)).parameters
        assert list(params) == list(inputs), node_id


def test_the_six_design_card_roles_each_have_their_own_node():
    roles = {"reference net loader": "EchoMimicModelLoader", "audio encoder": "EchoMimicAudioEncoder",
             "landmark extractor": "EchoMimicLandmarkExtractor", "part-aware aligner": "EchoMimicPartAwareAligner",
             "hand-pose sequence loader": "EchoMimicPoseSequenceLoader", "sampler": "EchoMimicSampler"}
    assert set(roles.values()) <= set(load_pack().NODE_CLASS_MAPPINGS)
    mappings = load_pack().NODE_CLASS_MAPPINGS
    assert mappings["EchoMimicSampler"].RETURN_TYPES == ("IMAGE", "FLOAT", "AUDIO")
    assert mappings["EchoMimicModelLoader"].RETURN_TYPES == ("ECHOMIMIC_MODEL",)
    seed = _inputs(mappings["EchoMimicSampler"])["seed"]
    assert seed[0] == "INT" and seed[1]["control_after_generate"] is True


# ------------------------------------------------------------------------------------------ hygiene
def _py_files():
    return [ROOT / "__init__.py"] + sorted((ROOT / "nodes").glob("*.py"))


def test_only_the_bridge_imports_comfyui_and_nodes_import_relatively():
    offenders = {}
    for path in _py_files():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module.split(".")[0]]
            bad = set(names) & (COMFY_MODULES | {"echomimic_lib"})
            if bad and not (path.name == "comfy_bridge.py" and bad <= COMFY_MODULES - {"nodes"}):
                offenders.setdefault(path.name, set()).update(bad)
    assert not offenders, offenders


def test_no_print_in_the_node_pack():
    for path in _py_files():
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "print"]
        assert not calls, f"print() in {path.name}"


def test_importing_the_pack_has_no_side_effects(tmp_path):
    """Fresh interpreter, empty cwd: importing the entry point loads nothing heavy, writes and prints nothing;
    asking for the mappings and every INPUT_TYPES creates no folder either."""
    code = (
        "import importlib.util, json, os, sys\n"
        "before = dict(os.environ)\n"
        f"spec = importlib.util.spec_from_file_location('pk', {str(ROOT / '__init__.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['pk'] = m; spec.loader.exec_module(m)\n"
        "light = 'torch' not in sys.modules\n"
        "n = {k: c.INPUT_TYPES() for k, c in m.NODE_CLASS_MAPPINGS.items()}\n"
        "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))\n"
        "sys.stderr.write(json.dumps({'light': light, 'n': len(n), 'env': changed}))\n"
    )
    env = dict(os.environ, HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report == {"light": True, "n": 20, "env": []}
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ names
def test_names_from_a_workflow_stay_inside_their_folder(tmp_path):
    paths = sub("nodes.paths")
    err = sub("echomimic_lib.errors").EchoMimicError
    root = tmp_path / "vae"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.safetensors").write_bytes(b"x")
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    (root / "escape.safetensors").symlink_to(tmp_path / "secret.safetensors")
    (root / "inside.safetensors").symlink_to(root / "sub" / "ok.safetensors")
    assert paths.safe_child(root, "sub/ok.safetensors", "VAE") == root / "sub" / "ok.safetensors"
    assert paths.find_named([root], "inside.safetensors", "VAE") == root / "inside.safetensors"
    for bad in ("../secret.safetensors", "sub/../../secret.safetensors", "/etc/passwd", "C:\\Windows\\x", "..", ""):
        with pytest.raises(err, match="absolute paths and '..' are refused"):
            paths.safe_child(root, bad, "VAE")
    with pytest.raises(err, match="outside .* symlink"):
        paths.find_named([root], "escape.safetensors", "VAE")


def test_loader_and_pose_loader_refuse_traversal_before_touching_files(bridge):
    err = sub("echomimic_lib.errors").EchoMimicError
    loader, pose = sub("nodes.loader"), sub("nodes.pose")
    with pytest.raises(err, match="'..' are refused"):
        loader.load("V1 audio", "normal", vae="../../etc/passwd")
    with pytest.raises(err, match="'..' are refused"):
        loader.load("V1 audio", "normal", weights_folder="/etc")
    with pytest.raises(err, match="'..' are refused"):
        pose.load("../../../etc", 24.0, "ping-pong", "none", "interpolate", False)


def test_folder_listings_follow_the_files(bridge):
    paths = sub("nodes.paths")
    models = Path(bridge.MODELS_DIR)
    assert paths.weight_folders() == [] and paths.vae_files() == [] and paths.pose_folders() == []
    (models / "echomimic" / "v2").mkdir(parents=True)
    (models / "echomimic" / "v2" / "denoising_unet.pth").write_bytes(b"")
    (models / "echomimic" / "sd-vae-ft-mse").mkdir()
    (models / "vae").mkdir()
    (models / "vae" / "vae-ft-mse-840000.safetensors").write_bytes(b"")
    (models / "echomimic" / "poses" / "dance").mkdir(parents=True)
    (models / "echomimic" / "poses" / "dance" / "0.npy").write_bytes(b"")
    (Path(bridge.INPUT_DIR) / "echomimic_poses").mkdir(parents=True)
    (Path(bridge.INPUT_DIR) / "echomimic_poses" / "mine.npz").write_bytes(b"")
    assert paths.weight_folders() == ["v2"]
    assert paths.vae_files() == ["vae-ft-mse-840000.safetensors"]
    assert paths.default_vae_file() == models / "vae" / "vae-ft-mse-840000.safetensors"
    assert paths.pose_folders() == ["dance", "mine.npz"]
    assert paths.resolve_pose_folder("mine.npz") == Path(bridge.INPUT_DIR) / "echomimic_poses" / "mine.npz"


# ------------------------------------------------------------------------------------------ bridge
def _fake_comfyui(tmp_path, calls):
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {"vae": ([str(tmp_path / "models" / "vae")], set())}
    fp.add_model_folder_path = lambda name, path, is_default=False: fp.folder_names_and_paths.setdefault(name, ([], set()))[0].append(path)
    fp.get_folder_paths = lambda name: list(fp.folder_names_and_paths[name][0])
    fp.get_input_directory = lambda: str(tmp_path / "input")
    fp.get_filename_list = lambda name: ["sd-vae-ft-mse.safetensors"] if name == "vae" else []
    mm = types.ModuleType("comfy.model_management")

    class Interrupt(Exception):
        pass

    class VRAMState:
        LOW_VRAM, NO_VRAM, NORMAL_VRAM = 2, 1, 3

    mm.InterruptProcessingException, mm.VRAMState, mm.vram_state = Interrupt, VRAMState, VRAMState.LOW_VRAM
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.should_use_bf16 = lambda device: calls.append(("bf16?", str(device))) or False
    mm.should_use_fp16 = lambda device: True
    mm.soft_empty_cache = lambda force=False: calls.append("empty")
    mm.free_memory = lambda n, device, keep_loaded=[]: calls.append(("free", n))
    mm.throw_exception_if_processing_interrupted = lambda: calls.append("interrupt?")
    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total):
            calls.append(("bar", total))

        def update_absolute(self, value, total=None, preview=None):
            calls.append(("update", value, total))

    utils.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = mm, utils
    return {"folder_paths": fp, "comfy": comfy, "comfy.model_management": mm, "comfy.utils": utils}


def test_bridge_uses_comfyui_when_it_is_importable(tmp_path, monkeypatch):
    c = sub("nodes.comfy_bridge")
    calls = []
    fakes = _fake_comfyui(tmp_path, calls)
    for name, mod in fakes.items():
        monkeypatch.setitem(sys.modules, name, mod)
    try:
        importlib.reload(c)
        assert c.in_comfyui() and c.InterruptProcessingException is fakes["comfy.model_management"].InterruptProcessingException
        assert c.folder_roots("echomimic") == [tmp_path / "models" / "echomimic"]
        assert c.folder_roots("echomimic") == [tmp_path / "models" / "echomimic"]  # registered once
        assert c.folder_roots("vae") == [tmp_path / "models" / "vae"]
        assert c.input_dir() == tmp_path / "input" and c.low_vram()
        assert c.filename_list("vae") == ["sd-vae-ft-mse.safetensors"]
        assert c.auto_dtype(torch.device("cpu")) == torch.float32
        assert c.auto_dtype(torch.device("cuda", 0)) == torch.float16 and ("bf16?", "cuda:0") in calls
        bar = c.progress_bar(4)
        bar.update_absolute(2, 4)
        c.check_interrupt()
        c.soft_empty_cache()
        c.free_memory(10, torch.device("cuda", 0))
        assert calls[-5:] == [("bar", 4), ("update", 2, 4), "interrupt?", "empty", ("free", 10)]
        assert not (tmp_path / "models").exists()  # registration is path strings only
    finally:
        for name in fakes:
            monkeypatch.delitem(sys.modules, name)
        importlib.reload(c)
    assert not c.in_comfyui()


def test_stand_ins_outside_comfyui(bridge):
    assert bridge.torch_device() == torch.device("cpu") and bridge.auto_dtype(torch.device("cpu")) == torch.float32
    assert bridge.folder_roots("echomimic") == [Path(bridge.MODELS_DIR) / "echomimic"]
    seen = []
    bridge.PROGRESS_HOOK = lambda v, t, p: seen.append((v, t))
    try:
        bridge.progress_bar(1).update_absolute(7, 5)
    finally:
        bridge.PROGRESS_HOOK = None
    assert seen == [(5, 5)]


def _fake_model_manager(calls, mm):
    """comfy.model_management's books (added to ``mm``) + comfy.model_patcher / comfy.ops / comfy.patcher_extension."""
    mm.current_loaded_models = []

    class Loaded:
        def __init__(self, patcher):
            self.model = patcher

        def model_unload(self):
            calls.append(("unload", type(self.model.model).__name__))
            self.model.model.to(self.model.offload_device)

    def load_models_gpu(patchers, memory_required=0):
        calls.append(("load", [type(p.model).__name__ for p in patchers], memory_required))
        mm.current_loaded_models[:0] = [Loaded(p) for p in patchers if not any(m.model is p for m in mm.current_loaded_models)]

    mm.load_models_gpu = load_models_gpu
    mm.unload_all_models = lambda: calls.append("unload_all")
    patcher_mod = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0):
            self.model, self.load_device, self.offload_device, self.callbacks = model, load_device, offload_device, []

        def add_callback(self, kind, fn):
            self.callbacks.append((kind, fn))

    patcher_mod.ModelPatcher = ModelPatcher
    ops = types.ModuleType("comfy.ops")

    class disable_weight_init:  # noqa: N801 - ComfyUI's name
        class Linear(torch.nn.Linear):
            comfy_cast_weights = False

        class Conv2d(torch.nn.Conv2d):
            comfy_cast_weights = False

        Conv1d, Conv3d, GroupNorm, LayerNorm = torch.nn.Conv1d, torch.nn.Conv3d, torch.nn.GroupNorm, torch.nn.LayerNorm

    ops.disable_weight_init = disable_weight_init
    ext = types.ModuleType("comfy.patcher_extension")
    ext.CallbacksMP = type("CallbacksMP", (), {"ON_LOAD": "on_load_after"})
    return {"comfy.model_patcher": patcher_mod, "comfy.ops": ops, "comfy.patcher_extension": ext}


def test_networks_go_to_comfyui_as_model_patchers_loaded_and_unloaded_through_its_manager(tmp_path, monkeypatch):
    c = sub("nodes.comfy_bridge")
    calls = []
    fakes = _fake_comfyui(tmp_path, calls)
    fakes.update(_fake_model_manager(calls, fakes["comfy.model_management"]))
    fakes["comfy"].model_patcher, fakes["comfy"].ops = fakes["comfy.model_patcher"], fakes["comfy.ops"]
    for name, mod in fakes.items():
        monkeypatch.setitem(sys.modules, name, mod)
    try:
        importlib.reload(c)
        net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Conv2d(3, 3, 1))
        net.attn2 = torch.nn.Module()
        net.attn2.to_out = torch.nn.ModuleList([torch.nn.Linear(3, 3)])  # its bias is read outside forward
        patcher = c.managed_model("denoiser", net)
        assert type(patcher).__name__ == "ModelPatcher" and patcher.model.net is net
        assert type(patcher.model).__name__ == "EchoMimicDenoiser"  # what ComfyUI logs: "Requested to load EchoMimicDenoiser"
        assert patcher.load_device == patcher.offload_device == torch.device("cpu")
        assert type(net[0]) is fakes["comfy.ops"].disable_weight_init.Linear  # castable: partial loading works
        assert type(net[1]) is fakes["comfy.ops"].disable_weight_init.Conv2d
        assert type(net.attn2.to_out[0]) is torch.nn.Linear  # kept whole, moved by the on-load callback
        assert [k for k, _ in patcher.callbacks] == ["on_load_after"]
        c.load_models([patcher], 123)
        assert calls[-1] == ("load", ["EchoMimicDenoiser"], 123) and c.is_loaded(patcher)
        c.unload_models([patcher])
        assert calls[-1] == ("unload", "EchoMimicDenoiser") and not c.is_loaded(patcher)
        c.unload_all_models()
        assert calls[-1] == "unload_all"
    finally:
        for name in fakes:
            monkeypatch.delitem(sys.modules, name)
        importlib.reload(c)
    assert not c.in_comfyui()


def test_partial_load_callback_puts_uncastable_tensors_on_the_device():
    c = sub("nodes.comfy_bridge")
    net = torch.nn.Module()
    net.pe = torch.nn.Module()
    net.pe.register_buffer("table", torch.zeros(3))
    patcher = types.SimpleNamespace(model=c.ManagedNetwork(net))
    c._whole_to_device(patcher, torch.device("meta"), 1, False, False)
    assert net.pe.table.device.type == "meta"
    c._whole_to_device(patcher, torch.device("cpu"), 0, False, True)  # a full load moved everything already
    assert net.pe.table.device.type == "meta"


def test_loader_widgets_keep_their_order_new_ones_come_last_and_the_tooltips_say_the_cost():
    nodes = load_pack().NODE_CLASS_MAPPINGS
    types_ = nodes["EchoMimicModelLoader"].INPUT_TYPES()
    spec = {**types_["required"], **types_["optional"]}
    assert list(types_["required"]) == ["version", "variant", "dtype", "attention", "keep_loaded", "weights_folder", "vae", "auto_download"]
    # new widgets come last and are optional: a saved API prompt without them still validates
    assert list(types_["optional"])[:2] == ["low_vram", "fp8"] and not spec["low_vram"][1]["default"] and not spec["fp8"][1]["default"]
    assert "GB" in spec["keep_loaded"][1]["tooltip"] and "Unload Models" in spec["keep_loaded"][1]["tooltip"]
    assert load_pack().NODE_DISPLAY_NAME_MAPPINGS["EchoMimicModelLoader"] == "EchoMimic Model Loader (whole model set)"
    fps = nodes["EchoMimicAudioEncoder"].INPUT_TYPES()["required"]["fps"][1]
    assert fps["step"] <= 0.01 and fps["min"] <= 29.97 <= fps["max"]  # fractional rates like the other fps widgets
    sampler = nodes["EchoMimicSampler"].INPUT_TYPES()["required"]
    assert sampler["width"][1]["default"] == sampler["height"][1]["default"] == 0 == sampler["width"][1]["min"]


def test_sampler_size_follows_the_reference_when_zero():
    size = sub("nodes.sampler").output_size
    ref = torch.zeros(1, 48, 64, 3)
    assert size(ref, 0, 0) == (64, 48) and size(ref, 128, 0) == (128, 48) and size(ref, 96, 96) == (96, 96)


# ------------------------------------------------------------------------------------------ payloads
def test_conditions_retime_to_the_video_length_and_draw_per_window():
    payloads = sub("nodes.payloads")
    px = np.random.default_rng(0).uniform(100, 400, (5, 478, 2))
    track = payloads.LandmarkTrack(px, (512, 512), 25.0, parts=frozenset({"eyes", "mouth"}))
    cond = track.condition(13, 64, 48, 25.0, ("nose",))
    assert cond.num_frames == 13
    imgs = cond.render([0, 12])
    assert imgs.shape == (2, 48, 64, 3) and imgs.dtype == np.uint8 and imgs.any()
    assert np.array_equal(cond.render([8])[0], cond.render([0])[0])  # ping-pong: 0 1 2 3 4 3 2 1 0
    with pytest.raises(sub("echomimic_lib.errors").EchoMimicError, match="covers 5 frames but 9 are needed"):
        payloads.LandmarkTrack(px, (512, 512), None, retime="fail").condition(9, 64, 64, 25.0, ("nose",))


def test_an_empty_part_selection_in_the_aligner_means_no_parts_not_the_default():
    landmarks, payloads = sub("nodes.landmarks"), sub("nodes.payloads")
    px = np.random.default_rng(1).uniform(100, 400, (3, 478, 2))
    track = payloads.LandmarkTrack(px, (512, 512), 24.0)
    ref = torch.zeros(1, 64, 64, 3)
    empty, _ = landmarks.align(track, ref, "none (driver's own landmarks)", " ", "ping-pong", False)
    assert empty.parts == frozenset()
    assert not empty.condition(3, 64, 64, 24.0, ("eyes", "mouth")).render([0, 1, 2]).any()  # nothing drawn
    some, _ = landmarks.align(track, ref, "none (driver's own landmarks)", "eyes", "ping-pong", False)
    assert some.condition(3, 64, 64, 24.0, ("mouth",)).render([0]).any()


def test_image_mask_and_audio_conversions():
    payloads = sub("nodes.payloads")
    err = sub("echomimic_lib.errors").EchoMimicError
    img = torch.rand(2, 8, 10, 3)
    arr = payloads.image_batch(img)
    assert arr.shape == (2, 8, 10, 3) and arr.dtype == np.uint8
    assert torch.allclose(payloads.to_image(arr), img, atol=1 / 255)
    with pytest.raises(err, match="IMAGE"):
        payloads.image_batch(torch.rand(8, 10, 3))
    assert payloads.to_mask(np.full((4, 6), 255, np.uint8)).shape == (1, 4, 6)
    audio = {"waveform": torch.zeros(1, 2, 48000), "sample_rate": 48000}
    assert payloads.trim_audio(audio, 12, 24.0)["waveform"].shape == (1, 2, 24000)
    assert payloads.trim_audio(audio, 100, 24.0)["waveform"].shape == (1, 2, 48000)


def test_sampler_condition_mismatches_say_what_to_connect():
    sampler, payloads = sub("nodes.sampler"), sub("nodes.payloads")
    err = sub("echomimic_lib.errors").EchoMimicError
    lm = payloads.LandmarkTrack(np.zeros((3, 478, 2)), (512, 512), 24.0)
    with pytest.raises(err, match="V2 half-body model was given V1 face landmarks.*hand poses"):
        sampler.build_condition("v2", None, lm, None, 10, 64, 64, 24.0)
    with pytest.raises(err, match="V1 landmark model needs face landmarks"):
        sampler.build_condition("v1_pose", None, None, None, 10, 64, 64, 24.0)
    with pytest.raises(err, match="V1 audio-driven model was given V1 face landmarks"):
        sampler.build_condition("v1_audio", None, lm, None, 10, 64, 64, 24.0)
    cond = sampler.build_condition("v1_audio", None, None, None, 10, 64, 48, 24.0)
    assert cond.tensor(48, 64).shape == (1, 1, 1, 48, 64)


# ------------------------------------------------------------------------------------------ packaging
def test_requirements_for_comfyui_manager_match_the_package_without_torch():
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = project["tool"]["comfy"]
    assert {"PublisherId", "DisplayName", "Icon", "requires-comfyui"} <= set(comfy) and comfy["PublisherId"]

    def names(lines):
        return {re.split(r"[<>=!~\[ ;]", x.strip(), maxsplit=1)[0].lower().replace("_", "-") for x in lines
                if x.strip() and not x.strip().startswith("#")}

    reqs = names((ROOT / "requirements.txt").read_text().splitlines())
    assert not reqs & {"torch", "torchvision", "torchaudio"}
    assert reqs == names(project["project"]["dependencies"]) - {"torch"}
