"""v3_audio_features: 16 kHz resampling, loudness, wav2vec2 at 25 fps, 5-frame windows, latent grouping and
projector tokens, for every sub-case. Stages after the resampler start from the fixture's waveform_16k."""
from __future__ import annotations

import torch

from echomimic_lib.audio.wav2vec import frame_count, load_wav2vec, prepare_samples, resample_16k, window_indices
from echomimic_lib.models.wan import group_windows

from ._common import ParityCase, assert_close, assert_equal
from ._v3 import load_transformer, model_paths


def run(case: ParityCase) -> None:
    st = case.settings
    enc = load_wav2vec(model_paths(case)["wav2vec2"])
    assert bool(enc.extractor.do_normalize) == bool(st["do_normalize"]), "do_normalize not read from the preprocessor config"
    model, _ = load_transformer(case)
    tol = case.tolerance
    assert st["sub_cases"], "no sub-cases"
    for name, sub in st["sub_cases"].items():
        inp = case.torch_tensors(f"inputs_{name}.safetensors")
        exp = case.torch_tensors(f"expected_{name}.safetensors")
        raw = inp["waveform_s16"].numpy().astype("float32") / 32768.0
        frames = frame_count(raw.shape[0] / sub["source_sample_rate"], st["video_length_cap"])
        assert frames == sub["num_frames"], f"{name}: {frames} frames, expected {sub['num_frames']}"
        assert_close(f"{name} waveform_16k", resample_16k(raw, sub["source_sample_rate"]), exp["waveform_16k"], tol("waveform_16k", 1e-6))
        wav = exp["waveform_16k"].numpy()
        from echomimic_lib.audio.loudness import loudness_normalise

        assert_close(f"{name} waveform_loudnorm", loudness_normalise(wav), exp["waveform_loudnorm"], tol("waveform_loudnorm", 1e-5))
        seen = {}
        windows = enc.windows(prepare_samples(wav, frames), frames, trace=lambda k, v: seen.__setitem__(k, v))
        for key in ("input_values", "cnn_features", "cnn_features_interpolated", "hidden_states"):
            assert_close(f"{name} {key}", seen[key], exp[key], tol(key, 1e-4))
        assert_equal(f"{name} window_indices", window_indices(frames), exp["window_indices"])
        assert_close(f"{name} audio_windows", windows, exp["audio_windows"], tol("audio_windows", 1e-4))
        first, later = group_windows(exp["audio_windows"])
        assert_close(f"{name} ai2v_first_frame", first, exp["ai2v_first_frame"], tol("ai2v_*", 1e-4))
        assert_close(f"{name} ai2v_latter_frames", later, exp["ai2v_latter_frames"], tol("ai2v_*", 1e-4))
        with torch.no_grad():
            tokens = model.audio_tokens(windows)
        assert_close(f"{name} audio_tokens", tokens, exp["audio_tokens"], tol("audio_tokens", 1e-4))
