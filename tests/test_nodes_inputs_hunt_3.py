"""Node inputs that reached the V1/V2 Sampler (or its expensive work) unchecked, each refused before that work with an
EchoMimicError naming the fix: a linked frame rate outside the sampler's 1..120 at the nodes that fix the video's frame
rate (Audio Encoder, Landmark-Only Driving, Gestures from Audio); a MASK batch of differing masks (the first was used
silently), an all-zero mask and NaN / inf in the mask or reference; and an in-memory video larger than the host memory
available (the 'to file' samplers stream it instead)."""
from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tests._pack import sub
from tests.test_nodes import FPS, N, EchoMimicError, audio, loader, models  # noqa: F401
from tests.test_nodes_inputs_hunt import v3  # noqa: F401
from tests.test_nodes_inputs_hunt_2 import _gestures, _v3_sample, no_load  # noqa: F401

BAD_FPS = [240.0, 120.5, 0.0, -24.0, float("nan"), float("inf"), "fast", True]
RANGE = r"the frame rate must be a number between 1 and 120 \(24 or 25 is typical\)"


# ------------------------------------------------------------------------------------------ frame rate: one rule
def test_the_rule_is_the_samplers():
    """The nodes' check is the one SampleSettings.validate runs (same limits, same words)."""
    modes = sub("echomimic_lib.modes")
    settings = sub("echomimic_lib.pipeline").settings_for("v1-audio", width=64, height=64, fps=240.0, num_frames=4)
    with pytest.raises(EchoMimicError) as sampler_error:
        settings.validate()
    with pytest.raises(EchoMimicError) as node_error:
        modes.check_frame_rate(240.0)
    assert str(sampler_error.value) == str(node_error.value) == "fps 240.0: " + RANGE.replace("\\", "") + "."
    for good in (1, 24.0, 29.97, 120.0, np.float32(25.0)):
        assert modes.check_frame_rate(good) == float(good)


@pytest.mark.parametrize("fps", BAD_FPS)
def test_landmark_only_refuses_a_linked_frame_rate_outside_1_to_120(fps):
    """240 gave a 240 fps unconditional track that only the Sampler refused; "fast" was a ValueError in float()."""
    lm = sub("nodes.payloads").LandmarkTrack(np.zeros((5, 478, 2), np.float32), (64, 64), 24.0)
    with pytest.raises(EchoMimicError, match=rf"fps {fps}: {RANGE}"):
        N["EchoMimicLandmarkOnlyAudio"]().execute(lm, fps)
    track, _, frames = N["EchoMimicLandmarkOnlyAudio"]().execute(lm, 120)  # the widget's top, linked: as before
    assert track.fps == 120.0 and frames == 25


@pytest.mark.parametrize("fps", BAD_FPS)
def test_gestures_refuse_a_linked_frame_rate_outside_1_to_120_before_reading_the_library(models, monkeypatch, fps):  # noqa: F811
    gestures = sub("nodes.gestures")
    monkeypatch.setattr(gestures, "load_library", lambda *a, **k: pytest.fail("the pose library was read for a bad fps"))
    with pytest.raises(EchoMimicError, match=rf"fps {fps}: {RANGE}"):
        _gestures(audio=audio(1.0), fps=fps)


@pytest.fixture(scope="module")
def v1(models):  # noqa: F811
    return loader("V1 audio")


@pytest.mark.parametrize("fps", BAD_FPS)
def test_the_audio_encoder_refuses_a_linked_frame_rate_outside_1_to_120_before_whisper(v1, monkeypatch, fps):
    monkeypatch.setattr(sub("nodes.audio"), "encode_audio", lambda *a, **k: pytest.fail("whisper ran for a bad fps"))
    with pytest.raises(EchoMimicError, match=rf"fps {fps}: {RANGE}"):
        N["EchoMimicAudioEncoder"]().execute(v1, audio(0.5), fps)


def test_the_audio_encoder_takes_the_whole_range(v1):
    for fps in (1.0, 120):
        track, _, n = N["EchoMimicAudioEncoder"]().execute(v1, audio(1.0), fps)
        assert track.fps == float(fps) and n == int(fps)  # 1 s of speech


# ------------------------------------------------------------------------------------------ V1/V2 Sampler: mask, reference
class Placed(Exception):
    """Raised where the models would be placed: the inputs passed every check."""


@pytest.fixture
def stub(monkeypatch):
    sampler = sub("nodes.sampler")

    def placed(*a, **k):
        raise Placed

    monkeypatch.setattr(sampler, "placement", placed)
    handle = SimpleNamespace(models=SimpleNamespace(), low_vram=False, weights="v1_audio", variant="normal")

    def run(frames=12, reference=None, mask=None, frame_sink=None):
        track = SimpleNamespace(frame_count=frames, fps=24.0, audio=None, features=None)
        ref = torch.rand(1, 64, 64, 3) if reference is None else reference
        return sampler.sample(handle, ref, track, 7, 1, 0.0, 64, 64, 0, 12, 3, mask=mask, frame_sink=frame_sink)

    return run


