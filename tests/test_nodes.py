"""Every node called directly (ComfyUI stubbed by the bridge's stand-ins) on tiny random weights made with
``make_tiny(layout="comfyui")`` and the shared media: loader -> audio encoder -> (reference preparation,
landmark extractor, aligner, pose loader) -> sampler, for each mode; frame count follows the audio; Cancel
mid-sampling; and the bad inputs users meet, each with its message."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tests._pack import PACK, load_pack, sub  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ECHOMIMIC_SHARED_DIR", ROOT.parent / "shared")).resolve() / "data"
FPS = 24.0
SIZE = 64
FP8_MEAN_TOL, FP8_MAX_TOL = 0.08, 0.8  # frames in [0, 1]; measured 0.048 / 0.54 on the tiny random weights (README "Memory")






N = load_pack().NODE_CLASS_MAPPINGS
C = sub("nodes.comfy_bridge")
EchoMimicError = sub("echomimic_lib.errors").EchoMimicError
MissingWeightsError = sub("echomimic_lib.errors").MissingWeightsError


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_comfy_models):
    """ComfyUI's models/ with tiny weights for every version, the MediaPipe models (a copy of the session's
    ``tiny_comfy_models``: make_tiny(layout="comfyui") and the shared MediaPipe models) and 48 frames of pose 01."""
    root = tmp_path_factory.mktemp("comfy")
    shutil.copytree(tiny_comfy_models, root / "models")
    poses = root / "models" / "echomimic" / "poses" / "01"
    poses.mkdir(parents=True)
    for i in range(48):
        shutil.copy(DATA / "pose" / "01" / f"{i}.npy", poses)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(C, "MODELS_DIR", root / "models")
        mp.setattr(C, "INPUT_DIR", root / "input")
        yield root / "models"


def loader(version, variant="normal", **kw):
    args = dict(dtype="auto", attention="sdpa", keep_loaded=False, weights_folder="auto", vae="auto", auto_download=False)
    args.update(kw)
    return N["EchoMimicModelLoader"]().execute(version, variant, **args)[0]


@pytest.fixture(scope="module")
def v1(models):
    return loader("V1 audio")


@pytest.fixture(scope="module")
def v1_pose(models):
    return loader("V1 landmark")


@pytest.fixture(scope="module")
def v2(models):
    return loader("V2")


def audio(seconds: float, name: str = "echomimic_en.wav") -> dict:
    wav, sr = sub("echomimic_lib.io.audio_file").read_audio(DATA / "audio" / name)
    return {"waveform": torch.from_numpy(np.ascontiguousarray(wav[:, : int(seconds * sr)])).unsqueeze(0), "sample_rate": sr}


def image(name: str) -> torch.Tensor:
    import cv2

    bgr = cv2.imread(str(DATA / "images" / name))
    return torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).float().div(255).unsqueeze(0)


def encode(handle, seconds=0.5, fps=FPS):
    return N["EchoMimicAudioEncoder"]().execute(handle, audio(seconds), fps)


def sample(handle, reference, feats, steps=2, cfg=0.0, width=SIZE, height=SIZE, length=0, **cond):
    return N["EchoMimicSampler"]().execute(handle, reference, feats, 7, steps, cfg, width, height, length, 12, 3, **cond)


@pytest.fixture(scope="module")
def v1_reference(models):
    return N["EchoMimicReferencePrep"]().execute(image("portrait_a.png"), "V1 face crop + mask", SIZE, SIZE, "error", False)[:2]


@pytest.fixture(scope="module")
def driving(models):
    clip = sub("echomimic_lib.io.video_io").read_video(DATA / "video" / "driving_a.mp4", max_frames=5, with_audio=False)
    return torch.from_numpy(clip.frames).float().div(255), clip.fps


# ------------------------------------------------------------------------------------------ modes
def test_v1_audio_end_to_end_frame_count_follows_the_audio(v1, v1_reference):
    ref, mask = v1_reference
    assert ref.shape == (1, SIZE, SIZE, 3) and mask.shape == (1, SIZE, SIZE)
    assert 0.05 < float(mask.mean()) < 0.95  # a face region, not the whole frame
    counts = []
    for seconds in (0.5, 1.0):
        feats, passthrough, n = encode(v1, seconds)
        assert n == int(seconds * FPS) == feats.features.video_frame_count(FPS) and passthrough["waveform"].shape[-1] == int(seconds * passthrough["sample_rate"])
        frames, fps, cut = sample(v1, ref, feats, mask=mask)
        assert frames.shape == (n, SIZE, SIZE, 3) and frames.dtype == torch.float32
        assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0 and fps == FPS
        assert cut["waveform"].shape[-1] == min(passthrough["waveform"].shape[-1], math.ceil(n / FPS * cut["sample_rate"]))
        counts.append(n)
    assert counts[1] > counts[0] >= int(0.5 * FPS)
    frames, _, cut = sample(v1, ref, encode(v1, 1.0)[0], length=5, mask=mask)
    assert frames.shape[0] == 5 and cut["waveform"].shape[-1] == math.ceil(5 / FPS * cut["sample_rate"])


def test_v1_acc_uses_the_variant_defaults_and_reports_progress_per_step_and_window(models, v1_reference, monkeypatch):
    acc = loader("V1 audio", "acc")
    feats, _, n = encode(acc, 0.5)
    seen = []
    monkeypatch.setattr(C, "PROGRESS_HOOK", lambda value, total, preview: seen.append((value, total)))
    frames, _, _ = sample(acc, v1_reference[0], feats, steps=0, cfg=0.0, mask=v1_reference[1])
    windows = len(sub("echomimic_lib.pipeline").base_windows(n, 12, 3))
    assert frames.shape[0] == n
    assert seen[-1] == (6 * windows, 6 * windows) and len(seen) == 6 * windows  # acc default: 6 steps


def test_v1_landmarks_from_a_driving_video_then_aligned_with_selected_parts(v1_pose, driving):
    frames, fps = driving
    lm, preview = N["EchoMimicLandmarkExtractor"]().execute(frames, fps, "center square (V1)", "interpolate", 0, False)
    assert lm.pixels.shape == (5, 478, 2) and lm.coord_size == (512, 512) and preview.shape == (5, 256, 256, 3)
    portrait = image("portrait_a.png")
    aligned, drawings = N["EchoMimicPartAwareAligner"]().execute(lm, portrait, "reference-compatible",
                                                                  "eyes, brows, pupils, nose", "ping-pong", False)
    assert aligned.parts == frozenset({"eyes", "brows", "pupils", "nose"}) and aligned.sequence is None
    assert not np.allclose(aligned.pixels, lm.pixels)  # moved onto the portrait's face
    assert drawings.shape == (5, 256, 256, 3) and float(drawings.max()) > 0
    ref = N["EchoMimicReferencePrep"]().execute(portrait, "resize only", SIZE, SIZE, "error", False)[0]
    feats, _, n = encode(v1_pose, 0.5)
    assert n > len(lm.pixels)  # the 5 driving frames are ping-ponged to the audio length
    out, _, _ = sample(v1_pose, ref, feats, landmarks=aligned)
    assert out.shape == (n, SIZE, SIZE, 3)


def test_v2_half_body_with_a_pose_folder(v2):
    poses, preview = N["EchoMimicPoseSequenceLoader"]().execute("01", 24.0, "ping-pong", "none", "interpolate", False)
    assert len(poses.sequence) == 48 and preview.shape[1:] == (256, 256, 3)
    ref, mask = N["EchoMimicReferencePrep"]().execute(image("halfbody_0035.png"), "resize only", SIZE, SIZE, "error", False)[:2]
    assert float(mask.min()) == 1.0
    feats, _, n = encode(v2, 0.5)
    frames, _, _ = sample(v2, ref, feats, poses=poses)
    assert frames.shape == (n, SIZE, SIZE, 3)


def _fake_person(image_rgb):
    """A DWPose-like detection (one person, normalised to the image) that moves with the image brightness."""
    shift = float(image_rgb.mean()) / 255.0 * 0.05
    body = np.array([[0.5, 0.2], [0.5, 0.35], [0.35, 0.37], [0.3, 0.55], [0.3, 0.7], [0.65, 0.37], [0.7, 0.55],
                     [0.7, 0.7]] + [[-1.0, -1.0]] * 10)
    score = np.array([[0.9] * 8 + [0.0] * 10])
    hands = np.stack([np.column_stack([np.linspace(0.25, 0.35, 21), np.full(21, 0.75 + shift)]),
                      np.column_stack([np.linspace(0.65, 0.75, 21), np.full(21, 0.75 - shift)])])
    faces = np.column_stack([np.linspace(0.45, 0.55, 68), np.linspace(0.12, 0.28, 68)])[None]
    return {"bodies": {"candidate": body, "subset": np.where(score > 0.3, np.arange(18), -1.0), "score": score},
            "hands": hands, "hands_score": np.full((2, 21), 0.9), "faces": faces, "faces_score": np.full((1, 68), 0.9)}


def test_v2_half_body_with_poses_extracted_from_a_driving_video(v2, models, monkeypatch):
    detectors = sub("nodes.detectors")
    monkeypatch.setattr(detectors, "dwpose", lambda download=False: _fake_person)
    ref = N["EchoMimicReferencePrep"]().execute(image("halfbody_0035.png"), "V2 half-body crop", SIZE, SIZE, "error", False)[0]
    assert ref.shape == (1, SIZE, SIZE, 3)
    video = torch.rand(4, 96, 80, 3)
    poses, preview = N["EchoMimicPoseSequenceLoader"]().execute("none (extract from driving_frames)", 25.0, "loop",
                                                                 "fit to reference shoulders", "interpolate", False,
                                                                 driving_frames=video, reference=ref)
    assert len(poses.sequence) == 4 and poses.sequence.fps == 25.0 and poses.retime == "loop"
    assert tuple(poses.sequence.canvas_size) == (SIZE, SIZE)  # moved into the reference's canvas
    feats, _, n = encode(v2, 0.5)
    frames, _, _ = sample(v2, ref, feats, poses=poses)
    assert frames.shape == (n, SIZE, SIZE, 3)


# ------------------------------------------------------------------------------------------ cancel / cache
def test_cancel_from_the_progress_callback_stops_sampling_and_the_next_run_works(v1, v1_reference, monkeypatch):
    feats, _, n = encode(v1, 0.5)
    seen, emptied = [], []

    def hook(value, total, preview):
        seen.append(value)
        if value == 2:
            raise C.InterruptProcessingException()

    monkeypatch.setattr(C, "PROGRESS_HOOK", hook)
    monkeypatch.setattr(C, "soft_empty_cache", lambda: emptied.append(1))
    with pytest.raises(C.InterruptProcessingException):
        sample(v1, v1_reference[0], feats, steps=4, mask=v1_reference[1])
    assert seen == [1, 2] and emptied == [1]  # stopped at once, models released
    monkeypatch.setattr(C, "PROGRESS_HOOK", None)
    frames, _, _ = sample(v1, v1_reference[0], feats, mask=v1_reference[1])
    assert frames.shape[0] == n and torch.isfinite(frames).all()


# ------------------------------------------------------------------------------------------ model manager
@pytest.fixture
def manager(monkeypatch):
    """The bridge's stand-in for comfy.model_management, empty, with every load request's snapshot."""
    mm = C.StandInModelManager()
    snapshots = []
    load = mm.load_models_gpu

    def recording(patchers, memory_required=0):
        load(patchers, memory_required)
        snapshots.append(({type(m.model.model).__name__ for m in mm.current_loaded_models}, memory_required))

    mm.load_models_gpu = recording
    mm.snapshots = snapshots
    monkeypatch.setattr(C, "MODEL_MANAGER", mm)
    monkeypatch.setattr(C, "offload_frees_memory", lambda: True)  # as with a GPU (the stand-in's devices are both the CPU)
    return mm


def _loads(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Requested to load")]


def quick(handle, v1_reference, feats, seed=7):
    """One window, one step: what the memory tests need."""
    return N["EchoMimicSampler"]().execute(handle, v1_reference[0], feats, seed, 1, 0.0, 0, 0, 12, 12, 3, mask=v1_reference[1])[0]


@pytest.fixture(scope="module")
def v1_quick(v1, v1_reference):
    """The default path's video of the memory tests (fp32, whole networks)."""
    feats = encode(v1, 0.5)[0]
    return feats, quick(v1, v1_reference, feats)


