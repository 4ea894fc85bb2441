"""VAE latents cached per clip (#26): the cache equals the VAE's encoding, a training step reads it instead of
encoding, and another VAE or resolution invalidates it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config_file import load_config
from trainer.data.dataset import EchoDataset, ResumableSampler, build_pools, collate
from trainer.data.latent_cache import (cache_clips, cache_key, encode_posterior, frames_tensor, has_cache, read_cache,
                                       run_cache)
from trainer.data.store import ClipReader, ClipWriter, read_manifest


def synthetic_dataset(root: Path, clips: int = 2, frames: int = 20, size: int = 64, seed: int = 0) -> Path:
    """Prepared clips written directly (textured frames, a centred face box, landmarks, silence and zero whisper rows)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(clips):
        cid = f"spk{c}__clip"
        w = ClipWriter(root / "shard-00000" / cid)
        base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        for f in range(frames):
            w.add_frame(np.roll(base, f, axis=1))
        lm = np.tile(rng.uniform(0.3, 0.7, (1, 478, 3)).astype(np.float32), (frames, 1, 1))
        audio = np.zeros(int(frames / 24 * 16000), np.float32)
        w.finish({"id": cid, "fps": 24.0, "kind": "headshot", "size": size},
                 {"landmarks": lm, "face_boxes": np.tile(np.float32([[0.3, 0.3, 0.7, 0.7]]), (frames, 1)), "audio16k": audio,
                  "whisper": np.zeros((int(frames / 24 * 50) + 2, 5, 384), np.float16)})
        rows.append({"id": cid, "path": f"shard-00000/{cid}", "shard": 0, "num_frames": frames, "fps": 24.0, "kind": "headshot"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def tiny_vae(folder: Path, seed: int = 1):
    from diffusers import AutoencoderKL

    from echomimic_lib.tiny import TINY_VAE_CONFIG, randomize_

    vae = randomize_(AutoencoderKL(**TINY_VAE_CONFIG), seed).eval().requires_grad_(False)
    vae.save_pretrained(str(folder), safe_serialization=True)
    return vae


def _cfg(root, *over):
    return load_config(None, ["model.init=random", "model.arch=tiny", f"data.roots=[{root}]", "data.width=64", "data.height=64",
                              "data.num_workers=0", "validation.every=0", "optim.batch_size=2", "phases.stage1.frames=1", "loss.spatial.weight=0",
                              "data.audio_aug.noise_prob=0", "data.audio_aug.gain_prob=0", "data.audio_aug.shift_prob=0", *over],
                       preset="v1_stage1")


@pytest.fixture
def data(tmp_path):
    root = synthetic_dataset(tmp_path / "ds")
    vae = tiny_vae(tmp_path / "vae")
    return root, vae, tmp_path / "vae"


def test_cached_latents_equal_the_vaes_encoding(data):
    root, vae, vae_dir = data
    entries = read_manifest(root)
    counts = cache_clips(entries, vae, vae_dir, 64, 64)
    assert counts["written"] == 2 and counts["kept"] == 0
    for e in entries:
        mean, std = read_cache(e.path, counts["key"])
        m, s = encode_posterior(vae, frames_tensor(ClipReader(e.path), range(e.num_frames), 64, 64))
        assert mean.shape == (e.num_frames, 4, 8, 8) and mean.dtype == np.float16
        assert np.array_equal(np.asarray(mean), m.half().numpy()) and np.array_equal(np.asarray(std), s.half().numpy())
    assert cache_clips(entries, vae, vae_dir, 64, 64)["kept"] == 2  # valid caches are not written again


class _NoEncode:
    """The VAE, with ``encode`` refused: a step that reads cached latents never calls it."""

    def __init__(self, vae):
        self.vae, self.dtype = vae, vae.dtype

    def encode(self, *a, **k):
        raise AssertionError("the VAE encoder ran although the latents are cached")


def _stub_model(x_t, t, ref, audio, cond, keep_ref, keep_cond):  # the network's call signature; output depends on the latents
    return 0.5 * x_t + ref.mean((1, 2, 3)).view(-1, 1, 1, 1, 1)


def test_the_training_step_reads_the_cache_instead_of_encoding(data):
    from echomimic_lib.pipeline import make_scheduler
    from trainer.step import LossFns, compute_losses

    root, vae, vae_dir = data
    cfg = _cfg(root)
    pools = build_pools(cfg)
    key = run_cache(cfg, vae, vae_dir, pools)
    assert all(has_cache(e.path, key) for e in pools.entries)
    cached, plain = EchoDataset(cfg, pools, latent_key=key), EchoDataset(cfg, pools)
    keys = [ResumableSampler(cfg, pools).key(p) for p in range(2)]
    bc, bp = collate([cached[k] for k in keys]), collate([plain[k] for k in keys])
    assert "pixels" not in bc and bc["latent_mean"].shape == (2, 1, 4, 8, 8)  # no frame decoded: nothing needs pixels
    sched = make_scheduler()
    t = torch.tensor([400])
    out_c = compute_losses(_stub_model, _NoEncode(vae), sched, bc, torch.Generator().manual_seed(5), cfg, LossFns(), timesteps=t)
    out_p = compute_losses(_stub_model, vae, sched, bp, torch.Generator().manual_seed(5), cfg, LossFns(), timesteps=t)
    # the same posterior draws: the cached path differs from the VAE path by the float16 storage only
    assert float(out_c.total) == pytest.approx(float(out_p.total), rel=2e-3)
    # a batch mixing a cached clip with one without a cache encodes everything with the VAE
    other = cache_key(vae_dir, 64, 64, vae.dtype)
    import shutil

    shutil.rmtree(Path(pools.entries[1].path) / "latents" / other)
    mixed = EchoDataset(cfg, pools, latent_key=key)
    assert mixed.need_pixels
    batch = collate([mixed[{"pos": 0, "step": 0, "clip": 0}], mixed[{"pos": 1, "step": 0, "clip": 1}]])
    assert "latent_mean" not in batch and batch["pixels"].shape[0] == 2


def test_another_vae_or_resolution_invalidates_the_cache(data, tmp_path):
    root, vae, vae_dir = data
    entries = read_manifest(root)
    k64 = cache_clips(entries, vae, vae_dir, 64, 64)["key"]
    assert cache_key(vae_dir, 64, 64) == k64
    assert cache_key(vae_dir, 64, 48) != k64  # another training resolution
    assert cache_key(vae_dir, 64, 64, torch.bfloat16) != k64  # another encoding dtype
    vae2 = tiny_vae(tmp_path / "vae2", seed=2)  # another VAE (same architecture, other weights)
    k2 = cache_key(tmp_path / "vae2", 64, 64)
    assert k2 != k64 and not has_cache(entries[0].path, k2)
    counts = cache_clips(entries, vae2, tmp_path / "vae2", 64, 64)
    assert counts["written"] == 2 and counts["removed"] == 2  # the stale caches are removed
    assert not has_cache(entries[0].path, k64) and has_cache(entries[0].path, k2)
    mean, _ = read_cache(entries[0].path, k2)
    m, _ = encode_posterior(vae2, frames_tensor(ClipReader(entries[0].path), range(4), 64, 64))
    assert np.array_equal(np.asarray(mean[:4]), m.half().numpy())


def test_fit_with_cache_latents_builds_the_cache_and_never_encodes_a_training_frame(data, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    from trainer.loop import fit

    root, vae, vae_dir = data
    calls = {"n": 0}
    real = AutoencoderKL.encode

    def counting(self, *a, **k):
        calls["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(AutoencoderKL, "encode", counting)
    cfg = _cfg(root, f"model.vae_path={vae_dir}", "data.cache_latents=true", f"output_dir={tmp_path / 'run'}", "phases.stage1.steps=3",
               "checkpoint.every=3", "log.every=1", "log.progress=false", "log.tensorboard=false", "log.plot=false", "cpu_threads=1")
    cfg.model.whisper_path = str(_whisper(tmp_path))
    seen = []
    fit(cfg, hooks={"after_step": lambda step, outs, net: seen.append(calls["n"])})
    assert seen[0] > 0 and seen == [seen[0]] * 3  # the cache was built at the start, then no step encoded a frame
    assert all(has_cache(e.path, cache_key(vae_dir, 64, 64)) for e in read_manifest(root))


def _whisper(tmp_path: Path) -> Path:
    from tests.test_trainer_helpers import shared_dir, whisper_path

    class _F:
        def getbasetemp(self):
            return tmp_path.parent

    return whisper_path(shared_dir(_F()))


def test_prepare_cache_latents_from_the_command_line(tmp_path, tmp_path_factory, capsys):
    from tests.test_trainer_helpers import MEDIAPIPE, _headshot_inputs, shared_dir, whisper_path
    from trainer.cli import main

    inputs = tmp_path / "in"
    _headshot_inputs(inputs)
    vae_dir = tmp_path / "vae"
    tiny_vae(vae_dir)
    w = str(whisper_path(shared_dir(tmp_path_factory)))
    # a bad size is refused before any clip is prepared
    assert main(["prepare", str(inputs), str(tmp_path / "bad"), "--whisper", w, "--cache-latents", str(vae_dir), "--latent-size", "60x64"]) == 2
    assert "--latent-size 60x64" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    out = tmp_path / "out"
    assert main(["prepare", str(inputs), str(out), "--whisper", w, "--mediapipe-model", str(MEDIAPIPE), "--size", "128",
                 "--max-seconds", "1.5", "--min-face-px", "10", "-q", "--cache-latents", str(vae_dir), "--latent-size", "64x64"]) == 0
    assert "latent cache 64x64-" in capsys.readouterr().out
    key = cache_key(vae_dir, 64, 64)
    for e in read_manifest(out):  # every clip cached at the training size with this VAE
        mean, _ = read_cache(e.path, key)
        assert mean.shape == (e.num_frames, 4, 8, 8)
