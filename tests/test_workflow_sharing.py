"""Workflows shared between machines and queued on ComfyUI's HTTP API: model and folder names written with the other
system's path separator, names that differ only in case or extension, odd JSON types in an API prompt, and the same
workflow run twice at once into one output folder.

ComfyUI's validation of a queued prompt is mirrored by :func:`comfy_validate` from Comfy-Org/ComfyUI a125cd84
``execution.py`` ``validate_inputs`` (l.725-963): widget values converted by type (INT / FLOAT / STRING / BOOLEAN),
range and "Value not in list" checks for the inputs the node's ``VALIDATE_INPUTS`` does not declare, then
``VALIDATE_INPUTS`` with the declared inputs (True or an error string; an exception there is "Exception when
validating node")."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests._pack import load_pack, sub

ROOT = Path(__file__).resolve().parents[1]


def comfy_validate(cls, inputs: dict) -> list[str]:
    """The errors ComfyUI would report for one node of an API prompt (no links: widget values only)."""
    spec = cls.INPUT_TYPES()
    declared = inspect.getfullargspec(cls.VALIDATE_INPUTS).args if hasattr(cls, "VALIDATE_INPUTS") else []
    errors, values = [], dict(inputs)
    for section in ("required", "optional"):
        for name, (typ, opts) in spec.get(section, {}).items():
            if name not in values:
                if section == "required" and (typ in ("INT", "FLOAT", "STRING", "BOOLEAN") or isinstance(typ, list)):
                    errors.append(f"Required input is missing: {name}")
                continue
            val = values[name]
            try:
                val = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(typ, lambda v: v)(val) \
                    if not isinstance(typ, list) else val
                values[name] = val
            except Exception as exc:
                errors.append(f"Failed to convert an input value to a {typ} value: {name}, {val}, {exc}")
                continue
            if name in declared:
                continue
            if "min" in opts and val < opts["min"] or "max" in opts and val > opts["max"]:
                errors.append(f"Value out of range: {name}")
            elif isinstance(typ, list) and val not in typ:
                errors.append(f"Value not in list: {name}: '{val}'")
    if declared:
        result = cls.VALIDATE_INPUTS(**{k: values[k] for k in declared[1:] if k in values})
        if result is not True:
            errors.append(f"Custom validation failed for node: {result}")
    return errors


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """A ComfyUI models / input / output layout with a fine-tune weights folder, a VAE and LoRAs in sub-folders, a pose
    folder and metric files."""
    load_pack()
    bridge = sub("nodes.comfy_bridge")
    monkeypatch.setattr(bridge, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(bridge, "INPUT_DIR", tmp_path / "input")
    monkeypatch.setattr(bridge, "OUTPUT_DIR", tmp_path / "output")
    m = tmp_path / "models"
    for f in ("echomimic/finetunes/anna/denoising_unet.pth", "vae/sd/sd-vae-ft-mse.safetensors",
              "echomimic/loras/people/anna.safetensors", "echomimic/poses/01/0.npy", "loras/wan/style.safetensors",
              "echomimic/metrics/syncnet_v2.model", "echomimic/v3-flash/echomimicv3-flash-pro/diffusion_pytorch_model.safetensors"):
        (m / f).parent.mkdir(parents=True, exist_ok=True)
        (m / f).write_bytes(b"")
    (tmp_path / "output").mkdir()
    return tmp_path


def _node(name):
    return load_pack().NODE_CLASS_MAPPINGS[name]


LOADER = {"version": "V1 audio", "variant": "normal", "dtype": "auto", "attention": "sdpa", "keep_loaded": False,
          "weights_folder": "auto", "vae": "auto", "auto_download": False}


# ------------------------------------------------------------------------------------------ path separators
@pytest.mark.parametrize("node, inputs", [
    ("EchoMimicModelLoader", dict(LOADER, weights_folder="finetunes\\anna", vae="sd\\sd-vae-ft-mse.safetensors",
                                  lora="people\\anna.safetensors")),
    ("EchoMimicLora", {"lora": "people\\anna.safetensors", "strength": 1.0}),
    ("EchoMimicV3Lora", {"lora": "wan\\style.safetensors", "strength": 1.0}),
])
def test_a_workflow_made_on_windows_names_its_models_with_backslashes_and_is_accepted_on_linux(folders, node, inputs):
    assert comfy_validate(_node(node), inputs) == []


def test_forward_slashes_from_linux_are_accepted_where_comfyui_lists_backslashes(folders, monkeypatch):
    paths = sub("nodes.paths")
    monkeypatch.setattr(paths, "vae_files", lambda: ["sd\\sd-vae-ft-mse.safetensors"])  # folder_paths' list on Windows
    assert comfy_validate(_node("EchoMimicModelLoader"), dict(LOADER, vae="sd/sd-vae-ft-mse.safetensors")) == []


def test_the_names_then_resolve_to_the_files_inside_their_folders(folders):
    paths = sub("nodes.paths")
    m = folders / "models"
    assert paths.find_named(paths.vae_roots(), "sd\\sd-vae-ft-mse.safetensors", "VAE") == m / "vae/sd/sd-vae-ft-mse.safetensors"
    assert paths.resolve_lora("people\\anna.safetensors") == m / "echomimic/loras/people/anna.safetensors"
    assert paths.find_named(paths.echomimic_roots(), "finetunes\\anna", "weights folder", want_dir=True) == \
        m / "echomimic/finetunes/anna"


@pytest.mark.parametrize("field, value", [("vae", "..\\..\\secret.safetensors"), ("weights_folder", "..\\finetunes\\anna"),
                                          ("lora", "C:\\Users\\me\\anna.safetensors"), ("vae", "/etc/passwd")])
def test_names_that_leave_their_folder_are_still_refused(folders, field, value):
    errors = comfy_validate(_node("EchoMimicModelLoader"), dict(LOADER, **{field: value}))
    assert len(errors) == 1 and field in errors[0] and "'..' are refused" in errors[0]


# ------------------------------------------------------------------------------------------ close matches
@pytest.mark.parametrize("node, inputs, meant", [
    ("EchoMimicModelLoader", dict(LOADER, vae="SD/SD-VAE-FT-MSE.safetensors"), "sd/sd-vae-ft-mse.safetensors"),
    ("EchoMimicModelLoader", dict(LOADER, vae="sd/sd-vae-ft-mse.pth"), "sd/sd-vae-ft-mse.safetensors"),
    ("EchoMimicModelLoader", dict(LOADER, weights_folder="Finetunes/Anna"), "finetunes/anna"),
    ("EchoMimicLora", {"lora": "anna.safetensors", "strength": 1.0}, "people/anna.safetensors"),
    ("EchoMimicPoseSequenceLoader", {"pose_folder": "poses\\01", "fps": 24.0, "retime": "continue", "align": "none",
                                     "on_missing": "interpolate", "auto_download": False}, "01"),
    ("EchoMimicEvaluate", {"fps": 25.0, "syncnet": "SyncNet_v2.model", "arcface": "none", "auto_download": False},
     "syncnet_v2.model"),
])
def test_a_name_missing_here_names_the_close_match(folders, node, inputs, meant):
    errors = comfy_validate(_node(node), inputs)
    assert len(errors) == 1 and f"did you mean '{meant}'" in errors[0], errors


def test_an_unknown_name_without_a_close_match_says_where_to_put_it(folders):
    errors = comfy_validate(_node("EchoMimicV3Loader"), {"folder": "wan-14b", "dtype": "auto"})
    assert len(errors) == 1 and "'wan-14b' is not in models/echomimic" in errors[0] and "'v3-flash'" in errors[0]


# ------------------------------------------------------------------------------------------ odd JSON types
VALUES = ["abc", None, [], ["1", 0, 2], {}, True, 1.5, -1, 10 ** 30, "..\\x"]


@pytest.mark.parametrize("node", sorted(load_pack().NODE_CLASS_MAPPINGS))
def test_validate_inputs_answers_any_json_value_with_true_or_a_message(folders, node):
    """An API prompt may hold anything where a widget value goes (ComfyUI passes a value it failed to convert on to
    VALIDATE_INPUTS unchanged): never an exception ("Exception when validating node" with a traceback)."""
    cls = _node(node)
    if not hasattr(cls, "VALIDATE_INPUTS"):
        return
    args = inspect.getfullargspec(cls.VALIDATE_INPUTS).args[1:]
    for name in args:
        for value in VALUES:
            result = cls.VALIDATE_INPUTS(**{name: value})
            assert result is True or isinstance(result, str) and result, (name, value, result)


# ------------------------------------------------------------------------------------------ the same prefix at once
def _frames(n=3, size=64):
    return torch.rand(n, size, size, 3)


def test_two_runs_with_one_prefix_at_once_keep_both_videos(folders):
    """Two renders of the same workflow (two ComfyUI instances sharing the output folder, or the CLI beside it) pick
    the same number when they start; the one that finishes second takes the next number instead of replacing the
    first's video."""
    to_file = sub("nodes.to_file")
    first = to_file.VideoFile("echomimic/anna", 64, 64, 25.0, None)
    second = to_file.VideoFile("echomimic/anna", 64, 64, 25.0, None)
    assert first.path == second.path  # the same number when they start
    outs = []
    for video, frames in ((first, _frames(3)), (second, _frames(5))):
        outs.append(video.write(lambda v=video, f=frames: v.window(0, f)))
    a, b = (Path(o["result"][0]) for o in outs)
    assert a != b and a.is_file() and b.is_file()
    assert a.name == "anna_00001_.mp4" and b.name == "anna_00002_.mp4"
    assert outs[1]["ui"]["images"][0]["filename"] == "anna_00002_.mp4"  # the frontend shows the file it wrote
    from echomimic_lib.io.video_io import probe
    assert probe(a)["frames"] == 3 and probe(b)["frames"] == 5
    assert sorted(p.name for p in (folders / "output" / "echomimic").iterdir()) == ["anna_00001_.mp4", "anna_00002_.mp4"]


