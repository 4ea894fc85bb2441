"""Long speech for V3: chunks with overlap re-anchored on the reference; one-chunk clips = one shot."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from echomimic_lib.audio.wav2vec import prepare_samples
from echomimic_lib.pipeline.wan.long import chunk_starts, chunk_windows, generate_long, iter_long
from echomimic_lib.pipeline.wan.sampler import V3Settings, generate
from tests._v3_tiny import TINY, tiny_model
from tests.test_v3_audio import _tiny_wav2vec


def test_chunk_starts():
    assert chunk_starts(81, 81, 8) == [0]
    assert chunk_starts(200, 81, 8) == [0, 73, 146]
    with pytest.raises(ValueError, match="overlap"):
        chunk_starts(200, 9, 8)
    with pytest.raises(ValueError, match="4k\\+1"):
        chunk_starts(200, 80, 8)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=4, z_dim=16).eval()
    tiny = TINY.__class__(**{**TINY.__dict__, "audio": TINY.audio.__class__(blocks=3, channels=16, intermediate_dim=16,
                                                                               output_dim=32, context_tokens=2)})
    enc = _tiny_wav2vec(tmp_path_factory.mktemp("w2v"))
    g = torch.Generator().manual_seed(3)
    ref = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
    speech = np.random.default_rng(1).standard_normal(16000 * 2).astype(np.float32) * 0.1
    return dict(model=tiny_model(cfg=tiny), vae=vae, enc=enc, ref=ref, prompt=torch.randn(1, 4, 16, generator=g),
                clip=torch.randn(1, 257, 24, generator=g), speech=speech)


def test_one_chunk_equals_one_shot(parts):
    s = V3Settings(steps=2, teacache="off", audio_cfg=2.0)
    total = 9
    samples = prepare_samples(parts["speech"], total)
    full = parts["enc"].windows(samples, total)
    assert torch.equal(chunk_windows(parts["enc"], samples, total, 0, total), full)
    shot = generate(parts["model"], parts["vae"], parts["ref"], parts["prompt"], parts["clip"], full, s)
    long = generate_long(parts["model"], parts["vae"], parts["enc"], parts["ref"], parts["prompt"], parts["clip"],
                         samples, total, s, chunk=9, overlap=2)
    assert np.array_equal(long, shot.frames)


def test_long_clip_in_chunks(parts):
    s = V3Settings(steps=2, teacache="off", audio_cfg=1.0)
    total = 25  # starts 0, 7, 14, 21; the last chunk has 4 frames, run as 5 (4k+1) and cut
    samples = prepare_samples(parts["speech"], total)
    calls = []
    orig = parts["model"].forward
    parts["model"].forward = lambda *a, **k: (calls.append(a[0].shape), orig(*a, **k))[1]
    try:
        blocks = list(iter_long(parts["model"], parts["vae"], parts["enc"], parts["ref"], parts["prompt"], parts["clip"],
                                samples, total, s, chunk=9, overlap=2, margin=4))
    finally:
        del parts["model"].forward
    assert sum(b.shape[0] for b in blocks) == total and len(blocks) == 4
    # every call is at most one chunk (the last one is shorter): memory is flat in the clip length
    assert calls[0][2] == 3 and all(c[2] <= calls[0][2] and c[3:] == calls[0][3:] for c in calls) and calls[-1][2] == 2
    assert all(b.dtype == np.uint8 and b.shape[1:] == (32, 32, 3) for b in blocks)


def test_progress_counts_every_step_of_every_chunk(parts):
    s = V3Settings(steps=2, teacache="off", audio_cfg=1.0)
    seen = []
    generate_long(parts["model"], parts["vae"], parts["enc"], parts["ref"], parts["prompt"], parts["clip"],
                  prepare_samples(parts["speech"], 16), 16, s, chunk=9, overlap=2, margin=4, on_step=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # two chunks (0, 7) x two steps


def _spied_chunks(parts, monkeypatch, mode, total=16, overlap=2):
    """Run iter_long (chunks of 9, starts 0 and 7) and record each chunk's given first frames and rendered frames."""
    from echomimic_lib.pipeline.wan import long

    calls, real = [], long.generate

    def spy(*a, **kw):
        res = real(*a, **kw)
        calls.append((kw.get("known_frames"), res.frames))
        return res

    monkeypatch.setattr(long, "generate", spy)
    s = V3Settings(steps=2, teacache="off", audio_cfg=1.0)
    out = generate_long(parts["model"], parts["vae"], parts["enc"], parts["ref"], parts["prompt"], parts["clip"],
                        prepare_samples(parts["speech"], total), total, s, chunk=9, overlap=overlap, margin=4, mode=mode)
    return out, calls


def test_continue_mode_starts_each_chunk_from_the_previous_chunks_last_frames(parts, monkeypatch):
    """mode="continue" (the preview release's chunking): chunk 1 is given chunk 0's last `overlap` frames as its first
    frames; chunk 0 is the same shot as in the default mode, which gives every chunk the reference."""
    again, plain = _spied_chunks(parts, monkeypatch, "reanchor")
    assert [known for known, _ in plain] == [None, None]
    out, calls = _spied_chunks(parts, monkeypatch, "continue")
    (k0, f0), (k1, f1) = calls
    assert k0 is None and np.array_equal(f0, plain[0][1])
    assert k1.dtype == np.uint8 and np.array_equal(k1, f0[9 - 2:9])  # chunk 0 ran 9 frames; its last 2 carried over
    assert not np.array_equal(f1, plain[1][1])  # so chunk 1 is another shot
    assert out.shape == again.shape and np.array_equal(out[:7], again[:7]) and not np.array_equal(out[7:], again[7:])


def test_continue_mode_puts_the_carried_frames_in_the_condition(parts):
    """The carried frames are known frames of the condition: the mask marks video frames 0..K-1 (latent frame 0 is frame
    0 four times, latent frame 1 holds frames 1-4), and the latents encode them, not the reference."""
    from echomimic_lib.pipeline.wan.sampler import condition_latents

    rng = np.random.default_rng(5)
    known = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    y = condition_latents(parts["vae"], parts["ref"], 9, known)
    ref_y = condition_latents(parts["vae"], parts["ref"], 9)
    mask = y[0, :4, :, 0, 0]
    assert mask[:, 0].tolist() == [1, 1, 1, 1] and mask[:, 1].tolist() == [1, 0, 0, 0] and mask[:, 2].tolist() == [0, 0, 0, 0]
    assert ref_y[0, :4, 1, 0, 0].tolist() == [0, 0, 0, 0]
    assert not torch.equal(y[:, 4:, 0], ref_y[:, 4:, 0])  # frame 0 is the carried frame, not the reference


def test_bad_long_modes_are_refused(parts):
    s = V3Settings(steps=1, teacache="off")
    args = (parts["model"], parts["vae"], parts["enc"], parts["ref"], parts["prompt"], parts["clip"],
            prepare_samples(parts["speech"], 16), 16, s)
    with pytest.raises(ValueError, match="one of reanchor, continue"):
        generate_long(*args, chunk=9, overlap=2, margin=4, mode="loop")
    with pytest.raises(ValueError, match="overlap must be at least 1"):
        generate_long(*args, chunk=9, overlap=0, margin=4, mode="continue")
