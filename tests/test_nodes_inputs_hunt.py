"""What other ComfyUI nodes really hand the EchoMimic nodes, and what broke: an IMAGE with no pixels (a crop of
width 0), the V3 Audio Encoder's AUDIO in the shapes and states Load Audio and audio nodes give ([C, T], batched,
silent, non-finite, 0 Hz, shorter than a frame), the V3 Sampler's linked values (ComfyUI range-checks widgets only),
Cancel in the middle of a V3 run, and the Sampler's decode on the CPU with 8-frame windows (the same video as the
library without a placement, as ``echomimic animate`` renders on the CPU). Each bad input gets an EchoMimicError
naming the fix before a model is loaded; valid inputs give what they gave before."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tests._pack import sub
from tests.test_nodes import SIZE, C, EchoMimicError, N, encode, image, models, v1, v1_reference  # noqa: F401


# ------------------------------------------------------------------------------------------ IMAGE
@pytest.mark.parametrize("shape", [(1, 0, 64, 3), (1, 64, 0, 3), (2, 0, 0, 4)])
def test_an_image_without_pixels_is_refused_with_the_fix(shape):
    payloads = sub("nodes.payloads")
    with pytest.raises(EchoMimicError, match="no pixels.*not empty"):
        payloads.image_batch(torch.rand(shape), "image")
    with pytest.raises(EchoMimicError, match="no pixels"):  # was a ZeroDivisionError in the stretch warning
        N["EchoMimicReferencePrep"]().execute(torch.rand(shape), "resize only", SIZE, SIZE, "error", False)


def test_image_conversion_of_valid_inputs_is_unchanged():
    payloads = sub("nodes.payloads")
    img = torch.rand(2, 17, 33, 4, dtype=torch.float64) * 1.2 - 0.1  # RGBA, out of [0, 1], fp64
    expect = (img[..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(payloads.image_batch(img.transpose(1, 2).transpose(1, 2)), expect)


# ------------------------------------------------------------------------------------------ V3
@pytest.fixture
def v3(tmp_path, monkeypatch):
    from echomimic_lib.models.wan.tiny import CLIP_DIM, TEXT_DIM, write_tiny_v3
    from echomimic_lib.models.wan.vae import DiffusersPixelVAE, load_wan_vae

    monkeypatch.setattr(C, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(C, "MODEL_MANAGER", C.StandInModelManager())
    folder = write_tiny_v3(tmp_path / "models" / "echomimic" / "v3-flash")
    nodes = sub("nodes.v3")
    (handle,) = nodes.EchoMimicV3Loader().execute("v3-flash", "fp32")
    g = torch.Generator().manual_seed(0)
    positive = [[torch.cat([torch.randn(1, 6, TEXT_DIM, generator=g), torch.zeros(1, 506, TEXT_DIM)], 1), {}]]
    clip = SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, CLIP_DIM, generator=g))
    wave = torch.randn(1, 1, 22050, generator=g) * 0.1
    return SimpleNamespace(nodes=nodes, handle=handle, positive=positive, clip=clip, wave=wave,
                           vae=DiffusersPixelVAE(load_wan_vae(folder / "vae")), image=torch.rand(1, 40, 56, 3, generator=g))


def _v3_samples_before(audio, max_frames):
    """What the V3 Audio Encoder computed before (first clip of the batch, channel mean in torch float32)."""
    from echomimic_lib.audio.wav2vec import frame_count, prepare_samples, resample_16k

    mono = audio["waveform"][0].float().mean(0).numpy()
    rate = int(audio["sample_rate"])
    frames = frame_count(mono.shape[0] / rate, max_frames)
    return prepare_samples(resample_16k(mono, rate), frames), frames


def test_v3_audio_encoder_takes_every_waveform_shape_and_keeps_its_output(v3):
    encoder = v3.nodes.EchoMimicV3AudioEncoder()
    stereo = torch.cat([v3.wave, v3.wave.flip(-1) * 0.5], 1)
    for wave, rate in ((v3.wave, 22050), (stereo, 22050), (stereo.double(), 44100), (v3.wave.half(), 16000)):
        audio = {"waveform": wave, "sample_rate": rate}
        out, n = encoder.execute(v3.handle, audio, 9)
        before, frames = _v3_samples_before(audio, 9)
        assert n == frames == out.frames and np.array_equal(out.samples, before) and out.audio is audio
        for squeezed in (wave[0], wave[0, 0]) if wave.shape[1] == 1 else (wave[0],):  # [C, T], [T]: an IndexError before
            again, m = encoder.execute(v3.handle, {"waveform": squeezed, "sample_rate": rate}, 9)
            assert m == n and np.array_equal(again.samples, out.samples)
    same, m = encoder.execute(v3.handle, {"waveform": v3.wave, "sample_rate": 22050}, 9.0)  # a linked float from a math node
    assert m == 9 and isinstance(m, int)
    for bad in (9.5, float("nan"), True):
        with pytest.raises(EchoMimicError, match="give a whole number"):
            encoder.execute(v3.handle, {"waveform": v3.wave, "sample_rate": 22050}, bad)


@pytest.mark.parametrize("case, match", [
    ("batch", "batch of 2 clips"), ("silent", "silent.*audible speech"), ("nan", "NaN/Inf samples"),
    ("rate0", "sample rate must be a positive"), ("short", "at least 0.04 s.*longer speech"),
    ("frames0", "max_frames 0: give a whole number, 1 or more")])
def test_v3_audio_encoder_refuses_bad_audio_with_the_fix(v3, case, match):
    wave, rate, cap = v3.wave, 22050, 9
    if case == "batch":  # was: the first clip used silently
        wave = wave.expand(2, 1, -1)
    elif case == "silent":  # was: encoded, a still mouth rendered (the V1 encoder and the command line refuse it)
        wave = torch.zeros_like(wave)
    elif case == "nan":  # was: NaN features, a video of noise
        wave = wave.clone().index_fill_(2, torch.tensor([7]), float("nan"))
    elif case == "rate0":  # was: ZeroDivisionError
        rate = 0
    elif case == "short":  # was: a bare ValueError
        wave = wave[..., :100]
    else:  # a linked 0 (ComfyUI range-checks the widget only): was "the audio is 1.000 s long: at least 0.04 s ..."
        cap = 0
    with pytest.raises(EchoMimicError, match=match):
        v3.nodes.EchoMimicV3AudioEncoder().execute(v3.handle, {"waveform": wave, "sample_rate": rate}, cap)


def _v3_sample(v3, v3_audio, image=None, size=64, steps=1, teacache="official", **kw):
    return v3.nodes.EchoMimicV3Sampler().execute(v3.handle, v3_audio, v3.positive, v3.clip, v3.vae,
                                                 v3.image if image is None else image, size, steps, 3.0, 1, teacache,
                                                 True, **kw)


@pytest.mark.parametrize("change, match", [
    ({"size": 0}, "size 0: .*at least 16 px"), ({"size": 8}, "size 8: .*at least 16 px"),
    ({"steps": 0}, "steps 0: give 1"), ({"teacache": "fast"}, r"teacache: 'fast' is not one of its choices \(official, off\)"),
    ({"long_mode": "loop"}, r"long_mode: 'loop' is not one of its choices \(reanchor, continue\)"),
    ({"image": torch.rand(1, 2, 300, 3)}, "300x2 is too small.*larger picture")])
def test_v3_sampler_refuses_linked_values_before_the_transformer_loads(v3, change, match):
    v3_audio, _ = v3.nodes.EchoMimicV3AudioEncoder().execute(v3.handle, {"waveform": v3.wave, "sample_rate": 22050}, 5)
    with pytest.raises(EchoMimicError, match=match):  # was: ZeroDivisionError, or a ValueError after the load
        _v3_sample(v3, v3_audio, **change)
    assert not C.is_loaded(v3.handle.patcher)


def test_v3_sampler_after_cancel_gives_the_same_video(v3, monkeypatch):
    v3_audio, _ = v3.nodes.EchoMimicV3AudioEncoder().execute(v3.handle, {"waveform": v3.wave, "sample_rate": 22050}, 5)
    first = _v3_sample(v3, v3_audio, steps=3, teacache="off")[0]

    def cancel(value, total, preview):
        if value == 2:
            raise C.InterruptProcessingException()

    monkeypatch.setattr(C, "PROGRESS_HOOK", cancel)
    with pytest.raises(C.InterruptProcessingException):
        _v3_sample(v3, v3_audio, steps=3, teacache="off")
    monkeypatch.setattr(C, "PROGRESS_HOOK", None)
    assert torch.equal(_v3_sample(v3, v3_audio, steps=3, teacache="off")[0], first)


# ------------------------------------------------------------------------------------------ decode budget
def test_sampler_with_8_frame_windows_on_the_cpu_is_the_video_without_a_placement(v1, v1_reference):
    """The node's placement gave the decode what denoising used, less than one 64-px frame of the tiny VAE with
    8-frame windows: it decoded in tiles (max 0.77 off the untiled frames). On the CPU the decode is now the one
    ``echomimic animate`` runs there (no placement, never tiled)."""
    P = sub("echomimic_lib.pipeline")
    ref, mask = v1_reference
    feats = encode(v1, 0.5)[0]
    node = N["EchoMimicSampler"]().execute(v1, ref, feats, 7, 1, 0.0, SIZE, SIZE, 10, 8, 2, mask=mask)[0]
    settings = P.settings_for("v1-audio", "normal", width=SIZE, height=SIZE, seed=7, steps=1, cfg=None, fps=feats.fps,
                              num_frames=10, context_frames=8, context_overlap=2)
    cli = P.Sampler(v1.models, None)(sub("nodes.payloads").first_image(ref), feats.features, P.MaskCondition(mask[0]),
                                     settings).frames
    assert node.shape == cli.shape == (10, SIZE, SIZE, 3) and torch.equal(node, cli)
    place = sub("nodes.loader").placement(v1, settings)
    per_frame = sub("echomimic_lib.memory.estimate").decode_frame_bytes(v1.models.vae, SIZE, SIZE)
    assert place._below_denoise_peak() < per_frame and place.decode_budget() is None  # what tiled before


class _Weights(torch.nn.Module):
    def __init__(self, numel: int, dtype=torch.float16, config=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.empty(numel, dtype=dtype, device="meta"), requires_grad=False)
        self.config, self.dtype = config, dtype


@pytest.mark.parametrize("size, context, cfg, keep", [(512, 12, 2.5, False), (768, 12, 2.5, False), (512, 4, 1.0, True)])
def test_decode_budget_on_a_gpu_is_unchanged_for_full_size_shapes(size, context, cfg, keep):
    """Full-size SD1.5 shapes (weights on the meta device): on a CUDA device the budget is what the denoising stage
    used beyond the VAE's weights, as before; a keep_loaded acc run with 4-frame windows still tiles there."""
    from echomimic_lib.config import SD15
    from echomimic_lib.memory import Placement, estimate
    from echomimic_lib.pipeline.decode import plan_chunk

    vae = _Weights(83_653_863, config=SimpleNamespace(block_out_channels=[128, 256, 512, 512]))
    den = _Weights(1_250_000_000)
    models = SimpleNamespace(config=SD15, dtype=torch.float16, vae=vae, denoiser=den,
                             modules=lambda: {"vae": vae, "denoiser": den})
    settings = sub("echomimic_lib.pipeline").settings_for("v1-audio", "normal", width=size, height=size, cfg=cfg,
                                                          num_frames=120, context_frames=context)
    expect = estimate.stage_bytes("denoise", models, settings) + (0 if keep else estimate.weight_bytes(den)) \
        - estimate.weight_bytes(vae)
    gpu = Placement(models, "cuda", SimpleNamespace(), keep_loaded=keep, settings=settings)
    cpu = Placement(models, "cpu", SimpleNamespace(), keep_loaded=keep, settings=settings)
    assert gpu.decode_budget() == expect and cpu.decode_budget() is None
    assert gpu._stage_bytes("decode") == cpu._stage_bytes("decode")  # the room asked of ComfyUI: as before
    per_frame = estimate.decode_frame_bytes(vae, size, size)
    assert plan_chunk(vae, size, size, 8, gpu.decode_budget())[1] == (expect < per_frame)
    assert (expect < per_frame) == keep  # the small-window keep_loaded case is the one that tiles


