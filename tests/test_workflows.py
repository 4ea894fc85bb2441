"""Every shipped workflow (UI format in workflows/, API format in workflows/api/) checked against the nodes'
INPUT_TYPES: node types exist, widget values match in count, order and type, links connect matching types,
required inputs are connected, each graph ends in CreateVideo -> SaveVideo (a to-file sampler, or the dub's EchoMimic
Save Dub, which keeps the source's colours), and the API file is the same graph
as the UI file. The checker is also shown to catch schema changes that would break a saved workflow."""
from __future__ import annotations

import copy
import importlib
import importlib.util
import json
from pathlib import Path

import pytest
from tests._pack import PACK, load_pack, sub  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
MODES = {"v1_audio", "v1_audio_acc", "v1_landmarks_video", "v1_audio_selected_landmarks", "v2_pose_folder", "v2_pose_video",
         "v1_audio_evaluate", "v1_audio_paste_back", "v1_dub_video", "v2_paste_back", "v3_flash",
         "v2_audio_only", "v3_flash_lora", "v1_audio_to_file", "v3_flash_long_to_file"}
TO_FILE = {"v1_audio_to_file": "EchoMimicSamplerToFile", "v3_flash_long_to_file": "EchoMimicV3SamplerToFile"}  # the sampler writes the mp4 itself (no Create / Save Video)
PASTE_BACK = {"v1_audio_paste_back", "v1_dub_video", "v2_paste_back"}  # full-frame results: CreateVideo gets the composite
SAVE_DUB = {"v1_dub_video"}  # saved by EchoMimic Save Dub (the source video's colour tags), not CreateVideo -> SaveVideo

# Core nodes the workflows use, written down from Comfy-Org/ComfyUI a125cd84 (2025-10-11, comfyui_version 0.3.64):
#   LoadImage           nodes.py l.1630-1642: "image" combo with image_upload; the frontend adds an "upload" widget (saved "image")
#   LoadAudio           comfy_extras/nodes_audio.py l.319-328: "audio" combo with audio_upload; the frontend adds
#                       "audioUI" and "upload" widgets (saved null)
#   SaveVideo           comfy_extras/nodes_video.py l.71-83: video, filename_prefix, format, codec
#                       (options from comfy_api/latest/_util/video_types.py: VideoContainer, VideoCodec)
#   CreateVideo         comfy_extras/nodes_video.py l.119-133: images, fps (FLOAT widget, 1..120), audio (optional)
#   GetVideoComponents  comfy_extras/nodes_video.py l.143-157: video -> images, audio, fps
#   LoadVideo           comfy_extras/nodes_video.py l.167-181: "file" combo with video upload (frontend "upload" widget)
#   PreviewAny          comfy_extras/nodes_preview_any.py: "source" of any type ("*"), an output node without outputs
#   PreviewImage        nodes.py l.1616-1628: "images" IMAGE, an output node
#   CLIPLoader          nodes.py l.928-936: clip_name, type (combos), device (optional, advanced: a widget too)
#   CLIPTextEncode      nodes.py l.54-62: text (STRING widget), clip; CLIPVisionLoader l.985: clip_name
#   CLIPVisionEncode    nodes.py l.1002-1007: clip_vision, image, crop ["center", "none"]; VAELoader l.701: vae_name
# kind: "socket" / "optional" (linked inputs), "widget" (a widget value, also in the API prompt), "ui" (frontend-only widget)
CORE = {
    "LoadImage": ([("image", "COMBO", "widget"), ("upload", "IMAGEUPLOAD", "ui")], ["IMAGE", "MASK"]),
    "LoadAudio": ([("audio", "COMBO", "widget"), ("audioUI", "AUDIO_UI", "ui"), ("upload", "AUDIOUPLOAD", "ui")], ["AUDIO"]),
    "LoadVideo": ([("file", "COMBO", "widget"), ("upload", "VIDEOUPLOAD", "ui")], ["VIDEO"]),
    "GetVideoComponents": ([("video", "VIDEO", "socket")], ["IMAGE", "AUDIO", "FLOAT"]),
    "CreateVideo": ([("images", "IMAGE", "socket"), ("fps", "FLOAT", "widget"), ("audio", "AUDIO", "optional")], ["VIDEO"]),
    "SaveVideo": ([("video", "VIDEO", "socket"), ("filename_prefix", "STRING", "widget"), ("format", "COMBO", "widget"),
                   ("codec", "COMBO", "widget")], []),
    "PreviewAny": ([("source", "*", "socket")], []),
    "PreviewImage": ([("images", "IMAGE", "socket")], []),
    "CLIPLoader": ([("clip_name", "COMBO", "widget"), ("type", "COMBO", "widget"), ("device", "COMBO", "widget")], ["CLIP"]),
    "CLIPTextEncode": ([("text", "STRING", "widget"), ("clip", "CLIP", "socket")], ["CONDITIONING"]),
    "CLIPVisionLoader": ([("clip_name", "COMBO", "widget")], ["CLIP_VISION"]),
    "CLIPVisionEncode": ([("clip_vision", "CLIP_VISION", "socket"), ("image", "IMAGE", "socket"), ("crop", "COMBO", "widget")],
                         ["CLIP_VISION_OUTPUT"]),
    "VAELoader": ([("vae_name", "COMBO", "widget")], ["VAE"]),
}
CORE_OPTIONS = {("SaveVideo", "format"): ["auto", "mp4"], ("SaveVideo", "codec"): ["auto", "h264"],
                ("CLIPLoader", "device"): ["default", "cpu"], ("CLIPVisionEncode", "crop"): ["center", "none"]}
