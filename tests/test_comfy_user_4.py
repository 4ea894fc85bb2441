"""A new ComfyUI graph builder's mistakes that reached expensive work or a raw traceback, each now refused first with a
message naming the input and the fix: a linked step count past the widget's 200 (the scheduler's ValueError after the
models were placed); a linked max_frames of 2.5 or -3 on the Landmark Extractor (a TypeError, or read as 'all'); width /
height 0 on the Sampler with a reference whose size is no multiple of 8 (the message did not say the size came from the
reference); the Hand-Pose Sequence Loader loading DWPose (and reading every driving frame) before an empty IMAGE or a
missing reference was said; and Gestures from Audio taking a linked seed of -1 or 2.5 and checking expressiveness and the
reference only after indexing the pose library."""
from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch

from tests._pack import sub

EchoMimicError = sub("echomimic_lib.errors").EchoMimicError


class Reached(Exception):
    """Raised where the expensive work would start: every check before it passed."""


def _reached(*a, **k):
    raise Reached


# ------------------------------------------------------------------------------------------ Sampler: steps, size 0
@pytest.fixture
def no_sampling(monkeypatch):
    sampler = sub("nodes.sampler")
    monkeypatch.setattr(sampler, "placement", _reached)
    handle = SimpleNamespace(models=SimpleNamespace(), low_vram=False, weights="v1_audio", variant="normal")
    track = SimpleNamespace(frame_count=12, fps=24.0, audio=None, features=None)

    def run(steps=1, reference=None, width=64, height=64):
        ref = torch.rand(1, 64, 64, 3) if reference is None else reference
        return sampler.sample(handle, ref, track, 7, steps, 0.0, width, height, 0, 12, 3)

    return run


@pytest.mark.parametrize("steps", [201, 5000, 10**9])
def test_a_linked_step_count_past_200_is_refused_before_the_models_are_placed(no_sampling, steps):
    """10^9 (a math node's output linked to steps) was diffusers' "num_inference_steps ... cannot be larger than 1000"
    ValueError once the models were on the GPU; 201..1000 ran far past the widget's range."""
    with pytest.raises(EchoMimicError, match=rf"steps {steps}: use 1\.\.200 denoising steps"):
        no_sampling(steps=steps)
    with pytest.raises(Reached):
        no_sampling(steps=200)  # the widget's top, linked: as before


def test_the_library_settings_refuse_it_too():
    settings = sub("echomimic_lib.pipeline").settings_for("v1-audio", width=64, height=64, steps=201, num_frames=4)
    with pytest.raises(EchoMimicError, match=r"steps 201: use 1\.\.200"):
        settings.validate()
    assert sub("echomimic_lib.jobs.animate_checks").MAX_STEPS == sub("echomimic_lib.modes").MAX_STEPS == 200


@pytest.mark.parametrize("size,words", [((1, 100, 80, 3), "height 100"), ((1, 64, 75, 3), "width 75")])
def test_size_0_with_a_reference_of_no_multiple_of_8_names_where_the_size_came_from(no_sampling, size, words):
    """It said "width and height must be positive multiples of 8 (got 80x100); try 80x96" while both widgets showed 0."""
    with pytest.raises(EchoMimicError) as info:
        no_sampling(reference=torch.rand(size), width=0, height=0)
    msg = str(info.value)
    assert words in msg and "width/height 0 take the reference's size, here" in msg and "Reference Preparation" in msg, msg
    with pytest.raises(Reached):
        no_sampling(reference=torch.rand(1, 96, 80, 3), width=0, height=0)


# ------------------------------------------------------------------------------------------ Landmark Extractor
def _extract(max_frames, monkeypatch):
    monkeypatch.setattr(sub("nodes.detectors"), "face_landmarker", _reached)
    return sub("nodes.landmarks").extract(torch.rand(3, 64, 64, 3), 24.0, "full frame", "interpolate", max_frames, False)


@pytest.mark.parametrize("max_frames", [2.5, -3, math.nan, True])
def test_the_extractor_refuses_a_linked_max_frames_that_is_no_count_before_mediapipe(monkeypatch, max_frames):
    """2.5 was "TypeError: slice indices must be integers"; -3 was read as 0 = all frames."""
    with pytest.raises(EchoMimicError, match=r"max_frames .*: give a whole number of frames, 0 = all of them"):
        _extract(max_frames, monkeypatch)


@pytest.mark.parametrize("max_frames", [0, 2, 2.0])
def test_the_extractor_takes_a_whole_max_frames(monkeypatch, max_frames):
    with pytest.raises(Reached):
        _extract(max_frames, monkeypatch)


