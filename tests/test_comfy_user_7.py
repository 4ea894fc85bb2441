"""A ComfyUI graph builder's walk, day 7: an EchoMimic LoRA node given lora "" (an API prompt run with validation
skipped, a workflow saved where the folder was empty) passed the model on as if no LoRA were wanted; Paste Back's
frame-size check did not name its `images` input; a COMBO value was compared strictly ("Auto " or "AUTO" for "auto",
an integer for the choice "24", from a workflow saved by another version): what is unambiguous is taken, the rest
refused naming the choices."""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch

from tests._pack import load_pack, sub

EchoMimicError = sub("echomimic_lib.errors").EchoMimicError
C = sub("nodes.comfy_bridge")
N = load_pack().NODE_CLASS_MAPPINGS


class Reached(Exception):
    """Raised where the node's own work would start: every check before it passed."""


def _arguments(cls, bad: str, value):
    from tests.test_comfy_user_5 import _arguments

    return _arguments(cls, bad, value)


# ------------------------------------------------------------------------------------------ 1. an empty name when run
def _name_inputs():
    cases = []
    for key, cls in N.items():
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (typ, *_) in spec.get(section, {}).items():
                if hasattr(cls, "VALIDATE_INPUTS") and isinstance(typ, list) and \
                        name in inspect.signature(cls.VALIDATE_INPUTS).parameters:
                    cases.append((key, name, section))
    assert len(cases) >= 10
    return cases


@pytest.mark.parametrize("node,name,section", _name_inputs())
@pytest.mark.parametrize("value", ["", " ", "./"])
def test_an_empty_name_is_refused_when_the_node_runs(node, name, section, value):
    """ComfyUI's validation refuses "" (the node's VALIDATE_INPUTS), but an API prompt can skip it: the EchoMimic LoRA
    and V3 LoRA nodes then passed the model on without its LoRA, without a word (the loader loaded no LoRA)."""
    cls = N[node]
    with pytest.raises(EchoMimicError) as info:
        getattr(cls(), cls.FUNCTION)(**_arguments(cls, name, value))
    msg = str(info.value)
    assert msg.startswith(f"{name} is empty") and "pick one" in msg, msg


@pytest.mark.parametrize("node", ["EchoMimicLora", "EchoMimicV3Lora"])
def test_a_lora_node_given_null_is_refused(node):
    cls = N[node]
    with pytest.raises(EchoMimicError) as info:
        getattr(cls(), cls.FUNCTION)(**_arguments(cls, "lora", None))
    msg = str(info.value)
    assert msg.startswith("lora: ") and "pick" in msg, msg


@pytest.mark.parametrize("node", ["EchoMimicLora", "EchoMimicV3Lora"])
def test_none_is_still_the_documented_no_lora(node):
    """"none" is what the list shows while the folder holds no LoRA: the model passes on unchanged, as the tooltip says."""
    cls = N[node]
    handle = SimpleNamespace()
    link = next(iter(cls.INPUT_TYPES()["required"]))  # model / v3_model
    assert getattr(cls(), cls.FUNCTION)(**{**_arguments(cls, "lora", "none"), link: handle})[0] is handle
    assert '"none"' in cls.INPUT_TYPES()["required"]["lora"][1]["tooltip"]


# ------------------------------------------------------------------------------------------ 2. Paste Back's frame size
def _geometry():
    return sub("echomimic_lib.frames.crop").CropGeometry((100, 80), (10, 0, 90, 80), (64, 64), kind="resize")


@pytest.mark.parametrize("size", [(48, 48), (64, 32), (128, 128)])
def test_paste_back_names_images_when_the_frames_are_another_size(size):
    """Was: "the generated frames are 48x48 but the crop was made for 64x64; ..." with no input named."""
    h, w = size
    with pytest.raises(EchoMimicError) as info:
        N["EchoMimicPasteBack"]().execute(torch.rand(2, h, w, 3), _geometry(), torch.rand(1, 80, 100, 3), 24.0, "auto", 8,
                                          0.1, "off")
    msg = str(info.value)
    assert msg.startswith(f"images: the frames are {w}x{h} ") and "64x64" in msg, msg
    assert "width and height" in msg and "crop" in msg, msg  # the fix: the sampler's size, or the matching crop