CORE_RANGES = {("CreateVideo", "fps"): (1.0, 120.0)}
UI_ONLY = {"MarkdownNote": 1, "Note": 1}  # frontend-only nodes: number of widget values, never sent to the server
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# ComfyUI's template browser folders (app/custom_node_manager.py l.96 at a125cd84); files are globbed as */<folder>/*.json
TEMPLATE_FOLDERS = ["example_workflows", "example", "examples", "workflow", "workflows"]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}




@pytest.fixture
def schema(tmp_path, monkeypatch):
    """Node type -> (inputs [(name, type, kind, options)], output types), with the pose folder '01' and the LoRA the
    v3_flash_lora template names (a placeholder the user replaces) installed."""
    pack = load_pack()
    bridge = importlib.import_module(f"{PACK}.nodes.comfy_bridge")
    monkeypatch.setattr(bridge, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(bridge, "INPUT_DIR", tmp_path / "input")
    (tmp_path / "models" / "echomimic" / "poses" / "01").mkdir(parents=True)
    (tmp_path / "models" / "echomimic" / "poses" / "01" / "0.npy").write_bytes(b"")
    (tmp_path / "models" / "loras").mkdir()
    (tmp_path / "models" / "loras" / "my_v3_lora.safetensors").write_bytes(b"")
    return build_schema(pack.NODE_CLASS_MAPPINGS)


def build_schema(mappings) -> dict:
    out = {name: ([(n, t, k, {}) for n, t, k in ins], outs) for name, (ins, outs) in CORE.items()}
    for node_type, cls in mappings.items():
        ins = []
        for section in ("required", "optional"):
            for name, (typ, opts) in cls.INPUT_TYPES().get(section, {}).items():
                late = {"late": True} if section == "optional" else {}  # a widget added later: may be missing
                if isinstance(typ, list):
                    ins.append((name, "COMBO", "widget", dict(opts, options=typ, **late)))
                elif typ in WIDGET_TYPES and not opts.get("forceInput"):
                    ins.append((name, typ, "widget", dict(opts, **late)))
                else:
                    ins.append((name, typ, "socket" if section == "required" else "optional", opts))
        out[node_type] = (ins, list(cls.RETURN_TYPES))
    return out


def _value_error(node_type, name, typ, opts, value) -> str | None:
    options = opts.get("options", CORE_OPTIONS.get((node_type, name)))
    if typ == "COMBO":
        if not isinstance(value, str) or (options is not None and value not in options):
            return f"{value!r} is not one of {options}"
    elif typ == "BOOLEAN" and not isinstance(value, bool):
        return f"{value!r} is not a boolean"
    elif typ == "STRING" and not isinstance(value, str):
        return f"{value!r} is not a string"
    elif typ in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (typ == "INT" and not isinstance(value, int)):
            return f"{value!r} is not {typ}"
        lo, hi = CORE_RANGES.get((node_type, name), (opts.get("min", float("-inf")), opts.get("max", float("inf"))))
        if not lo <= value <= hi:
            return f"{value!r} outside {lo}..{hi}"
    return None


def ui_errors(wf: dict, schema: dict) -> list[str]:
    errs = []
    nodes = {n["id"]: n for n in wf["nodes"]}
    if wf.get("version") != 0.4 or wf["last_node_id"] < max(nodes) or wf["last_link_id"] < max(l[0] for l in wf["links"]):
        errs.append("header: version must be 0.4 and last_node_id / last_link_id must cover the ids")
    for n in wf["nodes"]:
        t, where = n["type"], f"node {n['id']} ({n['type']})"
        if t in UI_ONLY:
            if len(n["widgets_values"]) != UI_ONLY[t]:
                errs.append(f"{where}: {len(n['widgets_values'])} widget values")
            continue
        if t not in schema:
            errs.append(f"{where}: unknown node type")
            continue
        ins, outs = schema[t]
        expected = []
        for name, typ, kind, opts in ins:
            if kind in ("widget", "ui"):
                expected.append((name, typ, kind, opts))
                if opts.get("control_after_generate"):
                    expected.append((name + ":control_after_generate", "CONTROL", "ui", {}))
        values = n.get("widgets_values", [])
        if len(values) < len(expected) and all(e[3].get("late") for e in expected[len(values):]):
            expected = expected[:len(values)]  # saved before optional widgets were added: the frontend uses their defaults
        if len(values) != len(expected):
            errs.append(f"{where}: {len(values)} widget values, the node has {len(expected)} widgets ({[e[0] for e in expected]})")
        else:
            for (name, typ, kind, opts), value in zip(expected, values):
                bad = (value not in CONTROL_VALUES and f"{value!r} is not a seed control") if typ == "CONTROL" else \
                    (None if kind == "ui" else _value_error(t, name, typ, opts, value))
                if bad:
                    errs.append(f"{where}: widget '{name}': {bad}")
        saved = [o["type"] for o in n["outputs"]]
        if saved != outs[:len(saved)] or t == "EchoMimicPasteBack" and saved != outs:
            # a node that gained outputs at the end (Reference Preparation's crop) keeps its saved slots and links
            errs.append(f"{where}: outputs {saved} != {outs}")
        known = {name: typ for name, typ, _, _ in ins}
        for slot in n["inputs"]:
            if known.get(slot["name"]) != slot["type"]:
                errs.append(f"{where}: input '{slot['name']}' of type {slot['type']} is not an input of the node")
        linked = {s["name"] for s in n["inputs"] if s.get("link") is not None}
        for name, typ, kind, _ in ins:
            if kind == "socket" and name not in linked:
                errs.append(f"{where}: required input '{name}' is not connected")
    for lid, src, src_slot, dst, dst_slot, typ in wf["links"]:
        where = f"link {lid}"
        if src not in nodes or dst not in nodes:
            errs.append(f"{where}: missing end node")
            continue
        outs, ins = nodes[src]["outputs"], nodes[dst]["inputs"]
        if src_slot >= len(outs) or outs[src_slot]["type"] != typ or lid not in (outs[src_slot]["links"] or []):
            errs.append(f"{where}: output {src}:{src_slot} is not a {typ} output listing the link")
        if dst_slot >= len(ins) or ins[dst_slot]["type"] not in (typ, "*") or ins[dst_slot]["link"] != lid:
            errs.append(f"{where}: input {dst}:{dst_slot} is not a {typ} input holding the link")
    return errs


def api_errors(prompt: dict, schema: dict) -> list[str]:
    errs = []
    for nid, node in prompt.items():
        t, where = node["class_type"], f"node {nid} ({node['class_type']})"
        if t not in schema:
            errs.append(f"{where}: unknown node type")
            continue
        ins, _ = schema[t]
        spec = {name: (typ, kind, opts) for name, typ, kind, opts in ins if kind != "ui"}
        for name in set(node["inputs"]) - set(spec):
            errs.append(f"{where}: unknown input '{name}'")
        for name, (typ, kind, opts) in spec.items():
            value = node["inputs"].get(name)
            if value is None:
                if kind != "optional" and not opts.get("late"):
                    errs.append(f"{where}: input '{name}' is missing")
            elif isinstance(value, list):
                src = prompt.get(value[0])
                out_types = schema.get(src["class_type"], ([], []))[1] if src else []
                if value[1] >= len(out_types) or typ != "*" and out_types[value[1]] != typ:
                    errs.append(f"{where}: input '{name}' ({typ}) is linked to {value}, not a {typ} output")
            elif kind != "widget" or _value_error(t, name, typ, opts, value):
                errs.append(f"{where}: input '{name}' = {value!r} is not valid")
    return errs


def ui_to_api(wf: dict, schema: dict) -> dict:
    """What the frontend would queue for a UI workflow (widget values by name, links as [id, slot])."""
    links = {l[0]: l for l in wf["links"]}
    prompt = {}
    for n in wf["nodes"]:
        if n["type"] in UI_ONLY:
            continue
        values, inputs = iter(n["widgets_values"]), {}
        for name, typ, kind, opts in schema[n["type"]][0]:
            if kind in ("widget", "ui"):
                value = next(values, None)
                if value is None and opts.get("late"):
                    continue
                if opts.get("control_after_generate"):
                    next(values)
                if kind == "widget":
                    inputs[name] = value
        for slot in n["inputs"]:
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------ tests
def test_a_workflow_for_each_mode_in_both_formats():
    assert {p.stem for p in WORKFLOWS} == MODES
    assert {p.stem for p in (ROOT / "workflows" / "api").glob("*.json")} == MODES


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_matches_the_node_schemas(path, schema):
    assert ui_errors(_load(path), schema) == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_api_workflow_matches_the_schemas_and_is_the_same_graph(path, schema):
    prompt = _load(ROOT / "workflows" / "api" / path.name)
    assert api_errors(prompt, schema) == []
    stripped = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
    assert ui_to_api(_load(path), schema) == stripped


@pytest.mark.parametrize("path", [p for p in WORKFLOWS if p.stem in TO_FILE], ids=lambda p: p.stem)
def test_a_to_file_workflow_ends_in_the_to_file_sampler_with_its_path_and_preview_shown(path):
    prompt = _load(ROOT / "workflows" / "api" / path.name)
    assert not [n for n in prompt.values() if n["class_type"] in ("CreateVideo", "SaveVideo", "EchoMimicSampler")]
    (sid,) = [k for k, n in prompt.items() if n["class_type"] == TO_FILE[path.stem]]
    assert prompt[sid]["inputs"]["filename_prefix"] == f"echomimic/{path.stem}"
    shown = {(n["class_type"], tuple(v)) for n in prompt.values() for v in n["inputs"].values() if isinstance(v, list)
             and v[0] == sid}
    assert shown == {("PreviewAny", (sid, 0)), ("PreviewImage", (sid, 2))}  # the saved file's path, the preview frames


@pytest.mark.parametrize("path", [p for p in WORKFLOWS if p.stem not in TO_FILE], ids=lambda p: p.stem)
def test_each_workflow_ends_in_create_video_and_save_video_fed_by_the_sampler(path):
    prompt = _load(ROOT / "workflows" / "api" / path.name)
    saves = [n for n in prompt.values() if n["class_type"] in ("SaveVideo", "EchoMimicSaveDub")]
    assert len(saves) == 1
    if path.stem in SAVE_DUB:  # the frames, their rate and the speech, plus Load Video's file for its colour tags
        create = saves[0]
        assert create["class_type"] == "EchoMimicSaveDub" and create["inputs"]["filename_prefix"] == f"echomimic/{path.stem}"
        assert prompt[create["inputs"]["source_video"][0]]["class_type"] == "LoadVideo"
        assert [n["inputs"]["video"] for n in prompt.values() if n["class_type"] == "GetVideoComponents"] == \
            [create["inputs"]["source_video"]]  # the same video the frames came from
    else:
        create = prompt[saves[0]["inputs"]["video"][0]]
        assert create["class_type"] == "CreateVideo"
    sources = {k: (prompt[v[0]]["class_type"], v[1]) for k, v in create["inputs"].items() if isinstance(v, list)
               and k != "source_video"}
    sampler = "EchoMimicV3Sampler" if path.stem.startswith("v3") else "EchoMimicSampler"
    frames = "EchoMimicPasteBack" if path.stem in PASTE_BACK else sampler
    assert sources == {"images": (frames, 0), "fps": (frames, 1), "audio": (sampler, 2)}
    if frames == "EchoMimicPasteBack":  # the paste-back takes the sampler's frames; crop and composite are previewed
        paste = next(n for n in prompt.values() if n["class_type"] == "EchoMimicPasteBack")
        assert prompt[paste["inputs"]["images"][0]]["class_type"] == "EchoMimicSampler"
        previews = {tuple(n["inputs"]["images"]) for n in prompt.values() if n["class_type"] == "PreviewImage"}
        crop_src = paste["inputs"]["crop"][0]
        assert any(prompt[k]["class_type"] == "EchoMimicPasteBack" and slot == 2 for k, slot in previews)  # composite
        assert any(k == crop_src and prompt[k]["class_type"] in ("EchoMimicReferencePrep", "EchoMimicFaceTrack")
                   for k, _ in previews)  # the crop


def test_comfyui_template_browser_finds_the_folder_without_duplicates():
    present = [f for f in TEMPLATE_FOLDERS if (ROOT / f).is_dir()]
    assert present == ["workflows"]  # one template folder: a second one would list every workflow twice
    assert all(p.parent.name == "workflows" for p in WORKFLOWS)  # the API files sit one level deeper, not listed


def _mutations():
    def add_widget(mappings):
        cls = mappings["EchoMimicSampler"]
        old = cls.INPUT_TYPES

        def patched():
            spec = old()
            spec["required"] = {**spec["required"], "eta": ("FLOAT", {"default": 0.0, "tooltip": "x"})}
            return spec
        return cls, patched

    def swap_widgets(mappings):
        cls = mappings["EchoMimicModelLoader"]
        old = cls.INPUT_TYPES

        def patched():
            req = old()["required"]
            keys = list(req)
            keys[0], keys[1] = keys[1], keys[0]
            return {"required": {k: req[k] for k in keys}}
        return cls, patched

    def rename_socket_type(mappings):
        cls = mappings["EchoMimicAudioEncoder"]
        old = cls.INPUT_TYPES

        def patched():
            spec = old()
            spec["required"]["model"] = ("ECHOMIMIC_PIPE", spec["required"]["model"][1])
            return spec
        return cls, patched

    def drop_combo_option(mappings):
        cls = mappings["EchoMimicReferencePrep"]
        old = cls.INPUT_TYPES

        def patched():
            spec = old()
            spec["required"]["target"] = (["V1 face crop", "V2 half-body crop", "resize only"], spec["required"]["target"][1])
            return spec
        return cls, patched

    return [add_widget, swap_widgets, rename_socket_type, drop_combo_option]


@pytest.mark.parametrize("mutate", _mutations(), ids=lambda f: f.__name__)
def test_a_schema_change_that_breaks_saved_workflows_is_caught(mutate, schema, monkeypatch):
    mappings = copy.copy(load_pack().NODE_CLASS_MAPPINGS)
    cls, patched = mutate(mappings)
    monkeypatch.setattr(cls, "INPUT_TYPES", staticmethod(patched))
    changed = build_schema(mappings)
    broken = [p.stem for p in WORKFLOWS if ui_errors(_load(p), changed) or api_errors(_load(ROOT / "workflows" / "api" / p.name), changed)]
    assert broken, f"{mutate.__name__} went unnoticed"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_previews_are_shown_the_size_is_set_once_and_v1_landmark_references_are_face_crops(path):
    prompt = _load(ROOT / "workflows" / "api" / path.name)
    previewed = {tuple(n["inputs"]["images"]) for n in prompt.values() if n["class_type"] == "PreviewImage"}
    for nid, node in prompt.items():
        if node["class_type"] in ("EchoMimicLandmarkExtractor", "EchoMimicPartAwareAligner", "EchoMimicPoseSequenceLoader"):
            assert (nid, 1) in previewed, f"{node['class_type']}'s preview is not wired to a Preview Image"
        if node["class_type"] in ("EchoMimicSampler", "EchoMimicSamplerToFile"):
            assert node["inputs"]["width"] == node["inputs"]["height"] == 0  # follows Reference Preparation
    loader = next((n for n in prompt.values() if n["class_type"] == "EchoMimicModelLoader"), None)
    if loader is not None and loader["inputs"]["version"] == "V1 landmark":
        preps = [n for n in prompt.values() if n["class_type"] == "EchoMimicReferencePrep"]
        assert all(p["inputs"]["target"] == "V1 face crop + mask" for p in preps)  # like V1 audio (reference --crop_face 1)
    note = next((n for n in _load(path)["nodes"] if n["type"] == "MarkdownNote"), None)
    assert note is None or "docs/comfyui.md" in note["widgets_values"][0]


TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its saved position


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_no_two_nodes_overlap_at_their_saved_sizes_and_every_node_is_titled_for_what_it_shows(path):
    nodes = _load(path)["nodes"]

    def box(n):
        (x, y), (w, h) = n["pos"], n["size"]
        return x, y - TITLE_HEIGHT, x + w, y + h

    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            ax0, ay0, ax1, ay1 = box(a)
            bx0, by0, bx1, by1 = box(b)
            assert not (ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1), \
                f"{path.name}: {a['type']} #{a['id']} and {b['type']} #{b['id']} overlap"
    for n in nodes:
        if n["type"] == "PreviewImage":
            assert n.get("title", "").startswith(("Preview", "Lip-sync")), f"{path.name}: Preview Image #{n['id']} is untitled"
        if n["type"] == "EchoMimicModelLoader":
            assert n["title"] == "EchoMimic Model Loader (whole model set)"
            assert len(n["widgets_values"]) == 12 and n["size"][1] >= 12 * 24 + 30  # every widget fits its saved size


def test_the_v3_lora_workflow_is_v3_flash_with_one_lora_node_between_the_loader_and_the_sampler():
    base, with_lora = _load(ROOT / "workflows" / "api" / "v3_flash.json"), _load(ROOT / "workflows" / "api" / "v3_flash_lora.json")
    (lid,) = [k for k, n in with_lora.items() if n["class_type"] == "EchoMimicV3Lora"]
    lora = with_lora.pop(lid)["inputs"]
    loader = next(k for k, n in base.items() if n["class_type"] == "EchoMimicV3Loader")
    sampler = next(k for k, n in base.items() if n["class_type"] == "EchoMimicV3Sampler")
    assert lora == {"lora": "my_v3_lora.safetensors", "strength": 1.0, "v3_model": [loader, 0]}
    assert with_lora[sampler]["inputs"]["model"] == [lid, 0]  # the sampler gets the model with the LoRA
    with_lora[sampler]["inputs"]["model"] = [loader, 0]
    assert {k: with_lora[loader]["inputs"].pop(k) for k in ("auto_download", "compile")} == {"auto_download": False, "compile": False}
    save = next(k for k, n in base.items() if n["class_type"] == "SaveVideo")
    assert with_lora[save]["inputs"].pop("filename_prefix") == "echomimic/v3_flash_lora"
    base[save]["inputs"].pop("filename_prefix")

    def strip(prompt):
        return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
    assert strip(with_lora) == strip(base)  # every other node and value as in v3_flash: the two stay in sync
    ui = _load(ROOT / "workflows" / "v3_flash_lora.json")
    node = next(n for n in ui["nodes"] if n["type"] == "EchoMimicV3Lora")
    notes = " ".join(n["widgets_values"][0] for n in ui["nodes"] if n["type"] in UI_ONLY)
    assert "Wan2.1 1.3B LoRA" in node["title"] and "models/loras" in notes and "echomimic-train v3-export" in notes