# ------------------------------------------------------------------------------------------ Hand-Pose Sequence Loader
@pytest.fixture
def no_dwpose(monkeypatch):
    pose = sub("nodes.pose")
    monkeypatch.setattr(pose.detectors, "dwpose", lambda *a, **k: pytest.fail("DWPose was loaded for a bad input"))
    return pose


def _load_poses(pose, **kw):
    args = dict(pose_folder=pose.NO_FOLDER, fps=24.0, retime="continue", align="none", on_missing="hold", download=False,
                driving_frames=torch.rand(4, 64, 64, 3))
    args.update(kw)
    return pose.load(**args)


@pytest.mark.parametrize("frames,words", [(torch.rand(0, 64, 64, 3), "driving_frames: the IMAGE batch is empty"),
                                          (torch.rand(4, 64, 64), r"driving_frames: expected a ComfyUI IMAGE")])
def test_bad_driving_frames_are_said_before_dwpose_is_loaded(no_dwpose, frames, words):
    """DWPose was loaded first; without its models the message was about missing DWPose files, not the empty IMAGE."""
    with pytest.raises(EchoMimicError, match=words):
        _load_poses(no_dwpose, driving_frames=frames)


@pytest.mark.parametrize("reference,words", [(None, "'fit to reference shoulders' needs the reference image"),
                                             (torch.rand(0, 64, 64, 3), "reference: the IMAGE batch is empty")])
def test_a_missing_reference_is_said_before_dwpose_reads_every_driving_frame(no_dwpose, reference, words):
    """Every driving frame went through DWPose before "needs the reference image" was said."""
    with pytest.raises(EchoMimicError, match=words):
        _load_poses(no_dwpose, align="fit to reference shoulders", reference=reference)


def test_an_unknown_align_is_said_before_dwpose(no_dwpose):
    with pytest.raises(EchoMimicError, match="unknown align option 'shoulders'; choose one of none, fit to reference"):
        _load_poses(no_dwpose, align="shoulders")


# ------------------------------------------------------------------------------------------ Gestures from Audio
@pytest.fixture
def no_library(monkeypatch):
    gestures = sub("nodes.gestures")
    monkeypatch.setattr(gestures, "library_paths", lambda library: [])
    monkeypatch.setattr(gestures, "load_library", _reached)
    speech = torch.sin(torch.arange(16000) / 16000 * 2 * math.pi * 220).mul(0.3).reshape(1, 1, -1)

    def run(**kw):
        args = dict(library="all pose folders", seed=0, expressiveness=1.0, fps=24.0, min_pause=0.5, align="none",
                    auto_download=False, audio={"waveform": speech, "sample_rate": 16000})
        args.update(kw)
        return gestures.generate(**args)

    return run


@pytest.mark.parametrize("seed", [-1, 2.5, 2**64, math.nan])
def test_gestures_refuse_a_linked_seed_the_samplers_refuse(no_library, seed):
    """-1 was taken as a fixed seed (not a random one), 2.5 as 2, nan was a ValueError in int() after the library was
    indexed; the samplers refuse all of them with this message."""
    with pytest.raises(EchoMimicError, match=r"seed .*: use a whole number from 0 to 2\^64-1 \(-1 is not 'random' here"):
        no_library(seed=seed)
    with pytest.raises(Reached):
        no_library(seed=2**64 - 1)


@pytest.mark.parametrize("level", [math.nan, 2.5, -0.1])
def test_gestures_refuse_a_linked_expressiveness_before_indexing_the_library(no_library, level):
    with pytest.raises(EchoMimicError, match=r"expressiveness must be between 0 and 2"):
        no_library(expressiveness=level)


def test_gestures_refuse_an_empty_reference_before_indexing_the_library(no_library):
    with pytest.raises(EchoMimicError, match=r"reference: the IMAGE batch is empty"):
        no_library(align="fit to reference shoulders", reference=torch.rand(0, 64, 64, 3))


# ------------------------------------------------------------------------------------------ Sampler: linked counts
def test_linked_context_counts_from_a_math_node_are_whole_numbers_or_refused():
    """A linked 8.0 (or 8.5) for context_frames / context_overlap passed every check and was "TypeError: 'float' object
    cannot be interpreted as an integer" in the window schedule, after the models were placed."""
    settings_for = sub("echomimic_lib.pipeline").settings_for
    ok = settings_for("v1-audio", width=64, height=64, num_frames=4, context_frames=8.0, context_overlap=2.0)
    ok.validate()
    assert (ok.context_frames, ok.context_overlap) == (8, 2)
    assert type(ok.context_frames) is int and type(ok.context_overlap) is int
    for name, value in (("context_frames", 8.5), ("context_overlap", 2.5), ("context_frames", math.nan)):
        bad = settings_for("v1-audio", width=64, height=64, num_frames=4, **{name: value})
        with pytest.raises(EchoMimicError, match=rf"{name.replace('_', ' ')} {value!r}: give a whole number of frames"):
            bad.validate()