def test_each_network_is_a_managed_model_loaded_only_for_its_stage(models, v1_reference, v1_quick, manager, caplog):
    handle = loader("V1 audio")
    assert set(handle.patchers) == {"reference", "denoiser", "cond_encoder", "vae", "audio_encoder"}
    assert all(p.model.net is m for p, m in zip(handle.patchers.values(), handle.models.modules().values()))
    caplog.set_level("INFO")
    feats, _, _ = encode(handle, 0.5)
    frames = quick(handle, v1_reference, feats)
    assert torch.allclose(frames, v1_quick[1], atol=1e-5)  # (decode chunks follow the stage budget: rounding only)
    stages = [loaded for loaded, _ in manager.snapshots]
    assert stages == [{"EchoMimicWhisper"}, {"EchoMimicVAE"}, {"EchoMimicReferenceUNet"},
                      {"EchoMimicDenoiser", "EchoMimicConditionEncoder"}, {"EchoMimicDenoiser", "EchoMimicConditionEncoder"},
                      {"EchoMimicVAE"}]  # whisper and the reference UNet are gone once their output exists
    assert all(required > 0 for _, required in manager.snapshots)  # an activation estimate with every request
    assert manager.current_loaded_models == []  # keep_loaded off: nothing stays
    assert _loads(caplog) == ["Requested to load EchoMimicWhisper", "Requested to load EchoMimicVAE",
                              "Requested to load EchoMimicReferenceUNet", "Requested to load EchoMimicDenoiser",
                              "Requested to load EchoMimicConditionEncoder", "Requested to load EchoMimicVAE"]


