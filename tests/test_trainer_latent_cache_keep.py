"""Latent caches on one dataset (#26 follow-up): caches at two resolutions live side by side, another VAE at the same
resolution replaces its predecessor, a killed writer's staging folder is cleared once it is old, and two writers
building the same cache at once both succeed."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.io.file_safety import current_umask as lc_umask
from trainer.data import latent_cache as lc
from trainer.data.latent_cache import cache_clips, cache_key, has_cache, read_cache, stale_caches, write_clip_cache
from trainer.data.store import read_manifest

from tests.test_trainer_latent_cache import synthetic_dataset, tiny_vae


@pytest.fixture
def data(tmp_path):
    root = synthetic_dataset(tmp_path / "ds", frames=8)
    return read_manifest(root), tiny_vae(tmp_path / "vae"), tmp_path / "vae"


def test_caches_at_two_resolutions_are_both_kept(data, tmp_path):
    entries, vae, vae_dir = data
    k64 = cache_clips(entries, vae, vae_dir, 64, 64)["key"]
    counts = cache_clips(entries, vae, vae_dir, 64, 48)
    assert counts["written"] == 2 and counts["removed"] == 0
    again = cache_clips(entries, vae, vae_dir, 64, 64)  # back to the first size: nothing to rebuild
    assert again["kept"] == 2 and again["written"] == 0 and again["removed"] == 0
    assert all(has_cache(e.path, k64) and has_cache(e.path, counts["key"]) for e in entries)
    # another VAE at 64x64 replaces the 64x64 cache only; the 64x48 one stays
    vae2 = tiny_vae(tmp_path / "vae2", seed=2)
    other = cache_clips(entries, vae2, tmp_path / "vae2", 64, 64)
    assert other["removed"] == 2 and not has_cache(entries[0].path, k64)
    assert has_cache(entries[0].path, counts["key"]) and has_cache(entries[0].path, other["key"])


def test_a_killed_writers_staging_folder_is_cleared_when_old(data):
    entries, vae, vae_dir = data
    key = cache_key(vae_dir, 64, 64, vae.dtype)
    root = Path(entries[0].path) / lc.CACHE_DIR
    fresh = root / f".{key}.abc{lc.PARTIAL}"
    old = root / f".{key}.def{lc.PARTIAL}"
    legacy = root / f"{key}.partial"  # the fixed name earlier versions staged into
    for d in (fresh, old, legacy):
        d.mkdir(parents=True)
        (d / "mean.npy").write_bytes(b"half")
    past = time.time() - lc.LEFTOVER_AGE_S - 60
    for d in (old, legacy):
        os.utime(d, (past, past))
    assert set(stale_caches(entries[0].path, key)) == {old, legacy}  # a fresh one may be another writer at work
    cache_clips(entries, vae, vae_dir, 64, 64)
    assert fresh.is_dir() and not old.exists() and not legacy.exists() and has_cache(entries[0].path, key)


def test_two_writers_of_the_same_cache_both_succeed(data, monkeypatch):
    entries, vae, vae_dir = data
    key = cache_key(vae_dir, 64, 64, vae.dtype)
    real_save = np.save
    raced = []

    def save_then_race(path, arr, *a, **k):  # while this writer stages, another finishes the same cache
        real_save(path, arr, *a, **k)
        if not raced and Path(path).name == "std.npy":
            raced.append(True)
            write_clip_cache(entries[0], vae, key, 64, 64)

    monkeypatch.setattr(lc.np, "save", save_then_race)
    final = write_clip_cache(entries[0], vae, key, 64, 64)
    monkeypatch.undo()
    assert raced and has_cache(entries[0].path, key)
    assert [p.name for p in final.parent.iterdir()] == [key]  # no staging folder left behind
    assert final.stat().st_mode & 0o777 == 0o777 & ~lc_umask()  # a shared dataset's cache: the umask's mode, not 0700
    mean, std = read_cache(entries[0].path, key)
    assert mean.shape[0] == 8 and np.isfinite(np.asarray(std)).all()
