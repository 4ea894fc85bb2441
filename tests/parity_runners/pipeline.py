"""pipeline: full sampling runs (V1 audio, acc, V1 landmarks, V2) against the reference sampler.

Models come from the fixture's official-format files; inputs (reference image, condition, whisper
features) from the case; every setting from the manifest. Intermediates are checked too: reference
latents, context windows, first-step UNet calls, per-step guided predictions and latents."""
from __future__ import annotations

import torch

from echomimic_lib.audio import AudioFeatures
from echomimic_lib.model_set import EchoMimicModels, load_cond_encoder, load_denoiser, load_reference, load_vae
from echomimic_lib.modes import WEIGHT_SETS
from echomimic_lib.pipeline import MaskCondition, SampleSettings, Sampler, frames_condition, initial_noise

from ._common import ParityCase, assert_close, assert_equal
from .unet_forward import fixture_config


def _tol(case, key, default):
    return case.tolerance(key, default)


def run(case: ParityCase, device: str = "cpu", formats=(".pth",)) -> None:
    """``device``: where the networks run (``cuda`` for the GPU check, TF32 off); ``formats``: the weight files
    (the first of them is used)."""
    st = case.settings
    ext = formats[0]
    md = case.models_dir
    cfg = fixture_config(md)
    inp = case.torch_tensors("inputs.safetensors")
    exp = case.torch_tensors("expected.safetensors")
    audio_t = case.torch_tensors(st["audio_file"])
    cond_u8 = inp["cond_u8"]
    stem = st["cond_encoder"]
    models = EchoMimicModels(
        config=cfg, weight_set=WEIGHT_SETS["v1_audio"], variant="acc" if st.get("acc_pipeline") else "normal",
        reference=load_reference(md / f"reference_unet{ext}", cfg, device),
        denoiser=load_denoiser(md / f"denoising_unet{ext}", md / f"motion_module{ext}", cfg, device),
        cond_encoder=load_cond_encoder(md / f"{stem}{ext}", cfg, channels=int(cond_u8.shape[1]), device=device),
        vae=load_vae(md / "vae", device),
    )
    # audio: the reference's per-frame chunks are whisper_features[audio_chunk_rows]
    fps = st["fps"]
    feats = AudioFeatures(audio_t["whisper_features"].float(), int(audio_t["waveform_16k"].shape[0]))
    rows = audio_t["audio_chunk_rows"]
    assert_equal("audio chunk rows", feats.chunk_rows(fps, 0, rows.shape[0]), rows)

    h, w, f = st["height"], st["width"], st["frames_requested"]
    noise = initial_noise(st["seed"], st["frames_generated"], h, w, st["clamp_initial_noise"])
    assert_equal("initial latents (seeded draw + clamp)", noise, inp["initial_latents"])

    if st.get("cond_is_single_frame"):
        condition = MaskCondition(cond_u8[0, 0, 0])
    else:
        condition = frames_condition(cond_u8[0].permute(1, 2, 3, 0).numpy())
    settings = SampleSettings(
        width=w, height=h, steps=st["num_inference_steps"], cfg=st["guidance_scale"], seed=st["seed"], fps=fps, num_frames=f,
        context_frames=st["context_frames"], context_overlap=st["context_overlap"], window_shift=st["window_shift_per_step"],
        clamp_noise=st["clamp_initial_noise"], scheduler=dict(st.get("scheduler_config", {})), decode_batch=4,
    )
    seen: dict = {"unet": []}

    def trace(name, value):
        seen.setdefault(name, value) if name != "unet_call" else seen["unet"].append(value)

    windows_seen = []
    sampler = Sampler(models)
    from echomimic_lib.pipeline import context as ctx

    for i, expected_windows in enumerate(case.manifest.get("context_windows", [])):
        got = ctx.step_windows(st["frames_generated"], i, st["context_frames"], st["context_overlap"], st["window_shift_per_step"])
        windows_seen.append(got)
        assert got == expected_windows, f"context windows of step {i}: {got} != {expected_windows}"

    result = sampler(inp["ref_image_u8"].numpy(), feats, condition, settings, trace=trace)
    assert result.num_frames == st["frames_generated"]
    assert_close("ref_latents", seen["ref_latents"], exp["ref_latents"], _tol(case, "ref_latents", 1e-4))
    for j, pred in enumerate(seen["unet"]):
        key = f"unet_call{j:02d}_pred"
        if key in exp:
            assert_close(key, pred, exp[key], _tol(case, "unet_callJJ_pred", 3e-4))
    n_calls = sum(1 for k in exp if k.startswith("unet_call"))
    assert len(seen["unet"]) >= n_calls, f"expected {n_calls} first-step UNet calls, ran {len(seen['unet'])}"
    for i in range(st["num_inference_steps"]):
        v, lat = seen[f"step{i}"]
        if f"step{i}_guided_v" in exp:
            assert_close(f"step{i}_guided_v", v, exp[f"step{i}_guided_v"], _tol(case, "stepI_guided_v", 1e-3))
        if f"step{i}_latents_out" in exp:
            assert_close(f"step{i}_latents_out", lat, exp[f"step{i}_latents_out"], _tol(case, "stepI_latents_out", 1e-3))
    assert_close("final_latents", result.latents, exp["final_latents"], _tol(case, "final_latents", 1e-3))
    video = exp["video_u16"].to(torch.float64) / 65535.0
    got = result.frames.permute(3, 0, 1, 2).unsqueeze(0)
    assert_close("video", got, video, _tol(case, "video", 1e-3))
