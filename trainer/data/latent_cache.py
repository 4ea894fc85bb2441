"""VAE latents cached per clip (opt-in: ``prepare --cache-latents VAE``, ``data.cache_latents: true``).

The frozen VAE encodes every target frame of every training step; its output for a frame depends only on the
frame, the VAE and the training resolution -- the pixel pipeline has no random crop or flip (the only random
input changes are audio augmentation and condition dropout, which do not touch the frames). So the VAE
posterior of each stored frame at the run's resolution is computed once and stored beside the clip:

    <clip>/latents/<key>/mean.npy  float16 (F, 4, H/8, W/8) posterior mean (unscaled)
    <clip>/latents/<key>/std.npy   float16 (F, 4, H/8, W/8) posterior standard deviation
    <clip>/latents/<key>/meta.json the key's inputs (resolution, VAE digest, dtype)

A training step then draws the posterior sample from the stored mean and standard deviation with the step's own
generator (:func:`trainer.step.sample_latents`, the same draws as with the VAE), so the cache changes the VAE's
float32 output only by its float16 rounding. ``key`` hashes the VAE's files (config and weights), the dtype it
encodes in and the resolution: another VAE or another ``data.width``/``height`` finds no cache and builds its own.
A clip keeps one cache per resolution: :func:`cache_clips` removes the caches of another VAE or dtype at the run's
resolution and keeps those at other resolutions (a dataset trained at two sizes does not rebuild each time).
Writers stage into a unique hidden ``.<key>.*.partial`` folder; when two runs build the same cache at once, the first
rename wins and the other's copy (the same values) is dropped. Not cached: V2 headshots padded into the half-body
canvas (their frames are composed per sample); batches holding one of those encode with the VAE as before.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from echomimic_lib.io.file_safety import temp_folder_beside
from echomimic_lib.io.os_errors import writing

from .store import ClipEntry, ClipReader, write_json_atomic

log = logging.getLogger(__name__)
CACHE_DIR = "latents"
CACHE_FORMAT = 1
PARTIAL = ".partial"  # a staging folder's name ends so (file_safety.temp_folder_beside: ``.<key>.XXXXXXXX.partial``)
LEFTOVER_AGE_S = 3600  # a staging folder untouched this long was left by a killed writer (one clip takes seconds)


@lru_cache(maxsize=16)
def _digest_files(paths: tuple[str, ...], stamp: tuple) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def vae_files(vae_path: str | Path) -> list[Path]:
    """A VAE's files (a folder's config.json and weights, or a single weights file); a clear error when there are none,
    so ``prepare --cache-latents`` fails before any clip is prepared, not after."""
    p = Path(vae_path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: VAE not found; give the sd-vae-ft-mse folder (config.json + weights) or a VAE "
                                "weights file")
    files = sorted(q for q in p.iterdir() if q.is_file() and (q.name == "config.json" or q.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt"))) \
        if p.is_dir() else [p]
    if not any(q.name != "config.json" for q in files):
        raise FileNotFoundError(f"{p}: no VAE weights to cache latents for (config.json + diffusion_pytorch_model.safetensors)")
    return files


def vae_digest(vae_path: str | Path) -> str:
    """sha256 of a VAE's files: a folder's config.json and weights, or a single weights file."""
    files = vae_files(vae_path)
    stamp = tuple((str(q), q.stat().st_size, q.stat().st_mtime_ns) for q in files)
    return _digest_files(tuple(str(q) for q in files), stamp)


def cache_key(vae_path: str | Path, width: int, height: int, dtype: torch.dtype = torch.float32) -> str:
    """The cache folder name of a VAE (its file digest), the dtype it encodes in and a resolution."""
    text = json.dumps({"format": CACHE_FORMAT, "vae": vae_digest(vae_path), "dtype": str(dtype), "size": [int(width), int(height)]},
                      sort_keys=True)
    return f"{int(width)}x{int(height)}-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir(clip_dir: str | Path, key: str) -> Path:
    return Path(clip_dir) / CACHE_DIR / key


def has_cache(clip_dir: str | Path, key: str) -> bool:
    return (cache_dir(clip_dir, key) / "meta.json").is_file()


def read_cache(clip_dir: str | Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) memory maps of a clip's cache."""
    d = cache_dir(clip_dir, key)
    return np.load(d / "mean.npy", mmap_mode="r"), np.load(d / "std.npy", mmap_mode="r")


def frames_tensor(reader: ClipReader, indices, width: int, height: int) -> torch.Tensor:
    """Stored frames at the training resolution, (N, 3, H, W) in [-1, 1]: the dataset's own pixel pipeline."""
    from .pixels import resize_frame, frames_to_tensor

    return frames_to_tensor(np.stack([resize_frame(f, width, height) for f in reader.frames(indices)]))