def test_paste_back_names_images_for_a_face_track_crop_before_any_work(monkeypatch):
    """The Face Track's crop (a dub plan): the size is checked before the schedule is read or a frame is pasted."""
    plan = object.__new__(sub("echomimic_lib.jobs.dub_plan").DubPlan)
    object.__setattr__(plan, "geometry", _geometry())
    with pytest.raises(EchoMimicError) as info:
        N["EchoMimicPasteBack"]().execute(torch.rand(2, 32, 32, 3), plan, torch.rand(3, 80, 100, 3), 24.0, "auto", 8,
                                          0.1, "off")
    assert str(info.value).startswith("images: the frames are 32x32 "), str(info.value)


def test_paste_back_still_pastes_frames_of_the_crop_size():
    out, fps, _ = N["EchoMimicPasteBack"]().execute(torch.rand(2, 64, 64, 3), _geometry(), torch.rand(1, 80, 100, 3),
                                                    24.0, "auto", 8, 0.1, "off")
    assert tuple(out.shape) == (2, 80, 100, 3) and fps == 24.0


# ------------------------------------------------------------------------------------------ 3. COMBO values, loosely
@pytest.mark.parametrize("given", ["Auto", "AUTO ", " auto", "auto\t"])
def test_a_choice_in_another_case_or_with_spaces_is_taken(given):
    """Was: "region: 'Auto ' is not one of its choices (auto, ...)" though only one choice can be meant."""
    out, _, _ = N["EchoMimicPasteBack"]().execute(torch.rand(1, 64, 64, 3), _geometry(), torch.rand(1, 80, 100, 3), 24.0,
                                                  given, 8, 0.1, " Mean/Std (lab) ")
    assert tuple(out.shape) == (1, 80, 100, 3)


def test_the_node_gets_the_choice_itself():
    base = sub("nodes.base")
    seen = {}

    class Pick(base.Node):
        OUTPUTS = (("INT", "x", "x"),)

        @classmethod
        def inputs(cls):
            return {"rate": (["16", "24", "25"], {}), "mode": (["fast", "Slow"], {}), "n": ("INT", {"default": 1})}

        def execute(self, rate, mode, n=1):
            seen.update(rate=rate, mode=mode)
            return (n,)

    Pick().execute(24, " slow ", n=2)  # an integer for the choice "24" (a workflow from a version with an INT widget)
    assert seen == {"rate": "24", "mode": "Slow"}
    Pick().execute(rate=25.0, mode="FAST")
    assert seen == {"rate": "25", "mode": "fast"}
    for rate in (24.5, True, "2 4", "024"):
        with pytest.raises(EchoMimicError) as info:
            Pick().execute(rate, "fast")
        assert str(info.value).startswith("rate: ") and "16, 24, 25" in str(info.value), str(info.value)


def test_a_choice_that_two_could_mean_is_refused_naming_them():
    base = sub("nodes.base")

    class Two(base.Node):
        OUTPUTS = (("INT", "x", "x"),)

        @classmethod
        def inputs(cls):
            return {"kind": (["A", "a", "b"], {})}

        def execute(self, kind):
            raise Reached

    with pytest.raises(Reached):
        Two().execute("a")  # exact: as before
    with pytest.raises(Reached):
        Two().execute(" B")
    with pytest.raises(EchoMimicError) as info:
        Two().execute(" a ")
    msg = str(info.value)
    assert msg.startswith("kind: ") and "'A'" in msg and "'a'" in msg, msg


@pytest.mark.parametrize("value", [1, 0, True, None, "autoo", ["auto"]])
def test_a_value_no_choice_is_is_still_refused_naming_the_choices(value):
    with pytest.raises(EchoMimicError) as info:
        N["EchoMimicPasteBack"]().execute(torch.rand(1, 64, 64, 3), _geometry(), torch.rand(1, 80, 100, 3), 24.0,
                                          value, 8, 0.1, "off")
    msg = str(info.value)
    assert msg.startswith("region: ") and "auto, face box, landmark hull, crop square" in msg, msg