def test_a_linked_length_of_20_0_is_20_frames(no_sampling, monkeypatch):
    """A math node's 20.0 was refused with "give a number of frames" (it is one); 20.5 and -1 still are refused."""
    sampler = sub("nodes.sampler")
    seen = {}
    real = sampler.settings_for

    def spy(*a, **k):
        seen["num_frames"] = k["num_frames"]
        return real(*a, **k)

    monkeypatch.setattr(sampler, "settings_for", spy)
    handle = SimpleNamespace(models=SimpleNamespace(), low_vram=False, weights="v1_audio", variant="normal")
    track = SimpleNamespace(frame_count=48, fps=24.0, audio=None, features=None)
    with pytest.raises(Reached):
        sampler.sample(handle, torch.rand(1, 64, 64, 3), track, 7, 1, 0.0, 64, 64, 20.0, 12, 3)
    assert seen["num_frames"] == 20 and type(seen["num_frames"]) is int
    for bad in (20.5, -1, math.inf):
        with pytest.raises(EchoMimicError, match=rf"length {bad}: give a whole number of frames, 0 = follow the audio"):
            sampler.sample(handle, torch.rand(1, 64, 64, 3), track, 7, 1, 0.0, 64, 64, bad, 12, 3)


# ------------------------------------------------------------------------------------------ LoRA strength
@pytest.fixture
def no_lora_read(monkeypatch):
    paths = sub("nodes.paths")
    monkeypatch.setattr(paths, "resolve_lora", _reached)
    monkeypatch.setattr(paths, "resolve_comfy_lora", _reached)


def _strength_runs():
    handle = SimpleNamespace(weights="v1_audio", variant="normal", patchers={})
    return {
        "EchoMimic LoRA": lambda s: sub("nodes.lora").EchoMimicLora().execute(handle, "a.safetensors", s),
        "EchoMimic V3 LoRA": lambda s: sub("nodes.v3_lora").EchoMimicV3Lora().execute(SimpleNamespace(), "w.safetensors", s),
        "Model Loader": lambda s: sub("nodes.loader").load("V1 audio", "normal", lora="a.safetensors", lora_strength=s),
    }


@pytest.mark.parametrize("node", list(_strength_runs()))
@pytest.mark.parametrize("strength", [5.0, -2.5, 1e6])
def test_a_linked_lora_strength_outside_the_widgets_range_is_refused_before_the_file_is_read(no_lora_read, node, strength):
    """A strength of 5 from a linked float was applied without a word (the widgets and --lora-strength stop at -2..2)."""
    with pytest.raises(EchoMimicError, match=rf"strength {re.escape(f'{strength:g}')}: use -2\.\.2 \(1 = as trained, 0 = the model "
                                             r"unchanged\); a linked value is not range-checked"):
        _strength_runs()[node](strength)


@pytest.mark.parametrize("node", list(_strength_runs()))
def test_a_strength_in_range_goes_on_to_the_file(no_lora_read, node):
    for strength in (-2.0, 0.0, 2.0):
        with pytest.raises(Reached):
            _strength_runs()[node](strength)


# ------------------------------------------------------------------------------------------ Landmark-Only Driving
@pytest.mark.parametrize("weights,name", [("v1_audio", "V1 audio-driven"), ("v2", "V2 half-body")])
def test_landmark_only_features_on_a_model_that_needs_speech_are_refused_before_the_models_are_placed(
        monkeypatch, weights, name):
    """Landmark-Only Driving -> a V1 audio (or V2) Sampler rendered a face that never spoke, without a word; the command
    line refuses the same ('only --mode landmarks runs without audio')."""
    sampler = sub("nodes.sampler")
    monkeypatch.setattr(sampler, "placement", _reached)
    monkeypatch.setattr(sampler, "build_condition", _reached)
    lm = sub("nodes.payloads").LandmarkTrack(torch.zeros(12, 478, 2).numpy(), (64, 64), 24.0)
    track = sub("nodes.landmark_only").unconditional(lm, 24.0)[0]
    for w in (weights, "v1_pose"):
        handle = SimpleNamespace(models=SimpleNamespace(), low_vram=False, weights=w, variant="normal")
        run = lambda: sampler.sample(handle, torch.rand(1, 64, 64, 3), track, 7, 1, 0.0, 64, 64, 0, 12, 3)  # noqa: E731
        if w == "v1_pose":
            with pytest.raises(Reached):  # the model it is made for
                run()
        else:
            with pytest.raises(EchoMimicError, match=rf"Landmark-Only Driving \(no audio\) drives the V1 landmark model only, "
                                                     rf"but this is a {name} model.*Connect EchoMimic Audio Encoder's "
                                                     r"audio_features, or load 'V1 landmark'"):
                run()


