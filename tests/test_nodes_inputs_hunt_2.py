"""More user mistakes at the nodes and the V3 job, each refused with an EchoMimicError naming the fix before any model
or library work: a reference the V3 size rule scales under 16 px (the original, specific reason reaches the user, not
"the image is too small" for a 100 px picture), V3 frame counts over the cap or beyond the audio, and silent speech at
EchoMimic Gestures from Audio (it made a meaningless pose sequence)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from echomimic_lib.errors import EchoMimicError as LibError
from tests._media import write_wav
from tests._pack import sub
from tests.test_nodes import FPS, N, EchoMimicError, audio, models  # noqa: F401
from tests.test_nodes_inputs_hunt import v3  # noqa: F401


# ------------------------------------------------------------------------------------------ V3 size rule (plan_v3)
def _v3_request(tmp_path, shape, size, length=9):
    import cv2

    from echomimic_lib.jobs.v3_plan import V3Request

    wav = write_wav(tmp_path / "speech.wav", 0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000))
    cv2.imwrite(str(tmp_path / "ref.png"), np.full(shape, 128, np.uint8))
    return V3Request(reference=str(tmp_path / "ref.png"), audio=str(wav), output=str(tmp_path / "o.mp4"),
                     models=str(tmp_path), size=size, length=length)


def test_v3_a_reference_scaled_under_16_px_says_so_and_names_the_target_size(tmp_path):
    """A 100x30 picture at a 16x16 target area scales to 29x8: was "100x30 px is too small; EchoMimicV3 needs at least
    16 px on each side ... give a larger image" (the picture is larger than that; the fix is a larger target)."""
    from echomimic_lib.jobs.v3_plan import plan_v3

    with pytest.raises(LibError) as err:
        plan_v3(_v3_request(tmp_path, (30, 100, 3), (16, 16)))
    text = str(err.value)
    assert "--reference" in text and "100x30" in text and "--width" in text and "--height" in text, text
    assert "16x16" in text and "give a larger image" not in text, text


def test_v3_size_rule_names_the_scaled_size():
    from echomimic_lib.pipeline.wan.sampler import sample_size

    with pytest.raises(LibError, match=r"100x30 .*too small.*29x8 px.*larger target size"):
        sample_size(100, 30, (16, 16))
    assert sample_size(120, 90, (64, 80)) == (48, 80)  # valid sizes: as before


# ------------------------------------------------------------------------------------------ V3 frame counts
def test_v3_audio_encoder_max_frames_over_the_cap_is_refused(v3):  # noqa: F811
    from echomimic_lib.jobs.speech_length import MAX_LENGTH

    encoder = v3.nodes.EchoMimicV3AudioEncoder()
    for bad in (MAX_LENGTH + 1, 10**12):  # a linked value: ComfyUI range-checks widgets only
        with pytest.raises(EchoMimicError, match=rf"max_frames {bad}: give a whole number, 1 or more, at most {MAX_LENGTH}"):
            encoder.execute(v3.handle, {"waveform": v3.wave, "sample_rate": 22050}, bad)
    _, n = encoder.execute(v3.handle, {"waveform": v3.wave, "sample_rate": 22050}, MAX_LENGTH)
    assert n == 25  # 1 s of speech: the frames follow the audio (4k+1)


def test_v3_length_beyond_the_audio_is_told(tmp_path, caplog):
    """--length 201 with 1 s of speech gave 25 frames without a word (V1/V2 warn)."""
    from echomimic_lib.jobs.v3_plan import plan_v3

    with caplog.at_level(logging.WARNING):
        plan = plan_v3(_v3_request(tmp_path, (64, 64, 3), (64, 64), length=201))
    assert plan.frames == 25 and "--length 201 is beyond the audio" in caplog.text and "25 frames" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert plan_v3(_v3_request(tmp_path, (64, 64, 3), (64, 64), length=21)).frames == 21
    assert "beyond the audio" not in caplog.text and "4k+1" not in caplog.text
    with caplog.at_level(logging.WARNING):  # under the audio but not 4k+1: rounded down, and said (was silent)
        assert plan_v3(_v3_request(tmp_path, (64, 64, 3), (64, 64), length=23)).frames == 21
    assert "--length 23: EchoMimicV3 renders 4k+1 frames" in caplog.text and "the video has 21" in caplog.text