def test_without_hard_links_a_taken_name_is_still_never_replaced(tmp_path, monkeypatch):
    """FAT and some network mounts have no hard links: the name is checked just before the rename."""
    from echomimic_lib.io import file_safety

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(file_safety.os, "link", no_links)
    taken = tmp_path / "v_00001_.mp4"
    taken.write_bytes(b"first")
    tmp = tmp_path / ".v.partial.mp4"
    tmp.write_bytes(b"second")
    got = file_safety.publish_new(tmp, taken, lambda: tmp_path / "v_00002_.mp4")
    assert got == tmp_path / "v_00002_.mp4" and got.read_bytes() == b"second" and taken.read_bytes() == b"first"
    assert not tmp.exists()


# ------------------------------------------------------------------------------------------ a plain value where a link goes
def _sockets():
    out = []
    for name, cls in sorted(load_pack().NODE_CLASS_MAPPINGS.items()):
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for inp, (typ, _) in spec.get(section, {}).items():
                if not isinstance(typ, list) and typ not in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                    out.append((name, section, inp, typ))
    return out


@pytest.mark.parametrize("node, section, socket, typ", _sockets(), ids=lambda v: str(v))
def test_a_plain_value_where_a_link_goes_is_refused_naming_the_input_and_its_type(folders, node, section, socket, typ):
    """ComfyUI queues an API prompt holding "model": "abc" or "reference": null (it checks neither); the node must say
    which input wants which link, not fail deep inside ('str' object has no attribute ...)."""
    EchoMimicError = sub("echomimic_lib.errors").EchoMimicError
    cls = _node(node)
    spec = cls.INPUT_TYPES()
    kwargs = {}
    for sec in ("required", "optional"):
        for inp, (t, opts) in spec.get(sec, {}).items():
            if isinstance(t, list):
                kwargs[inp] = opts.get("default", t[0])
            elif t in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                kwargs[inp] = opts.get("default", {"INT": 0, "FLOAT": 1.0, "STRING": "x", "BOOLEAN": False}[t])
            elif sec == "required":
                kwargs[inp] = object()  # some payload: the check must single out the bad input
    for bad in (["abc", 3, True] + ([None] if section == "required" else [])):
        with pytest.raises(EchoMimicError) as info:
            getattr(cls(), cls.FUNCTION)(**{**kwargs, socket: bad})
        assert f"{socket}: takes a link from a node that gives {typ}" in str(info.value)
    if section == "optional":
        with pytest.raises(Exception) as info:  # None = not connected: the node's own checks go on (here: the payloads)
            getattr(cls(), cls.FUNCTION)(**{**kwargs, socket: None})
        assert "takes a link" not in str(info.value)


