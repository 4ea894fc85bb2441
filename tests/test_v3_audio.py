"""EchoMimicV3 flash-pro audio path: frame rule, loudness, windows, wav2vec2 layer outputs at 25 fps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from echomimic_lib.audio.loudness import integrated_loudness, loudness_normalise
from echomimic_lib.audio.wav2vec import Wav2VecV3, frame_count, load_wav2vec, window_indices


def test_frame_count_rule():
    assert frame_count(1.18) == 29 and frame_count(0.9) == 21 and frame_count(0.8, cap=13) == 13
    assert frame_count(10.0) == 81 and frame_count(0.04) == 1 and frame_count(0.2) == 5
    with pytest.raises(ValueError, match="at least"):
        frame_count(0.01)


def test_window_indices_clamp_edges():
    idx = window_indices(4)
    assert idx.tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]


def test_loudness_normalisation_reaches_target_and_gates():
    t = np.arange(16000 * 2) / 16000
    tone = (0.05 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    before = integrated_loudness(tone)
    out = loudness_normalise(tone)
    assert out.dtype == np.float64 and abs(before + 23) > 3
    assert integrated_loudness(out) == pytest.approx(-23.0, abs=0.01)
    quiet = (1e-5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # under the -70 LUFS gate
    assert integrated_loudness(quiet) == float("-inf") and loudness_normalise(quiet) is quiet
    short = tone[:3000]  # under one 400 ms block: unchanged (the reference raises)
    assert loudness_normalise(short) is short


def _tiny_wav2vec(tmp_path, stable=False):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                         conv_dim=(8,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                         do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group")
    torch.manual_seed(0)
    Wav2Vec2Model(cfg).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(tmp_path)
    return load_wav2vec(tmp_path)


def test_layer_outputs_match_transformers_hidden_states(tmp_path):
    """With as many frames as CNN features the interpolation is the identity: our per-layer outputs
    must be transformers' own hidden_states[1:] (works on transformers 4.x and 5.x)."""
    enc = _tiny_wav2vec(tmp_path)  # base layout (post-layer-norm), as chinese-wav2vec2-base
    assert isinstance(enc, Wav2VecV3) and enc.extractor.do_normalize
    samples = np.random.default_rng(0).standard_normal(3200).astype(np.float32) * 0.1
    iv = enc.input_values(samples)
    n_cnn = enc.model.feature_extractor(iv).shape[-1]
    ours = enc.hidden_states(iv, n_cnn)
    with torch.no_grad():
        ref = enc.model(iv, output_hidden_states=True).hidden_states
    assert ref is not None and len(ref) == 4
    assert ours.shape == (n_cnn, 3, 16)
    torch.testing.assert_close(ours, torch.stack(ref[1:], dim=2)[0], atol=1e-5, rtol=1e-5)
    win = enc.windows(samples, 5)
    assert win.shape == (1, 5, 5, 3, 16)


def test_missing_wav2vec_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="chinese-wav2vec2-base"):
        load_wav2vec(tmp_path)
