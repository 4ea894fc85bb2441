"""Speech longer than one flash-pro shot: chunks with overlap, each re-anchored on the reference (or continued).

Not official behaviour (the official flash CLI stops at 81 frames); opt-in, and a clip of at most one
chunk goes through :func:`.sampler.generate` unchanged (parity). Design:

* ``mode="reanchor"`` (the default): every chunk is conditioned on the **original reference** (frame 0 of its
  mask + CLIP features), never on generated frames, so identity cannot drift from chunk to chunk (re-anchoring
  on decoded frames compounds errors and is the most reported V3 long-video problem); the price is that each
  chunk starts from the reference pose, which the overlap crossfade hides;
* ``mode="continue"``: the preview release's chunking (its ``app.py``): chunk k > 0 is given the previous
  chunk's last ``overlap`` frames as its first frames (known in the mask, VAE-encoded), while the CLIP features
  stay the reference's; the motion runs on across the seams, and identity can drift over a long clip;
* chunks of ``chunk`` frames (4k+1) start every ``chunk - overlap`` frames; the ``overlap`` shared frames
  are crossfaded linearly in pixel space; the last chunk is padded (audio clamped) to 4k+1 and cut;
* wav2vec2 runs per chunk on the chunk's samples plus ``margin`` frames of context on each side (the
  encoder attends over the whole segment, so whole-clip encoding would grow quadratically), windows are
  taken with the clip's own edge clamping; loudness is measured once on the whole clip (official rule);
* noise for chunk k comes from ``seed + k`` (mod 2^64); frames are yielded chunk by chunk (:func:`iter_long`), so
  host and device memory stay flat in the clip length when the caller streams them to a writer;
* chunk k needs nothing of the earlier chunks but the previous one's last ``overlap`` frames (float, for the
  crossfade and ``continue``) and the colour-transfer anchor (the video's frame 0): ``on_chunk`` reports them with
  each chunk, and ``start_chunk`` / ``carry`` begin at chunk k with them (a resumable render:
  :mod:`.chunk_state`), to the same frames as a run from chunk 0.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ...audio.wav2vec import FPS, RATE, WINDOW, Wav2VecV3
from ...modes import V3_LONG_MODES
from .color import color_transfer
from .sampler import V3Settings, check_frames, generate


LONG_MODES = V3_LONG_MODES  # (defined with the other modes: the command line and the nodes read it without torch)
CHUNK, OVERLAP = 81, 8  # a long clip's chunk (one flash-pro shot) and the frames two neighbours share (crossfaded)


def chunk_seed(seed: int, k: int) -> int:
    """Chunk k's noise seed: ``seed + k``, wrapped into torch's 0..2^64-1 (the largest seeds went past it)."""
    return (int(seed) + k) % 2**64


def chunk_starts(total: int, chunk: int, overlap: int) -> list[int]:
    check_frames(chunk)
    if not 0 <= overlap < chunk - 1:
        raise ValueError(f"overlap {overlap} must be between 0 and {chunk - 2} for chunks of {chunk} frames")
    starts, s = [0], 0
    while s + chunk < total:
        s += chunk - overlap
        starts.append(s)
    return starts


def chunk_sizes(total: int, chunk: int, overlap: int) -> list[int]:
    """How many frames :func:`iter_long` yields for each chunk (all but the last: ``chunk - overlap``)."""
    starts = chunk_starts(total, chunk, overlap)
    return [b - a for a, b in zip(starts, starts[1:])] + [total - starts[-1]]


def chunk_windows(encoder: Wav2VecV3, samples_16k: np.ndarray, total: int, start: int, length: int,
                  margin: int = 50) -> torch.Tensor:
    """(1, length, 5, layers, C) windows for frames start..start+length-1 of a ``total``-frame clip
    (frames past the end repeat the last one); ``samples_16k`` already loudness-normalised."""
    lo, hi = max(0, start - margin), min(total, start + length + margin)
    seg = samples_16k[int(lo / FPS * RATE): int(hi / FPS * RATE)]
    hs = encoder.hidden_states(encoder.input_values(seg), hi - lo)
    half = WINDOW // 2
    frames = (torch.arange(start, start + length).clamp(max=total - 1)[:, None] + torch.arange(-half, half + 1)[None])
    return hs[(frames.clamp(0, total - 1) - lo).to(hs.device)][None]


def iter_long(model, vae, encoder: Wav2VecV3, ref_u8: np.ndarray, prompt_embeds, clip_features, samples_16k: np.ndarray,
              total: int, settings: V3Settings, chunk: int = 81, overlap: int = 8, margin: int = 50, on_step=None,
              trace=None, mode: str = "reanchor", start_chunk: int = 0, carry=None, on_chunk=None):
    """Yield (F_k, H, W, 3) uint8 frame blocks that concatenate to ``total`` frames. ``on_step(done, total)``
    counts the sampling steps of all chunks; ``trace`` sees each chunk's tensors as :func:`generate`'s; ``mode``:
    ``reanchor`` or ``continue`` (module docstring). ``on_chunk(k, out, tail, anchor)``: called with each chunk's
    yielded frames and what chunk k + 1 needs (``tail``: the last ``overlap`` float frames or None, ``anchor``: the
    colour-transfer anchor or None) before the block is yielded; ``start_chunk`` k > 0 with ``carry`` = that
    (tail, anchor) of chunk k - 1 yields chunks k.. only (``start_chunk`` = the chunk count: nothing)."""
    if margin < WINDOW // 2 + 1:
        raise ValueError(f"margin must be at least {WINDOW // 2 + 1} frames")
    if mode not in LONG_MODES:
        raise ValueError(f"long mode '{mode}': one of {', '.join(LONG_MODES)}")
    if mode == "continue" and not overlap:
        raise ValueError("long mode 'continue' carries the overlap frames into the next chunk: overlap must be at least 1")
    starts = chunk_starts(total, chunk, overlap)
    if not 0 <= start_chunk <= len(starts) or (start_chunk and carry is None):
        raise ValueError(f"start_chunk {start_chunk}: 0..{len(starts)}, after chunk 0 with the previous chunk's carry")
    plain = replace(settings, color_transfer=False)
    tail, anchor = carry if start_chunk else (None, None)  # previous chunk's last ``overlap`` frames (float); frame 0
    for k, s in enumerate(starts):
        if k < start_chunk:
            continue
        n = min(chunk, total - s)
        length = n if n == 1 or (n - 1) % 4 == 0 else (n - 1) // 4 * 4 + 5
        windows = chunk_windows(encoder, samples_16k, total, s, length, margin)
        step = None if on_step is None else (lambda i, n, k=k: on_step(k * n + i, len(starts) * n))
        known = np.clip(np.rint(tail), 0, 255).astype(np.uint8) if mode == "continue" and tail is not None else None
        res = generate(model, vae, ref_u8, prompt_embeds, clip_features, windows, replace(plain, seed=chunk_seed(settings.seed, k)),
                       on_step=step, trace=trace, known_frames=known)
        frames = res.frames[:n].astype(np.float32)
        if tail is not None and overlap:
            w = np.linspace(0, 1, overlap + 2, dtype=np.float32)[1:-1, None, None, None]
            frames[:overlap] = (1 - w) * tail + w * frames[:overlap]
        last = k == len(starts) - 1
        keep = frames if last else frames[: n - overlap]
        tail = frames[n - overlap:] if overlap else None
        out = np.clip(np.rint(keep), 0, 255).astype(np.uint8)
        if settings.color_transfer:  # every frame matched to the video's frame 0 (which stays as it is)
            if anchor is None:
                anchor, out = out[0], color_transfer(out)
            else:
                out = color_transfer(np.concatenate([anchor[None], out]))[1:]
        if on_chunk is not None:
            on_chunk(k, out, tail, anchor)
        yield out


def generate_long(*args, **kwargs) -> np.ndarray:
    """:func:`iter_long` collected into one (total, H, W, 3) uint8 array."""
    return np.concatenate(list(iter_long(*args, **kwargs)))