def test_v3_sampler_to_file_refuses_a_linked_size_before_any_file_or_load(v3, tmp_path, monkeypatch):
    monkeypatch.setattr(C, "OUTPUT_DIR", tmp_path / "out")
    v3_audio, _ = v3.nodes.EchoMimicV3AudioEncoder().execute(v3.handle, {"waveform": v3.wave, "sample_rate": 22050}, 5)
    node = sub("nodes.to_file").EchoMimicV3SamplerToFile()
    with pytest.raises(EchoMimicError, match="size 0: .*at least 16 px"):  # was: ZeroDivisionError
        node.execute(v3.handle, v3_audio, v3.positive, v3.clip, v3.vae, v3.image, 0, 1, 3.0, 1, "official", True, "v3/x")
    assert not C.is_loaded(v3.handle.patcher) and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ AUDIO out
def test_an_audio_of_channels_by_samples_is_muxed_whole_and_handed_on_as_comfyui_audio(tmp_path, monkeypatch):
    """[C, T] and [T] waveforms (the encoders take them): the mp4 got the first channel only, or one sample of a [T]
    clip; the AUDIO output was [C, T], which core's Create Video does not take."""
    to_file, payloads = sub("nodes.to_file"), sub("nodes.payloads")
    monkeypatch.setattr(C, "OUTPUT_DIR", tmp_path)
    stereo = torch.rand(2, 4800) - 0.5
    for wave in (stereo[None], stereo, stereo[0]):
        audio = {"waveform": wave, "sample_rate": 48000}
        written = to_file.VideoFile("x/clip", 64, 64, 24.0, audio).writer.audio
        channels = 2 if wave.dim() > 1 else 1
        assert written.shape == (channels, 4800) and np.array_equal(written, stereo[:channels].numpy())
        cut = payloads.trim_audio(audio, 1, 24.0)["waveform"]  # one frame: 2000 samples
        assert cut.shape == (1, channels, 2000) and torch.equal(cut.reshape(-1, 2000)[0], stereo[0, :2000])
    same = {"waveform": stereo[None], "sample_rate": 48000}
    assert payloads.trim_audio(same, 12, 24.0)["waveform"].data_ptr() == stereo.data_ptr()  # [B, C, T]: a view, as before


