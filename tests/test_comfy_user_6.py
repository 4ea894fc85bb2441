"""A ComfyUI graph builder's walk, day 6: Save Dub given an audio-only file (a wav / m4a, no video stream) as its source
video took it as "untagged" without a word; a payload made by another copy of the pack (two installs in custom_nodes:
a git clone and a registry copy) flowing into this copy's node failed confusingly (isinstance checks against the other
copy's classes): it is now named, with both folders and the fix (remove one)."""
from __future__ import annotations

import io
import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests._pack import ROOT, load_pack, sub
from tests._media import write_wav

EchoMimicError = sub("echomimic_lib.errors").EchoMimicError
C = sub("nodes.comfy_bridge")
N = load_pack().NODE_CLASS_MAPPINGS


@pytest.fixture
def out_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "OUTPUT_DIR", tmp_path / "output")
    return tmp_path / "output"


def _nothing_written(out_dir: Path) -> bool:
    return not out_dir.exists() or not any(p.is_file() for p in out_dir.rglob("*"))


def _speech_wav(path: Path, sr=16000) -> Path:
    t = np.arange(sr // 2) / sr
    return write_wav(path, (0.3 * np.sin(2 * math.pi * 220 * t)).astype(np.float32), sr)


def _m4a(path: Path) -> Path:
    import av

    sr = 16000
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=sr)
        stream.layout = "mono"
        wave = (0.3 * np.sin(2 * math.pi * 220 * np.arange(sr // 2) / sr)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


# ------------------------------------------------------------------------------------------ 1. an audio file as source video
@pytest.mark.parametrize("kind", ["wav path", "m4a path", "VideoFromFile(wav path)", "VideoFromFile(BytesIO m4a)"])
def test_save_dub_refuses_an_audio_only_source_before_any_work(tmp_path, out_dir, kind):
    """Was: read as "untagged" and the dub written with the default conversion, nothing said."""
    wav, m4a = _speech_wav(tmp_path / "speech.wav"), _m4a(tmp_path / "speech.m4a")
    video = {"wav path": wav, "m4a path": m4a,
             "VideoFromFile(wav path)": SimpleNamespace(get_stream_source=lambda: str(wav)),
             "VideoFromFile(BytesIO m4a)": SimpleNamespace(get_stream_source=lambda: io.BytesIO(m4a.read_bytes()))}[kind]
    images = torch.rand(3, 32, 32, 3)
    with pytest.raises(EchoMimicError) as info:
        N["EchoMimicSaveDub"]().execute(images, 24.0, video, "echomimic/dub", None)
    msg = str(info.value)
    assert msg.startswith("source_video:") and "no video stream" in msg and "Load Video" in msg, msg
    assert "audio" in msg, msg  # what it is: an audio file
    if "path" in kind:
        assert "speech." in msg, msg  # which file
    assert _nothing_written(out_dir)


def test_save_dub_still_takes_a_real_video(tmp_path, out_dir):
    W = sub("echomimic_lib.io.video_writer")
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    with W.Mp4Writer(tmp_path / "src.mp4", 24.0) as writer:
        writer.write(frames)
        src = writer.commit()
    out = N["EchoMimicSaveDub"]().execute(torch.rand(3, 32, 32, 3), 24.0, src, "echomimic/dub", None)
    assert Path(out["result"][0]).is_file()


# ------------------------------------------------------------------------------------------ 2. two copies of the pack
@pytest.fixture(scope="module")
def other_copy(tmp_path_factory):
    """A second install of the pack (a registry copy beside a git clone), imported the way ComfyUI imports a custom
    node folder: under its folder name, from its own path (here a link to this checkout)."""
    folder = tmp_path_factory.mktemp("custom_nodes") / "comfyui-echomimic"
    folder.symlink_to(ROOT, target_is_directory=True)
    name = "comfyui-echomimic"
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    module.NODE_CLASS_MAPPINGS  # noqa: B018  (imports its nodes)
    yield SimpleNamespace(folder=folder, sub=lambda m: importlib.import_module(f"{name}.{m}"))
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def _foreign_payloads(copy):
    P, v3, crop = copy.sub("nodes.payloads"), copy.sub("nodes.v3"), copy.sub("echomimic_lib.frames.crop")
    return {
        "ECHOMIMIC_MODEL": P.ModelHandle(models=SimpleNamespace(), weights="v1_audio", variant="normal", keep_loaded=False),
        "ECHOMIMIC_AUDIO_FEATURES": P.AudioTrack(features=SimpleNamespace(), fps=24.0, audio={}),
        "ECHOMIMIC_LANDMARKS": P.LandmarkTrack(np.zeros((1, 1, 2), np.float32), (8, 8), 24.0),
        "ECHOMIMIC_POSES": P.PoseTrack(sequence=SimpleNamespace()),
        "ECHOMIMIC_V3_MODEL": v3.V3Handle(patcher=None, wav2vec=None, report=""),
        "ECHOMIMIC_V3_AUDIO": v3.V3Audio(samples=np.zeros(16), frames=1, audio={}),
        "ECHOMIMIC_CROP": crop.CropGeometry.__new__(crop.CropGeometry),
    }


def _socket_inputs():
    """(node, input, socket) for every input of every node that takes one of the pack's sockets."""
    sockets = sub("nodes.base").SOCKETS
    cases = []
    for key, cls in N.items():
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (typ, *_) in spec.get(section, {}).items():
                if isinstance(typ, str) and typ in sockets:
                    cases.append((key, name, typ))
    return cases


def _two_copies_named(msg: str, copy) -> None:
    assert "two copies of the EchoMimic pack" in msg and "remove one" in msg.lower(), msg
    assert str(copy.folder) in msg and str(ROOT) in msg, msg  # both folders named


def test_every_socket_input_names_a_value_from_the_other_copy(other_copy):
    base = sub("nodes.base")
    foreign = _foreign_payloads(other_copy)
    cases = _socket_inputs()
    assert {typ for *_, typ in cases} == set(foreign)  # every socket of the pack is covered
    for key, name, typ in cases:
        problem = base.link_problem(N[key], {name: foreign[typ]})
        assert problem and problem.startswith(f"{name}: "), (key, name, problem)
        _two_copies_named(problem, other_copy)


def test_this_copys_own_values_still_pass(other_copy):
    base, P = sub("nodes.base"), sub("nodes.payloads")
    own = P.ModelHandle(models=SimpleNamespace(), weights="v1_audio", variant="normal", keep_loaded=False)
    assert base.link_problem(N["EchoMimicAudioEncoder"], {"model": own}) is None


def test_paste_back_names_the_two_copies_not_a_missing_crop(other_copy, out_dir):
    """Was: "crop: connect the crop output of EchoMimic Reference Preparation or EchoMimic Face Track." (it was)."""
    crop = _foreign_payloads(other_copy)["ECHOMIMIC_CROP"]
    images = torch.rand(1, 16, 16, 3)
    with pytest.raises(EchoMimicError) as info:
        N["EchoMimicPasteBack"]().execute(images=images, crop=crop, original=images, fps=24.0, region="auto",
                                           feather=8, dilation=1.0, color_match="off")
    _two_copies_named(str(info.value), other_copy)
    assert str(info.value).startswith("crop: ")


def test_the_audio_encoder_names_the_two_copies(other_copy):
    """Was: the other copy's model taken as it came (or an AttributeError deep inside, as the copies' versions differ)."""
    model = _foreign_payloads(other_copy)["ECHOMIMIC_MODEL"]
    audio = {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}
    cls = N["EchoMimicAudioEncoder"]
    args = {name: opts[1].get("default") for name, opts in cls.INPUT_TYPES()["required"].items() if len(opts) > 1
            and isinstance(opts[1], dict) and "default" in opts[1]}
    with pytest.raises(EchoMimicError) as info:
        getattr(cls(), cls.FUNCTION)(**{**args, "model": model, "audio": audio})
    _two_copies_named(str(info.value), other_copy)


def test_another_sockets_value_from_the_other_copy_is_named_too(other_copy):
    """The other copy's V1 model on a V3 model input: neither this copy's V3 handle nor its V1 one."""
    problem = sub("nodes.base").link_problem(N["EchoMimicV3Sampler"],
                                             {"model": _foreign_payloads(other_copy)["ECHOMIMIC_MODEL"]})
    assert problem and "ECHOMIMIC_MODEL" in problem, problem
    _two_copies_named(problem, other_copy)


# ------------------------------------------------------------------------------------------ 3. STRING / BOOLEAN links
def _widget_cases(kind: str):
    cases = []
    for key, cls in N.items():
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (typ, *_) in spec.get(section, {}).items():
                if typ == kind:
                    cases.append((key, name))
    return cases


def _run_with(node: str, name: str, value):
    from tests.test_comfy_user_5 import _arguments

    cls = N[node]
    return getattr(cls(), cls.FUNCTION)(**_arguments(cls, name, value))


@pytest.mark.parametrize("node,name", _widget_cases("STRING"))
@pytest.mark.parametrize("value", [5, 2.5, ["eyes"], {"a": 1}, True, None], ids=["int", "float", "list", "dict", "bool", "null"])
def test_a_text_input_given_no_text_is_named_first(node, name, value):
    """A STRING input linked through a switch / reroute node of type * (or an API prompt) given no text: the Part-Aware
    Aligner's parts=5 was "TypeError: 'int' object is not iterable", parts=None took the default parts silently, a
    filename_prefix of 5 was called "empty"."""
    with pytest.raises(EchoMimicError) as info:
        _run_with(node, name, value)
    msg = str(info.value)
    assert msg.startswith(f"{name}: takes text (STRING), but it is given ") and "link a node that gives text" in msg, msg


@pytest.mark.parametrize("node,name", _widget_cases("BOOLEAN"))
@pytest.mark.parametrize("value", ["false", "true", 0.5, [True], None], ids=["'false'", "'true'", "float", "list", "null"])
def test_a_switch_given_no_true_false_is_named_first(node, name, value):
    """auto_download / keep_loaded / low_vram ... given the text "false" through a link: it was taken as on (any
    non-empty text is true in Python), so "false" downloaded or kept the models loaded."""
    cls = N[node]
    if value is None and name in cls.INPUT_TYPES().get("optional", {}):
        pytest.skip("an optional input given nothing is not connected")
    with pytest.raises(EchoMimicError) as info:
        _run_with(node, name, value)
    msg = str(info.value)
    assert msg.startswith(f"{name}: takes true or false (BOOLEAN), but it is given "), msg


def test_the_checks_pass_real_values():
    base = sub("nodes.base")
    aligner, loader = N["EchoMimicPartAwareAligner"], N["EchoMimicModelLoader"]
    assert base.widget_type_problem(aligner, {"parts": ""}) is None
    assert base.widget_type_problem(loader, {"keep_loaded": True, "auto_download": 0, "low_vram": None}) is None
    assert base.widget_type_problem(loader, {"keep_loaded": np.bool_(False)}) is None


# ------------------------------------------------------------------------------------------ 4. the parts text
def _aligned_parts(parts: str):
    P = sub("nodes.payloads")
    track = P.LandmarkTrack(np.zeros((2, 478, 2), np.float32) + 100, (256, 256), 24.0)
    out, _ = N["EchoMimicPartAwareAligner"]().execute(track, torch.rand(1, 64, 64, 3), "none (driver's own landmarks)",
                                                      parts, "ping-pong", False)
    return out.parts


def test_a_preset_among_parts_adds_its_parts():
    """"landmarks, mouth" was "unknown landmark part 'landmarks'", though the message listed 'landmarks' as a preset."""
    L = sub("echomimic_lib.landmarks.parts")
    assert _aligned_parts("landmarks, mouth") == L.LANDMARK_MODE_PARTS | {"mouth"}
    assert _aligned_parts("all") == frozenset(L.PARTS) and _aligned_parts("eyes, Nose") == {"eyes", "nose"}


@pytest.mark.parametrize("parts", ["eyes; mouth", "eyes mouth", "eyes|nose"])
def test_parts_without_commas_say_to_use_commas(parts):
    with pytest.raises(EchoMimicError, match=r"^parts: unknown landmark part .*separate the parts with commas"):
        _aligned_parts(parts)


# ------------------------------------------------------------------------------------------ 5. Face Track's reference frame
class Reached(Exception):
    """Raised where the expensive work would start: every check before it passed."""


def _reached(*a, **k):
    raise Reached


@pytest.mark.parametrize("frame", [10, 12, 100000])
def test_face_track_refuses_a_reference_frame_past_the_video_before_loading_mediapipe(monkeypatch, frame):
    """A workflow shared with reference_frame 120 run on a 10-frame clip: MediaPipe was loaded (downloaded with
    auto_download) first, then "reference frame 12 does not exist" without the input's name or the fix (-1)."""
    monkeypatch.setattr(sub("nodes.face_track").detectors, "face_landmarker", _reached)
    speech = SimpleNamespace(features=SimpleNamespace(seconds=1.0), fps=24.0, frame_count=24)
    run = N["EchoMimicFaceTrack"]()
    with pytest.raises(EchoMimicError) as info:
        run.execute(torch.rand(10, 64, 64, 3), 24.0, speech, 64, 64, frame, "eyes", "ping-pong", False)
    msg = str(info.value)
    assert msg.startswith(f"reference_frame {frame}: ") and "0..9" in msg and "-1" in msg, msg
    with pytest.raises(Reached):
        run.execute(torch.rand(10, 64, 64, 3), 24.0, speech, 64, 64, 9, "eyes", "ping-pong", False)


# ------------------------------------------------------------------------------------------ 6. an empty name in a list input
def _name_inputs():
    import inspect

    cases = []
    for key, cls in N.items():
        spec = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES().get("optional", {})}
        if hasattr(cls, "VALIDATE_INPUTS"):
            cases += [(key, p) for p in inspect.signature(cls.VALIDATE_INPUTS).parameters if isinstance(spec[p][0], list)]
    assert len(cases) >= 10
    return cases


@pytest.mark.parametrize("node,name", _name_inputs())
@pytest.mark.parametrize("value", ["", ".", "./", "\\"])
def test_an_empty_name_is_a_validation_message_not_an_exception(node, name, value):
    """A workflow saved where the list was empty holds "" (weights folder, LoRA, pose folder, metric file): the node's
    VALIDATE_INPUTS raised "ValueError: PurePosixPath('.') has an empty name" (ComfyUI: "Exception when validating
    node")."""
    got = N[node].VALIDATE_INPUTS(**{name: value})
    assert isinstance(got, str) and got.startswith(f"{name} is empty") and "pick one" in got, got


# ------------------------------------------------------------------------------------------ 7. a name no file name can hold
@pytest.mark.parametrize("node,name", [("EchoMimicModelLoader", "weights_folder"), ("EchoMimicModelLoader", "vae"),
                                       ("EchoMimicModelLoader", "lora"), ("EchoMimicLora", "lora"),
                                       ("EchoMimicV3Loader", "folder"), ("EchoMimicV3Lora", "lora")])
def test_a_name_with_a_lone_surrogate_is_named_not_a_unicode_traceback(node, name, tmp_path, monkeypatch):
    """A workflow JSON holding "\\ud800" (half of a surrogate pair) in a name run with validation skipped:
    "UnicodeEncodeError: 'utf-8' codec can't encode character '\\ud800'" from deep in the folder look-up."""
    monkeypatch.setattr(C, "MODELS_DIR", tmp_path / "models")
    with pytest.raises(EchoMimicError) as info:
        _run_with(node, name, "v1\ud800")
    msg = str(info.value)
    assert "surrogate" in msg and "pick" in msg, msg


def test_each_copy_names_the_other_install(other_copy):
    """The warning each copy logs when ComfyUI loads it beside the other (before any graph runs)."""
    assert str(other_copy.folder) in sub("nodes.base").other_installs()
    assert str(ROOT) in other_copy.sub("nodes.base").other_installs()
    assert str(ROOT) not in sub("nodes.base").other_installs()  # itself is no other install