# ------------------------------------------------------------------------------------------ 4. a region the crop cannot give
@pytest.mark.parametrize("target", ["resize only", "V2 half-body crop"])
def test_paste_back_names_the_region_choice_a_crop_without_landmarks_cannot_give(target, monkeypatch):
    """'landmark hull' on a crop without face landmarks (resize only, a V2 half-body crop) was "paste-back region 'hull'
    needs face landmarks ...; use region 'face' or 'crop'": the library's names, not the node's choices, no input named."""
    crop = _geometry() if target == "resize only" else sub("echomimic_lib.frames.crop").CropGeometry(
        (100, 80), (10, 0, 90, 80), (64, 64), kind="v2_halfbody")
    with pytest.raises(EchoMimicError) as info:
        N["EchoMimicPasteBack"]().execute(torch.rand(2, 64, 64, 3), crop, torch.rand(1, 80, 100, 3), 24.0,
                                          "landmark hull", 8, 0.1, "off")
    msg = str(info.value)
    assert msg.startswith("region 'landmark hull': ") and "'face box'" in msg and "'crop square'" in msg, msg
    assert "'auto'" in msg and "'hull'" not in msg, msg


# ------------------------------------------------------------------------------------------ 5. a LoRA file written again
@pytest.mark.parametrize("node,folder", [("EchoMimicLora", "echomimic/loras"), ("EchoMimicV3Lora", "loras"),
                                         ("EchoMimicModelLoader", "echomimic/loras")])
def test_a_lora_file_written_again_makes_comfyui_run_the_node_again(node, folder, tmp_path, monkeypatch):
    """Queue, export the LoRA again under the same name (`echomimic-train export ... anna.safetensors` after more
    training), queue again: ComfyUI kept the node's cached output (its inputs had not changed), so the old adapter ran
    without a word. IS_CHANGED now follows the file (path, size, modification time)."""
    monkeypatch.setattr(C, "MODELS_DIR", tmp_path / "models")
    file = tmp_path / "models" / folder / "anna.safetensors"
    file.parent.mkdir(parents=True)
    file.write_bytes(b"one")
    cls = N[node]
    first = cls.IS_CHANGED(lora="anna.safetensors", strength=1.0)
    assert cls.IS_CHANGED(lora="anna.safetensors", strength=1.0) == first  # unchanged: ComfyUI's cache holds
    file.write_bytes(b"two, longer")
    assert cls.IS_CHANGED(lora="anna.safetensors", strength=1.0) != first
    import os
    stamp = cls.IS_CHANGED(lora="anna.safetensors")
    os.utime(file, ns=(file.stat().st_atime_ns, file.stat().st_mtime_ns + 10**9))  # the same size, written later
    assert cls.IS_CHANGED(lora="anna.safetensors") != stamp
    for odd in ("", None, "none", "gone.safetensors", "../x", "\ud800", 5):  # never an exception (ComfyUI calls it first)
        assert isinstance(cls.IS_CHANGED(lora=odd), str)


# ------------------------------------------------------------------------------------------ 6. the shipped workflows, edited
def _shipped_combo_values():
    import json

    from tests._pack import ROOT

    cases = []
    for file in sorted((ROOT / "workflows" / "api").glob("*.json")):
        for nid, node in json.loads(file.read_text()).items():
            cls = N.get(node["class_type"])
            if cls is None:
                continue
            own = set(inspect.signature(cls.VALIDATE_INPUTS).parameters) if hasattr(cls, "VALIDATE_INPUTS") else set()
            spec = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES().get("optional", {})}
            for name, value in node["inputs"].items():
                if isinstance(spec.get(name, (None,))[0], list) and name not in own:
                    cases.append((file.stem, nid, node["class_type"], name, value))
    assert len(cases) >= 40
    return cases


@pytest.mark.parametrize("workflow,nid,node,name,value", _shipped_combo_values())
def test_every_shipped_choice_edited_by_hand_is_still_its_choice(workflow, nid, node, name, value):
    """Each shipped API workflow's choices typed again by hand ("V1 AUDIO ", " Off"): each is the same choice."""
    base = sub("nodes.base")
    for edited in (value.upper() + " ", " " + value.title(), f"\t{value}\n"):
        assert base.combo_values(N[node], {name: edited})[name] == value, (workflow, nid, edited)