# ------------------------------------------------------------------------------------------ Gestures: silent speech
def _gestures(**kw):
    args = dict(library="all pose folders", seed=0, expressiveness=1.0, fps=FPS, min_pause=0.5, align="none",
                auto_download=False)
    args.update(kw)
    return N["EchoMimicGesturesFromAudio"]().execute(**args)


@pytest.mark.parametrize("level", [0.0, 1e-5])
def test_gestures_refuse_silent_audio_before_reading_the_library(models, monkeypatch, level):  # noqa: F811
    gestures = sub("nodes.gestures")

    def no_library(*a, **k):
        raise AssertionError("the pose library was read for silent audio")

    monkeypatch.setattr(gestures, "load_library", no_library)
    silent = {"waveform": torch.full((1, 1, 32000), level), "sample_rate": 16000}
    with pytest.raises(EchoMimicError, match="the audio is silent.*audible speech"):
        _gestures(audio=silent)


def test_gestures_with_audible_audio_still_work(models):  # noqa: F811
    poses, _ = _gestures(audio=audio(1.0), fps=25.0, library="01")
    assert len(poses.sequence) == 25


# ------------------------------------------------------------------------------------------ V3 Sampler: linked values
def _v3_sample(v3, **kw):  # noqa: F811
    audio_in, _ = v3.nodes.EchoMimicV3AudioEncoder().execute(v3.handle, {"waveform": v3.wave, "sample_rate": 22050}, 5)
    args = dict(model=v3.handle, v3_audio=audio_in, positive=v3.positive, clip_vision_output=v3.clip, vae=v3.vae,
                image=v3.image, size=64, steps=1, audio_cfg=1.0, seed=0, teacache="off", color_transfer=False)
    args.update(kw)
    return v3.nodes.EchoMimicV3Sampler().execute(**args)


@pytest.fixture
def no_load(monkeypatch):
    """The transformer must not be loaded for a refused input."""
    C = sub("nodes.comfy_bridge")

    def refuse(*a, **k):
        raise AssertionError("the transformer was loaded for a bad input")

    monkeypatch.setattr(C, "load_models", refuse)


@pytest.mark.parametrize("seed", [2**64, -1, 1.5, float("nan"), True])
def test_v3_sampler_a_seed_out_of_range_is_refused_before_loading(v3, no_load, seed):  # noqa: F811
    """2^64 was "Overflow when unpacking long long" and 1.5 "manual_seed expected a long" after the model had loaded."""
    with pytest.raises(EchoMimicError, match=r"seed .*whole number from 0 to 2\^64-1"):
        _v3_sample(v3, seed=seed)


def test_v3_sampler_takes_every_seed_of_the_range_and_a_whole_float(v3):  # noqa: F811
    a = _v3_sample(v3, seed=3)[0]
    assert torch.equal(_v3_sample(v3, seed=3.0)[0], a)
    assert _v3_sample(v3, seed=2**64 - 1)[0].shape == a.shape


def test_v3_sampler_wrong_text_or_image_encoder_is_named(v3, no_load):  # noqa: F811
    """A CONDITIONING from another CLIP (e.g. SD1.5's 768 wide, not umT5's) and a CLIP vision output of another model
    were torch shape errors deep in the transformer ("mat1 and mat2 shapes cannot be multiplied")."""
    from types import SimpleNamespace

    from echomimic_lib.models.wan.tiny import CLIP_DIM, TEXT_DIM

    with pytest.raises(EchoMimicError, match=rf"positive: .*width 7.*{TEXT_DIM}.*type wan"):
        _v3_sample(v3, positive=[[torch.randn(1, 77, 7), {}]])
    with pytest.raises(EchoMimicError, match=rf"clip_vision_output: .*width 9.*{CLIP_DIM}.*clip_vision_h"):
        _v3_sample(v3, clip_vision_output=SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, 9)))