# ------------------------------------------------------------------------------------------ linked numbers
@pytest.mark.parametrize("fps", [0.0, -24.0, float("nan"), float("inf")])
def test_a_linked_frame_rate_that_is_no_frame_rate_is_refused_before_any_work(fps):
    """Landmark-Only Driving: was a ZeroDivisionError (0) or "cannot convert float NaN to integer"; Paste Back passed
    the NaN on to Create Video; the Landmark Extractor and Face Track timed the sequence as if at the video's rate."""
    lm = sub("nodes.payloads").LandmarkTrack(np.zeros((5, 478, 2), np.float32), (64, 64), 24.0)
    with pytest.raises(EchoMimicError, match="the frame rate must be a number between 1 and 120"):  # the sampler's rule
        N["EchoMimicLandmarkOnlyAudio"]().execute(lm, fps)
    with pytest.raises(EchoMimicError, match="the frame rate must be a number between 1 and 240"):
        N["EchoMimicLandmarkExtractor"]().execute(torch.rand(2, 64, 64, 3), fps, "full frame", "interpolate", 0, False)
    crop = sub("echomimic_lib.frames.crop").CropGeometry
    with pytest.raises(EchoMimicError, match="the frame rate must be a number between 1 and 240"):
        sub("nodes.composite").paste(torch.rand(2, 64, 64, 3), object.__new__(crop), torch.rand(1, 80, 80, 3), fps,
                                     "auto", 16, 0.1, "off")
    for good in (24.0, 240.0, 29.97):  # a 240 fps video's rate, linked, passes as before
        assert sub("nodes.base").check_fps(good) == good


