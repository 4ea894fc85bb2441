"""v3_pipeline: the flash-pro pipeline end to end (size rule, audio windows, condition latents, audio CFG,
TeaCache official/off, Flow-UniPC, VAE decode, uint8 frames, colour transfer) against every recorded step."""
from __future__ import annotations

import numpy as np
from PIL import Image

from echomimic_lib.audio.wav2vec import audio_windows, load_wav2vec
from echomimic_lib.models.wan.vae import load_wan_vae
from echomimic_lib.pipeline.wan.color import color_transfer
from echomimic_lib.pipeline.wan.sampler import (V3Settings, clip_image_tensor, generate, resize_reference,
                                                sample_size)

from ._common import ParityCase, assert_close, assert_equal
from ._v3 import load_transformer, model_paths


def _u8_close(name, got, expected, max_levels, max_frac):
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    frac = float((diff > 0).mean())
    assert diff.max() <= max_levels and frac <= max_frac, f"{name}: max {diff.max()} levels, {frac:.4%} of values differ"


def run(case: ParityCase) -> None:
    st = case.settings
    inp = case.torch_tensors(st["inputs_file"])
    exp = case.torch_tensors("expected.safetensors")
    paths = model_paths(case)
    model, _ = load_transformer(case)
    vae = load_wan_vae(paths["vae"])
    tol = case.tolerance

    ref = Image.open(case.path(st["ref_image_file"])).convert("RGB")
    assert_equal("ref_image_u8", np.asarray(ref), inp["ref_image_u8"])
    h, w = sample_size(*ref.size, target=tuple(st["sample_size_arg"]))
    assert (h, w) == (st["height"], st["width"]), f"sample size {(h, w)} != {(st['height'], st['width'])}"
    ref_u8 = resize_reference(ref, h, w)
    assert_equal("ref_image_resized_u8", ref_u8, inp["ref_image_resized_u8"])
    assert_close("clip_encoder_input", clip_image_tensor(ref_u8), exp["clip_encoder_input"], 1e-7)

    enc = load_wav2vec(paths["wav2vec2"])
    raw = inp["waveform_s16"].numpy().astype(np.float32) / 32768.0
    windows, frames = audio_windows(enc, raw, st["audio"]["source_sample_rate"], cap=st["video_length_arg"])
    assert frames == st["num_frames"], f"{frames} frames from the audio, expected {st['num_frames']}"
    assert_close("audio_windows (from the WAV)", windows, inp["audio_windows"], 1e-4)

    tc = st.get("teacache") or {"enabled": False}
    settings = V3Settings(steps=st["num_inference_steps"], shift=st["shift"], audio_cfg=st["audio_guidance_scale"],
                          teacache="official" if tc["enabled"] else "off", teacache_threshold=tc.get("rel_l1_thresh", 0.1),
                          teacache_skip_start=tc.get("num_skip_start_steps", 5), color_transfer=True, seed=st["seed"])
    seen = {}
    res = generate(model, vae, ref_u8, inp["prompt_embeds"], inp["clip_features"], inp["audio_windows"], settings,
                   noise=inp["initial_noise"], trace=lambda k, v: seen.__setitem__(k, v))
    assert_equal("mask_latents", seen["y"][:, :4], exp["mask_latents"])
    assert_close("masked_video_latents", seen["y"][:, 4:], exp["masked_video_latents"], tol("masked_video_latents", 5e-5))
    for i in range(settings.steps):
        for kind in ("cond_pred", "uncond_pred", "guided_pred", "latents"):
            key = f"step{i}_{kind}"
            pattern = "stepI_latents" if kind == "latents" else ("stepI_guided_pred" if kind == "guided_pred" else "stepI_*_pred")
            assert_close(key, seen[key], exp[key], tol(pattern, 1e-4))
    assert_close("final_latents", res.latents, exp["final_latents"], tol("final_latents", 1e-4))
    assert_close("video", res.video, exp["video_u16"].double() / 65535.0, tol("video", 1e-4))
    ran = [e["computed"] for e in res.teacache_trace]
    if tc["enabled"]:
        obs = case.manifest.get("observed", {})
        want = obs.get("transformer_blocks_ran_per_call") or [e["transformer_blocks_ran"] for e in obs.get("teacache_trace", [])]
        assert want, "the manifest records no TeaCache decisions (observed.transformer_blocks_ran_per_call)"
        assert ran == want, f"TeaCache decisions {ran} != {want}"
    exp_u8 = exp["frames_u8"].numpy()
    plain = (res.video[0].permute(1, 2, 3, 0).numpy() * 255).astype(np.uint8)
    _u8_close("frames_u8", plain, exp_u8, 1, 255 * 2 * tol("video", 1e-4) + 1e-3)
    assert_equal("colour transfer of the expected frames", color_transfer(exp_u8), exp["frames_color_transfer_u8"])
    _u8_close("frames_color_transfer_u8 (end to end)", res.frames, exp["frames_color_transfer_u8"].numpy(), 8, 0.01)