# ------------------------------------------------------------------------------------------ prompts from older versions
@pytest.mark.parametrize("node", sorted(load_pack().NODE_CLASS_MAPPINGS))
def test_a_prompt_saved_before_a_widget_was_added_runs_with_that_widgets_default(folders, node):
    """Widgets added after a node's first release are optional (appended after the older ones, so a UI workflow's
    widgets_values keep their places): an older API prompt lacks them and ComfyUI passes nothing, so the node's own
    default must be the widget's default (else the old prompt would run with another value than the same graph in the
    UI). Every input is a parameter of the node's function, and nothing else is."""
    cls = _node(node)
    spec = cls.INPUT_TYPES()
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    declared = {**spec["required"], **spec.get("optional", {})}
    assert set(params) - {"self"} == set(declared)
    for name, (typ, opts) in spec.get("optional", {}).items():
        if isinstance(typ, list) or typ in ("INT", "FLOAT", "STRING", "BOOLEAN"):
            widget_default = opts.get("default", typ[0] if isinstance(typ, list) else None)
            assert params[name].default == widget_default, (name, params[name].default, widget_default)


# ------------------------------------------------------------------------------------------ echomimic queue
def test_queue_jobs_of_files_sharing_a_name_get_their_own_prefixes(tmp_path):
    """anna.png and anna.jpg (or Anna.png on a case-blind disk) with hello.wav and hello.mp3: four jobs, four prefixes,
    each naming its files; files with a name of their own keep the short prefix."""
    from echomimic_lib.jobs.queue_client import plan_jobs

    faces, speech = tmp_path / "faces", tmp_path / "speech"
    faces.mkdir(), speech.mkdir()
    for f in ("anna.png", "Anna.jpg", "bob.png"):
        (faces / f).write_bytes(b"x")
    for f in ("hello.wav", "hello.mp3", "bye.wav"):
        (speech / f).write_bytes(b"x")
    prefixes = [j.prefix for j in plan_jobs(faces, speech)]
    assert len(prefixes) == 9 and len({p.casefold() for p in prefixes}) == 9
    assert {"echomimic/anna_png__hello_wav", "echomimic/Anna_jpg__hello_mp3", "echomimic/bob__bye"} <= set(prefixes)


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="set COMFYUI_PATH (and run with a ComfyUI environment's "
                                                               "python) to check with ComfyUI's own validation")
def test_comfyuis_own_validation_accepts_the_other_separator_and_names_the_close_match(tmp_path):
    """The same through ComfyUI's execution.validate_inputs (in a subprocess: ComfyUI's modules hold global state)."""
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "_comfy_validate_real.py"), os.environ["COMFYUI_PATH"],
                          str(ROOT), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (backslashes, escape, case, version) = json.loads(run.stdout.strip().splitlines()[-1])
    assert backslashes == [True, []]
    assert not escape[0] and all("'..' are refused" in e for e in escape[1])
    assert not case[0] and all("did you mean 'sd/sd-vae-ft-mse.safetensors'" in e for e in case[1])
    assert not version[0] and "Value not in list" in version[1][0]  # the other inputs keep ComfyUI's own check
