"""A ComfyUI graph builder's walk, day 5: an AUDIO at an absurd sample rate (1 GHz: a damaged header, or the rate in mHz)
was refused as "audio is too short" by the encoders, and Save Dub took a NaN rate as "cannot convert float NaN to integer";
an unknown COMBO value (an edited workflow JSON, the HTTP API with validation skipped, an older workflow) reached the
node, where it was ignored or failed deep inside: every node now refuses it first, naming the allowed values."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tests._pack import sub

EchoMimicError = sub("echomimic_lib.errors").EchoMimicError


class Reached(Exception):
    """Raised where the expensive work would start: every check before it passed."""


def _reached(*a, **k):
    raise Reached


def _speech(rate=16000):
    wave = torch.sin(torch.arange(16000) / 16000 * 2 * math.pi * 220).mul(0.3).reshape(1, 1, -1)
    return {"waveform": wave, "sample_rate": rate}


# ------------------------------------------------------------------------------------------ 1. absurd sample rates
HIGH = [10**9, 5_000_000]
BAD = HIGH + [0, -1, math.nan, math.inf]


def _rate_runs(monkeypatch, tmp_path):
    audio_node, v3, gestures = sub("nodes.audio"), sub("nodes.v3"), sub("nodes.gestures")
    monkeypatch.setattr(audio_node, "placement", _reached)
    monkeypatch.setattr(gestures, "library_paths", lambda library: [])
    monkeypatch.setattr(gestures, "load_library", _reached)
    C = sub("nodes.comfy_bridge")
    monkeypatch.setattr(C, "OUTPUT_DIR", tmp_path / "out")
    handle = SimpleNamespace(models=SimpleNamespace(), low_vram=False, weights="v1_audio", variant="normal")
    v3_handle = v3.V3Handle(patcher=None, wav2vec=None, report="")
    save_dub = sub("nodes.save_dub")
    monkeypatch.setattr(save_dub, "source_color", lambda video: None)
    monkeypatch.setattr(save_dub, "describe_source", lambda *a: None)
    return {
        "Audio Encoder": lambda a: audio_node.encode(handle, a, 24.0),
        "V3 Audio Encoder": lambda a: v3.EchoMimicV3AudioEncoder().execute(v3_handle, a, 81),
        "Gestures from Audio": lambda a: gestures.generate("all pose folders", 0, 1.0, 24.0, 0.5, "none", False, audio=a),
        "Save Dub": lambda a: save_dub.save_dub(torch.rand(2, 64, 64, 3), 24.0, "src.mp4", "echomimic/dub", a),
    }


@pytest.mark.parametrize("node", ["Audio Encoder", "V3 Audio Encoder", "Gestures from Audio", "Save Dub"])
@pytest.mark.parametrize("rate", BAD)
def test_an_absurd_sample_rate_is_named_with_the_fix_not_called_too_short(monkeypatch, tmp_path, node, rate):
    """1 GHz: "audio is too short: 16 samples at 16 kHz" (the encoders) or nothing said (Save Dub muxed it); NaN on Save
    Dub: "ValueError: cannot convert float NaN to integer"."""
    run = _rate_runs(monkeypatch, tmp_path)[node]
    with pytest.raises(EchoMimicError) as info:
        run(_speech(rate))
    msg = str(info.value)
    assert "sample rate" in msg and "too short" not in msg, msg
    if rate in HIGH:
        assert f"{rate}" in msg and "768000 Hz" in msg and "resample" in msg, msg
    assert not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 384000, 768000])
def test_real_sample_rates_still_go_on(monkeypatch, tmp_path, rate):
    with pytest.raises(Reached):
        _rate_runs(monkeypatch, tmp_path)["Audio Encoder"](_speech(rate))


def test_the_library_names_the_rate_too():
    with pytest.raises(EchoMimicError, match=r"sample rate 1000000000 Hz is above the 768000 Hz"):
        sub("echomimic_lib.audio.waveform").read_raw_audio(_speech(10**9))


# ------------------------------------------------------------------------------------------ 2. unknown combo values
def _combo_cases():
    """(node, input) for every COMBO input of every node that ComfyUI's own list check covers (an input its
    VALIDATE_INPUTS takes is checked there instead: the folder and file names, :mod:`nodes.names`)."""
    import inspect

    cases = []
    for key, cls in sub("nodes").NODE_CLASS_MAPPINGS.items():
        validated = set(inspect.signature(cls.VALIDATE_INPUTS).parameters) if hasattr(cls, "VALIDATE_INPUTS") else set()
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (typ, *_) in spec.get(section, {}).items():
                if isinstance(typ, list) and name not in validated:
                    cases.append((key, name))
    return cases


def _arguments(cls, bad: str, value):
    """Every input of ``cls`` with a plausible value (a stand-in object for a link), ``bad`` set to ``value``."""
    args = {}
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, (typ, *opts) in spec.get(section, {}).items():
            opts = opts[0] if opts else {}
            if isinstance(typ, list):
                args[name] = typ[0]
            elif typ in ("INT", "FLOAT"):
                args[name] = opts.get("default", opts.get("min", 0))
            elif typ in ("STRING", "BOOLEAN"):
                args[name] = opts.get("default", "" if typ == "STRING" else False)
            else:
                args[name] = SimpleNamespace()
    args[bad] = value
    return args


def test_every_combo_input_is_covered():
    covered = {node for node, _ in _combo_cases()}
    assert {"EchoMimicModelLoader", "EchoMimicReferencePrep", "EchoMimicPasteBack", "EchoMimicV3Sampler",
            "EchoMimicV3Loader", "EchoMimicPoseSequenceLoader", "EchoMimicFaceTrack"} <= covered
    assert len(_combo_cases()) >= 24


@pytest.mark.parametrize("node,name", _combo_cases())
@pytest.mark.parametrize("value", ["no such value", "V1 Audio?", 3])  # another case alone is taken: test_comfy_user_7
def test_an_unknown_combo_value_is_refused_first_naming_the_allowed_values(node, name, value):
    """'fp64' as dtype, 'V3' as version, 'fast' as teacache ... from an edited workflow or the HTTP API with validation
    skipped: ignored (a default taken), or an error deep in the node (a KeyError, a message about something else)."""
    cls = sub("nodes").NODE_CLASS_MAPPINGS[node]
    choices = cls.INPUT_TYPES().get("required", {}).get(name) or cls.INPUT_TYPES()["optional"][name]
    with pytest.raises(EchoMimicError) as info:
        getattr(cls(), cls.FUNCTION)(**_arguments(cls, name, value))
    msg = str(info.value)
    assert msg.startswith(f"{name}: {value!r} is not one of its choices (") and ", ".join(map(str, choices[0])) in msg, msg
    assert "pick one of them" in msg, msg


# ------------------------------------------------------------------------------------------ 3. a MASK of the wrong size
@pytest.fixture
def no_sampling(monkeypatch):
    sampler = sub("nodes.sampler")
    monkeypatch.setattr(sampler, "placement", _reached)
    handle = SimpleNamespace(models=SimpleNamespace(), low_vram=False, weights="v1_audio", variant="normal")
    track = SimpleNamespace(frame_count=12, fps=24.0, audio=_speech(), features=None)

    def run(reference=None, mask=None, width=64, height=64):
        ref = torch.rand(1, 64, 64, 3) if reference is None else reference
        return sampler.sample(handle, ref, track, 7, 1, 0.0, width, height, 0, 12, 3, mask=mask)

    return run


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (128, 128)])
def test_a_mask_of_another_size_than_the_video_is_refused_before_the_models_are_placed(no_sampling, size):
    """It was said only in the first window, after the models were on the device."""
    h, w = size
    with pytest.raises(EchoMimicError, match=rf"the face mask is {w}x{h} but the video is 64x64; prepare the reference and "
                                             r"mask at the output size"):
        no_sampling(mask=torch.ones(1, h, w))
    with pytest.raises(Reached):
        no_sampling(mask=torch.ones(1, 64, 64))


# ------------------------------------------------------------------------------------------ 4. IMAGE channels
@pytest.mark.parametrize("shape", [(1, 64, 64, 1), (1, 64, 64, 2), (1, 64, 64)])
def test_an_image_of_1_channel_names_the_fix(no_sampling, shape):
    """"expected a ComfyUI IMAGE [batch, height, width, 3], got (1, 64, 64, 1)": no word on what to do."""
    with pytest.raises(EchoMimicError) as info:
        no_sampling(reference=torch.rand(shape))
    msg = str(info.value)
    assert msg.startswith(f"reference: expected a ComfyUI IMAGE [batch, height, width, 3], got {shape}") and \
        "Convert Mask to Image" in msg, msg


def test_an_rgba_image_takes_its_colour_channels():
    payloads = sub("nodes.payloads")
    rgba = torch.rand(1, 8, 8, 4)
    assert (payloads.image_batch(rgba) == payloads.image_batch(rgba[..., :3])).all()


# ------------------------------------------------------------------------------------------ 5. a V3 folder missing files
def test_a_v3_folder_missing_parts_names_every_missing_part_and_the_fix(monkeypatch, tmp_path):
    """A folder holding the flash-pro file without wav2vec2 (an interrupted download) was "FileNotFoundError: ...
    chinese-wav2vec2-base: no config.json", and the missing base transformer was not named until after it."""
    C, v3 = sub("nodes.comfy_bridge"), sub("nodes.v3")
    monkeypatch.setattr(C, "MODELS_DIR", tmp_path)
    flash = tmp_path / "echomimic" / "v3-flash" / v3.FLASH_FILE
    flash.parent.mkdir(parents=True)
    flash.write_bytes(b"x")
    monkeypatch.setattr(sub("echomimic_lib.audio.wav2vec"), "load_wav2vec",
                        lambda *a, **k: pytest.fail("wav2vec2 was read before the missing parts were named"))
    with pytest.raises(sub("echomimic_lib.errors").MissingWeightsError) as info:
        v3.EchoMimicV3Loader().execute("v3-flash", "auto")
    msg = str(info.value)
    assert "chinese-wav2vec2-base" in msg and "Wan2.1-Fun-V1.1-1.3B-InP" in msg and "auto_download" in msg, msg


# ------------------------------------------------------------------------------------------ 6. a video with no frames
@pytest.mark.parametrize("node", ["Landmark Extractor", "Sampler reference"])
def test_an_empty_image_batch_says_where_frames_go_missing(monkeypatch, no_sampling, node):
    """Load Video of a file with no frames (or a frame range past its end) gave "the IMAGE batch is empty." alone."""
    monkeypatch.setattr(sub("nodes.detectors"), "face_landmarker", _reached)
    empty = torch.rand(0, 64, 64, 3)
    runs = {"Landmark Extractor": lambda: sub("nodes.landmarks").extract(empty, 24.0, "full frame", "interpolate", 0, False),
            "Sampler reference": lambda: no_sampling(reference=empty)}
    with pytest.raises(EchoMimicError) as info:
        runs[node]()
    msg = str(info.value)
    assert "the IMAGE batch is empty" in msg and "Load Video" in msg and "frame" in msg, msg