def test_keep_loaded_keeps_the_set_until_unload_models_and_the_next_run_loads_it_again(models, v1_reference, v1_quick,
                                                                                        manager, caplog, monkeypatch):
    handle = loader("V1 audio", keep_loaded=True)
    feats = v1_quick[0]
    caplog.set_level("INFO")
    quick(handle, v1_reference, feats)
    assert len(manager.current_loaded_models) == 4 and len(_loads(caplog)) == 4  # VAE, reference, denoiser, encoder
    caplog.clear()
    quick(handle, v1_reference, feats, seed=8)
    assert _loads(caplog) == []  # a new seed loads nothing
    C.unload_all_models()  # ComfyUI's "Unload Models" (POST /free {"unload_models": true})
    assert manager.current_loaded_models == []
    again = quick(handle, v1_reference, feats)  # (decode chunks differ with keep_loaded: float rounding only)
    assert torch.allclose(again, v1_quick[1], atol=1e-5) and len(_loads(caplog)) == 4  # loaded again
    placement = sub("nodes.loader").placement
    monkeypatch.setattr(C, "low_vram", lambda: True)  # --lowvram / --novram: never kept
    assert placement(handle).keep_loaded is False
    monkeypatch.setattr(C, "offload_frees_memory", lambda: False)  # --cpu: unloading would free nothing
    handle.keep_loaded = False
    assert placement(handle).keep_loaded is True