def _face(value=1.0):
    m = torch.zeros(64, 64)
    m[16:48, 16:48] = value
    return m


def test_a_batch_of_differing_masks_is_refused_naming_the_fix(stub):
    """Only the first of a MASK batch was used, without a word."""
    with pytest.raises(EchoMimicError, match=r"mask: a batch of 2 different masks.*one face mask for the whole video"
                                             r".*Pass one mask"):
        stub(mask=torch.stack([_face(), torch.ones(64, 64)]))


def test_a_batch_of_equal_masks_is_that_mask(stub):
    sampler = sub("nodes.sampler")
    batch = torch.stack([_face()] * 3)
    assert torch.equal(sampler.build_condition("v1_audio", batch, None, None, 12, 64, 64, 24.0).mask, _face())
    with pytest.raises(Placed):
        stub(mask=batch)


@pytest.mark.parametrize("shape", [(1, 64, 64), (64, 64)])
def test_an_all_zero_mask_is_refused(stub, shape):
    """Nothing selected: the face locator was told there is no face anywhere (the official inference marks the whole
    picture when it finds no face); a faint mask still counts as a selection."""
    with pytest.raises(EchoMimicError, match=r"mask: the mask is all zero \(nothing selected\).*disconnect 'mask'"):
        stub(mask=torch.zeros(shape))
    with pytest.raises(Placed):
        stub(mask=_face(0.05)[None])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_mask_or_reference_with_nan_or_inf_is_refused(stub, bad):
    """They were cast to pixels (NaN -> an arbitrary byte) and sampled."""
    mask = _face()[None].clone()
    mask[0, 20, 20] = bad
    with pytest.raises(EchoMimicError, match=r"mask: the MASK holds NaN or infinite values.*Reference Preparation"):
        stub(mask=mask)
    ref = torch.rand(1, 64, 64, 3)
    ref[0, 5, 5, 1] = bad
    with pytest.raises(EchoMimicError, match=r"reference: the IMAGE holds NaN or infinite values.*connect a picture"):
        stub(reference=ref)
    ref2 = torch.rand(2, 64, 64, 3)
    ref2[1] = bad  # only the first picture is used: the rest is not read
    with pytest.raises(Placed):
        stub(reference=ref2)


# ------------------------------------------------------------------------------------------ host memory
def _little_ram(monkeypatch, available):
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available))


def test_the_estimate_is_float32_rgb_frames():
    host = sub("echomimic_lib.memory.host")
    assert host.frames_bytes(100, 64, 32) == 100 * 64 * 32 * 3 * 4


def test_the_sampler_refuses_a_video_over_the_available_host_memory_naming_the_to_file_node(stub, monkeypatch):
    decode = sub("echomimic_lib.pipeline.decode").host_bytes(None, 100, 64, 64, 8, sub("nodes.comfy_bridge").torch_device())
    need = 100 * 64 * 64 * 12 + decode  # the frames (4.9 MB) and the chunk being decoded (tests/test_sampler_host_memory.py)
    _little_ram(monkeypatch, need - 1)
    with pytest.raises(EchoMimicError, match=r"100 frames at 64x64 need about \d+\.\d MB of host memory.*"
                                             r"Use EchoMimic Sampler \(to file\)"):
        stub(frames=100)
    with pytest.raises(Placed):  # the 'to file' run keeps no frames: not refused
        stub(frames=100, frame_sink=lambda start, frames: None)
    _little_ram(monkeypatch, need)
    with pytest.raises(Placed):  # it fits
        stub(frames=100)


def test_without_psutil_the_memory_check_is_skipped(stub, monkeypatch):
    _little_ram(monkeypatch, 1)
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError
    assert sub("echomimic_lib.memory.host").available_bytes() is None
    with pytest.raises(Placed):
        stub(frames=100)


def test_the_v3_sampler_refuses_a_video_over_the_available_host_memory_before_loading(v3, no_load, monkeypatch):  # noqa: F811
    _little_ram(monkeypatch, 1000)
    with pytest.raises(EchoMimicError, match=r"frames at \d+x\d+ need about .*Use EchoMimic V3 Sampler \(to file\)"):
        _v3_sample(v3)


def test_the_v3_to_file_run_is_not_refused(v3, no_load, monkeypatch):  # noqa: F811
    _little_ram(monkeypatch, 1000)
    audio_in, _ = v3.nodes.EchoMimicV3AudioEncoder().execute(v3.handle, {"waveform": v3.wave, "sample_rate": 22050}, 5)
    with pytest.raises(AssertionError, match="the transformer was loaded"):  # past the check
        v3.nodes.EchoMimicV3Sampler().sample(v3.handle, audio_in, v3.positive, v3.clip, v3.vae, v3.image, 64, 1, 1.0, 0,
                                             "off", False, sink=lambda block: None)
