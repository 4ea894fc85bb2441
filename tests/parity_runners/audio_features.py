"""Parity runner for fixture kind ``audio_features``: log-mel, stacked whisper states, per-frame chunks.

Everything (clips, segments, row counts, fps values, saved rows and frames, tolerances, model file) is
read from the manifest and the tensor names, so the same runner works on any fixture set.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from echomimic_lib.audio import encode_audio, load_whisper_encoder, log_mel_spectrogram, segment_bounds
from echomimic_lib.audio.waveform import load_waveform_16k
from tests.parity_runners._common import ParityCase, assert_close, assert_equal


def _model_path(case: ParityCase) -> Path:
    declared = case.settings.get("model") or case.manifest.get("model") or ""
    rel = str(declared).split()[0] if str(declared).strip() else "whisper_tiny_encoder.pt"
    for candidate in (case.dir / rel, case.root / rel, case.models_dir / Path(rel).name):
        if candidate.is_file():
            return candidate.resolve()
    raise AssertionError(f"{case.name}: whisper checkpoint '{rel}' not found (looked in {case.dir}, {case.models_dir})")


def _input_file(case: ParityCase, name: str) -> str:
    files = case.manifest.get("files", {})
    for fname in files:
        if Path(fname).stem == name:
            return fname
    raise AssertionError(f"{case.name}: no tensor file for input '{name}' in manifest.files ({list(files)})")


def _waveform(tensors: dict, info: dict):
    keys = [k for k in tensors if k.startswith("waveform")]
    assert keys, f"no waveform tensor among {list(tensors)}"
    wav = tensors[keys[0]]
    rate = int(info.get("sample_rate", 16000))
    return torch.from_numpy(np.ascontiguousarray(wav)), rate


def _check_clip(case: ParityCase, name: str, info: dict, encoder, tol_mel: float, tol_feat: float) -> None:
    tensors = case.tensors(_input_file(case, name))
    wav, rate = _waveform(tensors, info)
    if "num_samples" in info:
        assert wav.shape[-1] == info["num_samples"], f"{name}: waveform has {wav.shape[-1]} samples, manifest says {info['num_samples']}"

    # 1. log-mel of the whole clip
    mel = log_mel_spectrogram(load_waveform_16k(wav, rate))
    if "log_mel" in tensors:
        assert_close(f"{name}.log_mel", mel, tensors["log_mel"], tol_mel)
    if "segments" in info:
        got = segment_bounds(mel.shape[1])
        want = [(s["mel_start"], s["mel_end"]) for s in info["segments"]]
        assert got == want, f"{name}: segments {got} != manifest {want}"
        assert [(e - s) // 2 for s, e in got] == [s["rows_kept"] for s in info["segments"]], f"{name}: rows kept per segment"

    # 2. stacked features (N, 5, 384), through the public entry point
    feats = encode_audio(wav, encoder, rate, device="cpu", dtype=torch.float32)
    rows = feats.rows
    if "num_feature_rows" in info:
        assert feats.num_rows == info["num_feature_rows"], f"{name}: {feats.num_rows} feature rows, expected {info['num_feature_rows']}"
    for key, value in tensors.items():
        m = re.fullmatch(r"features_rows_(\d+)_(\d+)", key)
        if m:
            assert_close(f"{name}.{key}", rows[int(m.group(1)) : int(m.group(2))], value, tol_feat)
    width = rows.shape[-1]
    r64 = rows.double()
    if "features_row_sum" in tensors:  # max-abs <= tol implies |mean diff| <= tol
        assert_close(f"{name}.features_row_mean", r64.sum(-1) / width, tensors["features_row_sum"] / width, tol_feat)
    if "features_row_sumsq" in tensors:  # ... and |RMS diff| <= tol (triangle inequality)
        assert_close(f"{name}.features_row_rms", (r64.square().sum(-1) / width).sqrt(), np.sqrt(tensors["features_row_sumsq"] / width), tol_feat)

    # 3. per-frame chunks for every fps present
    picked = {str(k): v for k, v in info.get("chunk_frames_saved", {}).items()}
    num_chunks = {str(k): v for k, v in info.get("num_chunks", {}).items()}
    fps_tags = sorted({m.group(1) for k in tensors if (m := re.fullmatch(r"chunk(?:s|_rows)_fps([0-9.]+)(?:_\w+)?", k))} | set(num_chunks))
    assert fps_tags, f"{name}: no chunk expectations found"
    for tag in fps_tags:
        fps = float(tag)
        count = feats.frame_count(fps)
        if tag in num_chunks:
            assert count == num_chunks[tag], f"{name}: {count} frames at {tag} fps, expected {num_chunks[tag]}"
        if f"chunk_rows_fps{tag}" in tensors:
            assert_equal(f"{name}.chunk_rows_fps{tag}", feats.chunk_rows(fps), tensors[f"chunk_rows_fps{tag}"])
        for key, value in tensors.items():
            m = re.fullmatch(rf"chunks_fps{re.escape(tag)}_(\w+)", key)
            if not m:
                continue
            k = value.shape[0]
            if m.group(1) == "head":
                frames = list(range(k))
            elif m.group(1) == "tail":
                frames = list(range(count - k, count))
            elif m.group(1) == "picked":
                frames = list(picked[tag])
            else:
                raise AssertionError(f"{name}: unknown chunk tensor '{key}'")
            assert_close(f"{name}.{key}", feats.chunks_at(frames, fps), value, tol_feat)
        # every chunk is features[rows].reshape(50, 384), and contiguous slicing equals index slicing
        all_chunks = feats.all_chunks(fps)
        assert all_chunks.shape == (count, 10 * rows.shape[1], width), f"{name}: chunks shape {tuple(all_chunks.shape)}"
        assert torch.equal(all_chunks, rows[feats.chunk_rows(fps)].reshape(count, -1, width))
        assert torch.equal(feats.chunks(1, count, fps), all_chunks[1:])


def run(case: ParityCase) -> None:
    torch.manual_seed(0)
    tol_mel = case.tolerance("log_mel_max_abs", 1e-4)
    tol_feat = case.tolerance("features_max_abs", 1e-3)
    encoder = load_whisper_encoder(_model_path(case), device="cpu", dtype=torch.float32)
    inputs = case.manifest.get("inputs", {})
    assert inputs, f"{case.name}: manifest has no inputs"
    for name, info in inputs.items():
        _check_clip(case, name, info, encoder, tol_mel, tol_feat)