@torch.no_grad()
def encode_posterior(vae, pixels: torch.Tensor, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) in [-1, 1] -> the VAE posterior's (mean, std), float32, unscaled."""
    means, stds = [], []
    dev = next(vae.parameters()).device
    for i in range(0, pixels.shape[0], chunk):
        dist = vae.encode(pixels[i : i + chunk].to(dev, vae.dtype)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def write_clip_cache(entry: ClipEntry, vae, key: str, width: int, height: int, chunk: int = 8) -> Path:
    """Encode every frame of one clip and write its cache (into a unique ``.<key>.*.partial`` folder, renamed when
    complete; if another writer finished the same cache meanwhile, its copy is kept and this one dropped)."""
    reader = ClipReader(entry.path)
    final = cache_dir(entry.path, key)
    tmp = temp_folder_beside(final, PARTIAL)
    try:
        means, stds = [], []
        for a in range(0, reader.num_frames, chunk):
            m, s = encode_posterior(vae, frames_tensor(reader, range(a, min(a + chunk, reader.num_frames)), width, height), chunk)
            means.append(m.half().numpy())
            stds.append(s.half().numpy())
        with writing(final):  # a full disk names the cache, not its staging folder (removed below)
            np.save(tmp / "mean.npy", np.concatenate(means))
            np.save(tmp / "std.npy", np.concatenate(stds))
            write_json_atomic(tmp / "meta.json", {"key": key, "width": width, "height": height, "frames": reader.num_frames,
                                                  "dtype": str(vae.dtype), "format": CACHE_FORMAT})
        if has_cache(entry.path, key):  # another run wrote it meanwhile (the same values): keep that one
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        if final.exists():  # an incomplete folder without meta.json
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not has_cache(entry.path, key):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # lost the race to an identical cache
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def cacheable(entry: ClipEntry, condition: str) -> bool:
    """Every clip but the V2 headshots padded into the half-body canvas."""
    return not (condition == "pose" and entry.kind == "headshot")


def stale_caches(clip_dir: str | Path, key: str, now: float | None = None) -> list[Path]:
    """A clip's cache folders that ``key`` makes stale: the same resolution with another VAE or dtype, and staging
    folders older than :data:`LEFTOVER_AGE_S`. Caches at other resolutions and fresh staging folders (a writer
    at work) are not stale."""
    root = Path(clip_dir) / CACHE_DIR
    if root.is_symlink():  # prepare makes a real folder: a link (a downloaded dataset's) may lead among the user's files
        log.warning("%s is a link (to %s): stale latent caches there are not removed", root, os.path.realpath(root))
        return []
    size = key.split("-", 1)[0]
    now = time.time() if now is None else now
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.name.endswith(PARTIAL):
            try:
                old = now - d.stat().st_mtime > LEFTOVER_AGE_S
            except OSError:
                old = False
            if old:
                out.append(d)
        elif d.name != key and d.name.split("-", 1)[0] == size:
            out.append(d)
    return out


def cache_clips(entries: list[ClipEntry], vae, vae_path, width: int, height: int, condition: str = "landmarks",
                progress: bool = False) -> dict:
    """Write the missing caches of ``entries`` for this VAE and resolution and remove the clips' stale ones
    (another VAE or dtype at this resolution, and staging folders a killed writer left); caches at other
    resolutions stay. Returns counts: written, kept (already valid), removed (stale), skipped."""
    from tqdm import tqdm

    key = cache_key(vae_path, width, height, vae.dtype)
    counts = {"key": key, "written": 0, "kept": 0, "removed": 0, "skipped": 0}
    for e in tqdm(entries, desc="cache latents", unit="clip", disable=not progress):
        if not cacheable(e, condition):
            counts["skipped"] += 1
            continue
        for old in stale_caches(e.path, key):
            shutil.rmtree(old, ignore_errors=True)
            counts["removed"] += 1
        if has_cache(e.path, key):
            counts["kept"] += 1
        else:
            write_clip_cache(e, vae, key, width, height)
            counts["written"] += 1
    return counts


def parse_size(text: str | None, default: int) -> tuple[int, int]:
    """``--latent-size`` ``WxH`` (or one number) -> (width, height); the stored size when not given."""
    if not text:
        return default, default
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 8 or any(p % 8 for p in parts):
        from ..config import ConfigError

        raise ConfigError(f"--latent-size {text}: give WIDTHxHEIGHT, the run's data.width x data.height, multiples of 8 (e.g. 512x512)")
    return (parts[0], parts[-1])


def cache_dataset(roots, vae_path, width: int, height: int, device: str = "cpu", condition: str = "landmarks",
                  progress: bool = True) -> dict:
    """``prepare --cache-latents``: the caches of every clip of prepared datasets, with the VAE of ``vae_path``
    in float32 (the dtype of a run with ``frozen_dtype: float32`` or ``mixed_precision: no``)."""
    from echomimic_lib.model_set import load_vae

    from .store import read_manifest

    if width % 8 or height % 8:
        raise ValueError(f"--latent-size {width}x{height}: width and height must be multiples of 8 (the training data.width/height)")
    vae = load_vae(vae_path, device=device).requires_grad_(False)
    entries = [e for r in ([roots] if isinstance(roots, (str, Path)) else roots) for e in read_manifest(r)]
    return cache_clips(entries, vae, vae_path, width, height, condition, progress)


def run_cache(cfg, vae, vae_path, pools, is_main: bool = True) -> str:
    """``data.cache_latents: true`` at the start of a run: the main process writes the caches its training clips
    lack (the run's VAE, dtype and resolution; stale ones removed) and every process gets the key to read."""
    key = cache_key(vae_path, cfg.data.width, cfg.data.height, vae.dtype)
    if is_main:
        held = set(pools.val)
        train = [e for i, e in enumerate(pools.entries) if i not in held]
        counts = cache_clips(train, vae, vae_path, cfg.data.width, cfg.data.height, cfg.data.condition)
        log.info("latent cache %s: %d clips written, %d valid, %d stale caches removed, %d not cacheable (padded headshots)",
                 key, counts["written"], counts["kept"], counts["removed"], counts["skipped"])
    return key