@pytest.mark.parametrize("channels, dim", [(4, 2), (16, 2), (48, 3)])
def test_v3_sampler_a_vae_that_is_not_wan_2_1_is_named(v3, no_load, channels, dim):  # noqa: F811
    """ComfyUI's VAE says its latent layout (an SD / Flux / Wan 2.2 VAE): refused before the transformer loads."""
    class OtherVAE:
        latent_channels, latent_dim = channels, dim

    with pytest.raises(EchoMimicError, match=r"vae: .*not the Wan 2\.1 VAE.*wan_2\.1_vae"):
        _v3_sample(v3, vae=OtherVAE())


# ------------------------------------------------------------------------------------------ Gestures: linked numbers
@pytest.mark.parametrize("kw, message", [
    (dict(min_pause=float("nan")), r"min_pause nan: .*positive number of seconds"),
    (dict(min_pause=0.0), r"min_pause 0.0: .*positive number of seconds"),
    (dict(min_pause=-1.0), r"min_pause -1.0: .*positive number of seconds"),
    (dict(fps=0.0), r"fps 0.0: the frame rate must be a number between 1 and 120"),  # the sampler's rule
    (dict(fps=float("inf")), r"fps inf: the frame rate must be a number between 1 and 120"),
])
def test_gestures_bad_linked_numbers_are_refused_before_reading_the_library(models, monkeypatch, kw, message):  # noqa: F811
    """min_pause NaN, 0 or negative was taken (NaN: no pause ever, hands never rest); fps 0 was refused only after the
    pose library had been read and indexed."""
    gestures = sub("nodes.gestures")

    def no_library(*a, **k):
        raise AssertionError("the pose library was read for a bad input")

    monkeypatch.setattr(gestures, "load_library", no_library)
    with pytest.raises(EchoMimicError, match=message):
        _gestures(audio=audio(1.0), **kw)


# ------------------------------------------------------------------------------------------ V1/V2 Sampler: steps
@pytest.fixture(scope="module")
def v1_run(models):  # noqa: F811
    from tests.test_nodes import encode, loader

    handle = loader("V1 audio")
    ref = N["EchoMimicReferencePrep"]().execute(torch.rand(1, 64, 64, 3), "resize only", 64, 64, "error", False)[0]
    return handle, ref, encode(handle, 0.5)[0]


def _v1_sample(v1_run, steps):
    handle, ref, feats = v1_run
    return N["EchoMimicSampler"]().execute(handle, ref, feats, 7, steps, 0.0, 64, 64, 2, 12, 3)


def test_sampler_steps_not_whole_is_refused_and_a_whole_float_works(v1_run):
    """A linked 2.5 steps was an IndexError deep in the DDIM scheduler."""
    with pytest.raises(EchoMimicError, match=r"steps 2\.5: give a whole number of steps"):
        _v1_sample(v1_run, 2.5)
    assert torch.equal(_v1_sample(v1_run, 2.0)[0], _v1_sample(v1_run, 2)[0])


def test_sampler_length_beyond_the_audio_is_told(v1_run, caplog):
    """length 100 with 12 frames of speech gave 12 frames without a word (the command line warns)."""
    handle, ref, feats = v1_run
    with caplog.at_level(logging.WARNING):
        frames = N["EchoMimicSampler"]().execute(handle, ref, feats, 7, 1, 0.0, 64, 64, 100, 12, 3)[0]
    assert len(frames) == feats.frame_count == 12 and "length 100 is beyond the audio" in caplog.text