def test_low_vram_streams_the_denoiser_and_gives_the_same_video(models, v1_reference, v1_quick, manager):
    streamed = loader("V1 audio", low_vram=True)
    frames = quick(streamed, v1_reference, v1_quick[0])
    assert not any("EchoMimicDenoiser" in loaded for loaded, _ in manager.snapshots)  # never loaded whole
    slots = 2 * max(sum(t.numel() * t.element_size() for t in u.parameters()) for u in
                    sub("echomimic_lib.memory").stream_units(streamed.models.denoiser))
    with_encoder = [req for loaded, req in manager.snapshots if loaded == {"EchoMimicConditionEncoder"}]
    assert len(with_encoder) == 2 and all(r > slots for r in with_encoder)  # room asked for the streamed blocks too
    assert torch.allclose(frames, v1_quick[1], atol=1e-5)  # same weights, same kernels (decode chunks: rounding only)


def test_fp8_weights_change_the_video_within_the_stated_tolerance(models, v1_reference, v1_quick):
    fp8 = loader("V1 audio", fp8=True)
    den = fp8.models.denoiser
    assert den.down_blocks[0].attentions[0].proj_in.weight.dtype == torch.float8_e4m3fn and den.conv_in.weight.dtype == torch.float32
    diff = (quick(fp8, v1_reference, v1_quick[0]) - v1_quick[1]).abs()
    assert 0 < float(diff.mean()) < FP8_MEAN_TOL and float(diff.max()) < FP8_MAX_TOL, (float(diff.mean()), float(diff.max()))