@pytest.mark.parametrize("feather, dilation", [(16, float("nan")), (float("nan"), 0.1), (16, float("inf"))])
def test_paste_back_refuses_a_non_finite_feather_or_dilation_before_the_first_frame(feather, dilation):
    portrait = image("portrait_a.png")
    crop = sub("echomimic_lib.frames.reference").prepare_reference(
        (portrait[0].numpy() * 255).astype(np.uint8), "resize", SIZE, SIZE).crop
    with pytest.raises(EchoMimicError, match="must be >= 0"):  # was: "cannot convert float NaN to integer" mid-paste
        N["EchoMimicPasteBack"]().execute(torch.rand(2, SIZE, SIZE, 3), crop, portrait, 24.0, "auto", feather, dilation,
                                          "off")


def test_a_seed_over_2_to_the_64_is_refused_before_the_models_load(v1, v1_reference, monkeypatch):
    feats = encode(v1, 0.5)[0]
    loads = []
    monkeypatch.setattr(C, "load_models", lambda patchers, memory_required=0: loads.append(patchers))
    with pytest.raises(EchoMimicError, match="seed 18446744073709551616: use a whole number from 0 to 2"):
        N["EchoMimicSampler"]().execute(v1, v1_reference[0], feats, 2**64, 1, 0.0, SIZE, SIZE, 3, 12, 3,
                                        mask=v1_reference[1])  # was: "Overflow when unpacking long long" after loading
    assert loads == []
