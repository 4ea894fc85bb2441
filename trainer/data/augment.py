"""Condition dropout, Random Landmark Selection and waveform augmentation (driven by a per-sample numpy Generator).

Condition dropout: with ``drop_all`` every condition is dropped at once (reference, audio and landmarks / pose:
the sampler's CFG unconditional branch); otherwise each is dropped on its own with ``drop_reference``,
``drop_audio``, ``drop_condition``. Without the joint drop the unconditional branch would be the product of the
three (0.05^3 = 0.0125 % of the samples) and CFG would extrapolate from an untrained prediction.

RLS: every part of ``cfg.parts`` is dropped independently with probability ``drop_prob``; the sample's
landmark picture draws only the kept parts. With the default 0.5 a sample is landmarks-only (nothing
dropped) 1/32 of the time, audio-only (everything dropped) 1/32, and "audio + selected landmarks" (mouth
dropped) about half the time, so one model serves all three driving modes.

Audio: a time shift (the waveform delayed / advanced, zero-filled, up to ``max_shift_ms``, default 10 ms: a
shift of a frame (40 ms) would teach the model that a one-frame lip offset is in sync), a gain change
(dB, clipped to [-1, 1]) and additive white noise at a random SNR, each with its own probability, applied
to the 16 kHz waveform; the whisper features are then recomputed from the augmented waveform
(:func:`augmented_chunks`).
"""
from __future__ import annotations

import numpy as np
import torch

SR = 16000
ROW_SAMPLES = 320  # one whisper feature row = 2 mel hops of 160 samples (50 rows per second)
WINDOW_SECONDS = 30  # whisper sees 30 s windows


def draw_dropout(rng: np.random.Generator, d) -> tuple[bool, bool, bool]:
    """(reference, audio, condition) dropped for one sample (``d`` = the data config)."""
    if d.drop_all > 0 and rng.random() < d.drop_all:
        return True, True, True
    r = rng.random(3) < np.array([d.drop_reference, d.drop_audio, d.drop_condition])
    return bool(r[0]), bool(r[1]), bool(r[2])


def rls_parts(rng: np.random.Generator, parts, drop_prob: float) -> list[str]:
    """The kept parts of one sample (order of ``parts``)."""
    return [p for p in parts if rng.random() >= drop_prob]


def draw_audio_aug(rng: np.random.Generator, cfg) -> dict:
    """Decide one sample's augmentation: {} (none) or the chosen operations with their parameters."""
    plan = {}
    if cfg.shift_prob > 0 and rng.random() < cfg.shift_prob:
        plan["shift_samples"] = int(round(rng.uniform(-cfg.max_shift_ms, cfg.max_shift_ms) * SR / 1000.0))
    if cfg.gain_prob > 0 and rng.random() < cfg.gain_prob:
        plan["gain_db"] = float(rng.uniform(*cfg.gain_db))
    if cfg.noise_prob > 0 and rng.random() < cfg.noise_prob:
        plan["noise_snr_db"] = float(rng.uniform(*cfg.noise_snr_db))
        plan["noise_seed"] = int(rng.integers(0, 2**31))
    return plan


def apply_audio_aug(wave: np.ndarray, plan: dict) -> np.ndarray:
    """Apply a plan from :func:`draw_audio_aug` to a float waveform (16 kHz): shift, then gain, then noise."""
    out = np.asarray(wave, dtype=np.float32).copy()
    n = plan.get("shift_samples", 0)
    if n > 0:
        out = np.concatenate([np.zeros(n, np.float32), out[:-n]])
    elif n < 0:
        out = np.concatenate([out[-n:], np.zeros(-n, np.float32)])
    if "gain_db" in plan:
        out = np.clip(out * np.float32(10.0 ** (plan["gain_db"] / 20.0)), -1.0, 1.0)
    if "noise_snr_db" in plan:
        power = float(np.mean(out.astype(np.float64) ** 2)) or 1e-8
        noise = np.random.default_rng(plan["noise_seed"]).standard_normal(out.shape).astype(np.float32)
        out = out + noise * np.float32(np.sqrt(power / 10.0 ** (plan["noise_snr_db"] / 10.0)))
    return out.astype(np.float32)


def feature_window(num_samples: int, first_frame: int, fps: float) -> tuple[int, int]:
    """(start, length) in samples of the <= 30 s waveform window to re-encode for frames from ``first_frame``:
    the whole clip when it fits, else a row-aligned window starting ~1 s before the frames."""
    limit = WINDOW_SECONDS * SR
    if num_samples <= limit:
        return 0, num_samples
    start = int(max(0.0, first_frame / fps - 1.0) * SR) // ROW_SAMPLES * ROW_SAMPLES
    start = min(start, (num_samples - limit) // ROW_SAMPLES * ROW_SAMPLES)
    return start, limit


def augmented_chunks(wave: np.ndarray, frames, fps: float, encoder, plan: dict) -> torch.Tensor:
    """(len(frames), 50, 384) whisper chunks of the waveform augmented by ``plan``, for video ``frames``."""
    from echomimic_lib.audio import encode_audio
    from echomimic_lib.audio.features import chunk_row_indices, num_feature_rows
    from echomimic_lib.audio.mel import num_mel_frames

    frames = np.asarray(frames, dtype=np.int64)
    total_rows = num_feature_rows(num_mel_frames(len(wave)))
    start, length = feature_window(len(wave), int(frames.min()), fps)
    seg = apply_audio_aug(wave[start : start + length], plan)
    with torch.no_grad():
        rows = encode_audio(seg, encoder, sample_rate=SR).rows.float().cpu()
    idx = chunk_row_indices(frames, fps, total_rows) - start // ROW_SAMPLES
    idx = np.clip(idx, 0, rows.shape[0] - 1)
    chunks = rows[torch.from_numpy(idx.reshape(-1))].reshape(len(frames), -1, rows.shape[-1])
    return chunks


def stored_chunks(rows: np.ndarray, num_samples: int, frames, fps: float) -> torch.Tensor:
    """(len(frames), 50, 384) chunks from the prepared whisper rows (no augmentation)."""
    from echomimic_lib.audio.features import chunk_row_indices

    idx = chunk_row_indices(np.asarray(frames, dtype=np.int64), fps, rows.shape[0])
    sel = np.asarray(rows[idx.reshape(-1)], dtype=np.float32)
    return torch.from_numpy(sel).reshape(len(frames), -1, rows.shape[-1])