def test_a_vae_from_models_vae_can_be_chosen(models):
    handle = loader("V1 audio", vae="echomimic_tiny_vae.safetensors")
    assert handle.key[6].endswith("vae/echomimic_tiny_vae.safetensors")


# ------------------------------------------------------------------------------------------ bad input
def test_missing_weights_list_each_file_where_looked_and_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "MODELS_DIR", tmp_path / "models")
    with pytest.raises(MissingWeightsError) as info:
        loader("V1 audio")
    msg = str(info.value)
    for name in ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "face_locator.pth", "whisper_tiny.pt", "sd-vae-ft-mse"):
        assert name in msg
    assert "looked in" in msg and str(tmp_path / "models" / "echomimic") in msg
    assert "huggingface.co/BadToBest/EchoMimic" in msg and "auto_download" in msg


def test_failed_download_still_lists_the_missing_files(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(C, "MODELS_DIR", tmp_path / "models")

    def offline(**kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(MissingWeightsError, match="(?s)reference_unet.pth.*network is unreachable"):
        loader("V2", auto_download=True)


def test_v2_model_given_v1_landmarks(v2):
    lm = sub("nodes.payloads").LandmarkTrack(np.zeros((3, 478, 2)), (512, 512), 24.0)
    feats, _, _ = encode(v2, 0.5)
    with pytest.raises(EchoMimicError, match="V2 half-body model was given V1 face landmarks on 'landmarks'.*Hand-Pose"):
        sample(v2, torch.rand(1, SIZE, SIZE, 3), feats, landmarks=lm)


def test_mask_from_another_image_size(v1, v1_reference):
    feats, _, _ = encode(v1, 0.5)
    with pytest.raises(EchoMimicError, match="face mask is 64x64 but the video is 72x72"):
        sample(v1, v1_reference[0], feats, width=72, height=72, mask=v1_reference[1])


def test_silent_audio(v1):
    silent = {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}
    with pytest.raises(EchoMimicError, match="audio is silent .*digital silence"):
        N["EchoMimicAudioEncoder"]().execute(v1, silent, FPS)


def test_missing_pose_folder(models):
    with pytest.raises(EchoMimicError, match="pose folder 'my_dance' not found \\(looked in .*poses"):
        N["EchoMimicPoseSequenceLoader"]().execute("my_dance", 24.0, "ping-pong", "none", "interpolate", False)


def test_width_and_height_must_be_multiples_of_8(v1, v1_reference):
    feats, _, _ = encode(v1, 0.5)
    with pytest.raises(EchoMimicError, match="multiples of 8 \\(got 100x64\\); try 96x64"):
        sample(v1, v1_reference[0], feats, width=100, height=64)
    with pytest.raises(EchoMimicError, match="multiples of 8"):
        N["EchoMimicReferencePrep"]().execute(image("portrait_a.png"), "resize only", 64, 60, "error", False)


def test_no_face_names_the_widget_value_as_the_list_shows_it(models):
    prep = N["EchoMimicReferencePrep"]()
    blank = torch.full((1, 96, 96, 3), 0.5)
    assert "whole image" in prep.INPUT_TYPES()["required"]["no_face"][0]
    with pytest.raises(EchoMimicError, match="set no_face to 'whole image'"):
        prep.execute(blank, "V1 face crop + mask", SIZE, SIZE, "error", False)
    image, mask = prep.execute(blank, "V1 face crop + mask", SIZE, SIZE, "whole image", False)[:2]
    assert image.shape == (1, SIZE, SIZE, 3) and float(mask.min()) == 1.0