# ------------------------------------------------------------------------------------------ another socket's value
def _wrong_links():
    payloads, v3 = sub("nodes.payloads"), sub("nodes.v3")
    v1_model = payloads.ModelHandle(models=None, weights="v1_audio", variant="normal", keep_loaded=False)
    v3_model = v3.V3Handle(patcher=None, wav2vec=None, report="")
    v1_audio = payloads.AudioTrack(features=None, fps=24.0, audio={})
    v3_audio = v3.V3Audio(samples=None, frames=5, audio={})
    speech = {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}
    ref, stub = torch.rand(1, 64, 64, 3), SimpleNamespace()
    nodes = sub("nodes")
    v3_args = dict(positive=[], clip_vision_output=stub, vae=stub, image=ref, size=64, steps=1, audio_cfg=1.0, seed=0,
                   teacache="off", color_transfer=False)
    return {
        "V1 model -> V3 Sampler": (lambda: nodes.EchoMimicV3Sampler().execute(v1_model, v3_audio, **v3_args),
                                   "model: takes ECHOMIMIC_V3_MODEL", "ECHOMIMIC_MODEL (from EchoMimic Model Loader"),
        "V1 model -> V3 Audio Encoder": (lambda: nodes.EchoMimicV3AudioEncoder().execute(v1_model, speech, 5),
                                         "model: takes ECHOMIMIC_V3_MODEL", "ECHOMIMIC_MODEL"),
        "V3 model -> Audio Encoder": (lambda: nodes.EchoMimicAudioEncoder().execute(v3_model, speech, 24.0),
                                      "model: takes ECHOMIMIC_MODEL", "ECHOMIMIC_V3_MODEL (from EchoMimic V3 Loader"),
        "V3 model -> Sampler": (lambda: nodes.EchoMimicSampler().execute(v3_model, ref, v1_audio, 1, 1, 0.0, 64, 64, 0, 12, 3),
                                "model: takes ECHOMIMIC_MODEL", "ECHOMIMIC_V3_MODEL"),
        "V3 audio -> Sampler": (lambda: nodes.EchoMimicSampler().execute(stub, ref, v3_audio, 1, 1, 0.0, 64, 64, 0, 12, 3),
                                "audio_features: takes ECHOMIMIC_AUDIO_FEATURES", "ECHOMIMIC_V3_AUDIO"),
        "AUDIO -> Sampler": (lambda: nodes.EchoMimicSampler().execute(stub, ref, speech, 1, 1, 0.0, 64, 64, 0, 12, 3),
                             "audio_features: takes ECHOMIMIC_AUDIO_FEATURES", "an AUDIO"),
        "V1 features -> V3 Sampler": (lambda: nodes.EchoMimicV3Sampler().execute(stub, v1_audio, **v3_args),
                                      "v3_audio: takes ECHOMIMIC_V3_AUDIO", "ECHOMIMIC_AUDIO_FEATURES"),
        "MASK -> Paste Back crop": (lambda: nodes.EchoMimicPasteBack().execute(ref, torch.ones(1, 64, 64), ref, 24.0,
                                                                                "auto", 16, 0.1, "off"),
                                    "crop: takes ECHOMIMIC_CROP", "a tensor of shape (1, 64, 64)"),
        "V3 model -> LoRA": (lambda: nodes.EchoMimicLora().execute(v3_model, "a.safetensors", 1.0),
                             "model: takes ECHOMIMIC_MODEL", "ECHOMIMIC_V3_MODEL"),
    }


@pytest.mark.parametrize("case", list(_wrong_links()))
def test_another_sockets_value_through_a_switch_node_is_named_not_an_attribute_error(case):
    """A switch or reroute node of type * (which ComfyUI does not type-check) passed a V1 model to the V3 Sampler, a V3
    model to the Audio Encoder, ...: "AttributeError: 'ModelHandle' object has no attribute 'patcher'" and the like."""
    run, takes, brings = _wrong_links()[case]
    with pytest.raises(EchoMimicError) as info:
        run()
    msg = str(info.value)
    assert takes in msg and f"but the link brings {brings}" in msg and "do not mix" in msg, msg
