"""Training samples streamed from prepared clips, and the resumable sampler that feeds them.

The sampler yields *keys* ``{"pos", "step", "clip"}``: ``pos`` counts this process's samples from the start
of training, ``step`` is the optimizer step the sample belongs to, ``clip`` the chosen clip. Everything
random about a sample (frames, reference, landmark parts, dropout, augmentation) comes from a generator
seeded by ``(seed, rank, pos)``, so a sample never depends on worker scheduling, and resuming at step ``s``
(position ``s * batch * accum``) reproduces the uninterrupted run exactly.

Processes read disjoint clips: clip ``i`` of a pool belongs to rank ``i % world`` (a rank whose share of a
pool is empty reads the whole pool). Inside its share a rank walks a fresh permutation each epoch. A phase's
pool is one data kind or several (``halfbody+pose``).

Clip kinds: ``headshot`` (V1 talking heads; in V2 padded into the half-body canvas), ``halfbody`` (V2) and
``pose`` (fully pose-driven clips, e.g. HumanVid: drawn from their DWPose keypoints like half-body clips, with
the audio always dropped -- they carry no speech that matches the motion).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import ConfigError, TrainConfig
from ..masks import (DEFAULT_HEAD_BOX, head_mask, headshot_layout, keypoints_from_landmarks, keypoints_from_pose, lips_mask,
                     pad_headshot, MP_TO_68, draw_pose)
from ..phases import data_kinds, phase_at, pose_dropout_at
from .pixels import resize_frame, frames_to_tensor
from .augment import augmented_chunks, draw_audio_aug, draw_dropout, rls_parts, stored_chunks
from .store import ClipEntry, ClipReader, DamagedClipError, check_clips_present, read_manifest

log = logging.getLogger(__name__)
READER_CACHE = 32  # open clips per data worker


@dataclass
class Pools:
    entries: list[ClipEntry]
    by_kind: dict[str, list[int]]  # data kind -> this rank's clip indices (held-out clips excluded)
    val: list[int] = field(default_factory=list)  # held-out clips (:mod:`.split`), never in ``by_kind``
    split_note: str = ""  # why validation renders a training clip ("" when it has a held-out one)

    def validation_entry(self, clip_id: str | None, condition: str) -> ClipEntry:
        """The clip validation renders: ``clip_id`` when given, else the first held-out clip (a training clip only
        when nothing could be held out, see :mod:`.split`)."""
        pool = [self.entries[i] for i in self.val] or self.entries
        named = next((e for e in pool if e.id == clip_id), None) if clip_id else None
        return named or next((e for e in pool if condition != "pose" or e.kind == "halfbody"), pool[0])

    def pool(self, spec: str) -> list[int]:
        """This rank's clips for a phase's ``data`` (one kind, or several joined by '+')."""
        kinds = data_kinds(spec)
        if len(kinds) == 1:
            return self.by_kind[kinds[0]]
        return sorted(set().union(*(self.by_kind[k] for k in kinds)))


def check_v12_clips(entries: list[ClipEntry]) -> None:
    """Clips the V1/V2 trainer can read, checked from the manifests and a file test per clip: no ``--kind full``
    clip (EchoMimicV3 data), none prepared without ``--whisper`` (a written clip without ``whisper.npy``)."""
    full = [e for e in entries if e.kind == "full"]
    if full:
        raise ConfigError(f"{full[0].path.parent.parent}: {len(full)} clip(s) prepared with --kind full (e.g. {full[0].id}; "
                          "whole frames for EchoMimicV3 LoRA training, `echomimic-train v3-fit`): V1/V2 train on headshot, "
                          "halfbody or pose clips; prepare the videos into a new folder with --kind headshot (or halfbody, "
                          "pose) and --whisper")
    bare = [e for e in entries if not (e.path / "whisper.npy").is_file() and (e.path / "clip.json").is_file()]
    if bare:
        raise ConfigError(f"{bare[0].path}: prepared without --whisper ({len(bare)} clip(s) have no whisper.npy; fine for "
                          "EchoMimicV3 LoRA training): prepare the videos again into a new folder with --whisper "
                          "MODELS/audio_processor/whisper_tiny.pt for V1/V2 training")


def check_window_lengths(cfg: TrainConfig, entries: list[ClipEntry]) -> None:
    """Every clip a multi-frame phase reads holds that phase's window. A shorter one was read with its last frame
    repeated to fill the window (a clip of 14 frames in a 24-frame phase: a frozen tail of 10 frames the motion modules
    learn from), without a word; it is refused here, from the manifests, with the clips and the fixes."""
    for phase in cfg.phases:
        if phase.frames <= 1 or phase.steps <= 0:
            continue
        kinds = None if "all" in data_kinds(phase.data) else set(data_kinds(phase.data))
        short = [e for e in entries if e.num_frames < phase.frames and (kinds is None or e.kind in kinds)]
        if short:
            shown = ", ".join(f"{e.id} ({e.num_frames} frames)" for e in short[:3]) + (", ..." if len(short) > 3 else "")
            raise ConfigError(
                f"phases.{phase.name}: {len(short)} clip(s) are shorter than its {phase.frames}-frame window: {shown} "
                f"({short[0].path.parent.parent}). Their windows would repeat the last frame (a frozen tail the model "
                f"learns). Prepare the videos again with --min-seconds {phase.frames / short[0].fps:.2f} or more, remove "
                f"those lines from manifest.jsonl, or set phases.{phase.name}.frames to at most "
                f"{min(e.num_frames for e in short)}.")


def warn_enlarged(cfg: TrainConfig) -> None:
    """A dataset prepared smaller (``prepare --size``) than the run trains (``data.width`` x ``data.height``, e.g. the
    presets' 512 on clips prepared at 256) has every frame enlarged, blurred, and was trained on without a word: said
    once per folder, with the fix (a dataset prepared at the training size is never enlarged)."""
    from pathlib import Path

    from echomimic_lib.io.json_file import read_json

    class _Skip(Exception):
        pass

    side = max(cfg.data.width, cfg.data.height)
    for root in list(cfg.data.roots) + list(cfg.data.headshot_roots):
        try:  # (a file, read once: never a pipe waited on, nor a file nested past the parser's depth a traceback)
            size = read_json(Path(root) / "prepare_config.json", error=_Skip, max_bytes=1 << 20, expect=dict).get("size")
        except _Skip:
            continue  # (a dataset of an older version, or hand-made: nothing to compare)
        if isinstance(size, (int, float)) and not isinstance(size, bool) and 0 < size < side:
            log.warning("%s was prepared at --size %g, smaller than data.width x data.height %d x %d: every frame is "
                        "enlarged (blurred) for training. Prepare the videos again with --size %d, or train at data.width/"
                        "height %g.", root, size, cfg.data.width, cfg.data.height, side, size)


def build_pools(cfg: TrainConfig, rank: int = 0, world: int = 1) -> Pools:
    """The run's clips by kind for this rank; refuses clips V1/V2 cannot train on (:func:`check_v12_clips`)."""
    entries: list[ClipEntry] = []
    for root in cfg.data.roots:
        entries += read_manifest(root)
    for root in cfg.data.headshot_roots:
        entries += [e for e in read_manifest(root)]
    if not entries:
        raise FileNotFoundError("data.roots: no prepared clips found (run `echomimic-train prepare` first)")
    check_clips_present(entries)  # a clip folder gone: named now, not by a DataLoader worker
    check_v12_clips(entries)
    check_window_lengths(cfg, entries)  # a clip shorter than a temporal phase's window, named before anything is built
    if rank == 0:
        warn_enlarged(cfg)
    from .split import split_entries

    on = cfg.validation.every > 0
    sp = split_entries(entries, cfg.data.val_clips, on, cfg.data.condition, cfg.seed, cfg.validation.clip if on else None)
    if sp.val and rank == 0:
        log.info("validation holds out %d clip(s) of %s; training reads the other %d", len(sp.val), ", ".join(sp.groups), len(sp.train))
    kinds = {"all": list(sp.train)}
    kinds.update({k: [i for i in sp.train if entries[i].kind == k] for k in ("halfbody", "headshot", "pose")})
    by_kind = {}
    for kind, idx in kinds.items():
        mine = [i for j, i in enumerate(idx) if j % world == rank]
        if idx and not mine:
            log.warning("rank %d has no clips of kind '%s' of its own (%d clips, %d processes); it reads the whole pool", rank, kind, len(idx), world)
            mine = list(idx)
        by_kind[kind] = mine
    return Pools(entries, by_kind, list(sp.val), sp.fallback)


def clip_set(pools: Pools) -> dict:
    """The run's clips (id, kind, frames) as a checkpoint's ``meta.json`` records them: ``fit --resume`` on another set
    (``data.roots`` edited, clips prepared again) is said (:func:`trainer.resume_match.say_other_clips`)."""
    import hashlib
    import json

    text = json.dumps(sorted([e.id, e.kind, e.num_frames] for e in pools.entries))
    return {"count": len(pools.entries), "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}


class ResumableSampler:
    """Infinite stream of sample keys starting at position ``start_pos`` (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, pools: Pools, rank: int = 0, start_pos: int = 0):
        self.cfg, self.pools, self.rank, self.start_pos = cfg, pools, rank, int(start_pos)
        self.per_step = cfg.optim.batch_size * cfg.optim.grad_accum

    def key(self, pos: int) -> dict:
        step = pos // self.per_step
        phase = phase_at(self.cfg.phases, step).phase
        pool = self.pools.pool(phase.data)
        if not pool:
            raise RuntimeError(f"phase {phase.name} needs '{phase.data}' clips but the datasets have none")
        epoch, k = divmod(pos, len(pool))
        order = np.random.default_rng([self.cfg.seed, self.rank, 7919, epoch]).permutation(len(pool))
        return {"pos": pos, "step": step, "clip": pool[int(order[k])]}

    def __iter__(self):
        pos = self.start_pos
        while True:
            yield self.key(pos)
            pos += 1


def face_mask_image(clip: ClipReader, size) -> np.ndarray:
    """V1 face-locator input: the union of the clip's face boxes, dilated by 0.1 (V1's facemusk_dilation_ratio)."""
    b = np.asarray(clip.array("face_boxes"))
    x0, y0, x1, y1 = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    dx, dy = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
    w, h = size
    m = np.zeros((h, w), np.float32)
    m[max(0, int((y0 - dy) * h)) : min(h, int(np.ceil((y1 + dy) * h))), max(0, int((x0 - dx) * w)) : min(w, int(np.ceil((x1 + dx) * w)))] = 1
    return m


class EchoDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by sampler keys. One sample = ``frames`` consecutive frames of a clip, a
    reference frame, per-frame conditions and audio chunks, dropout flags and (V2) masks."""

    def __init__(self, cfg: TrainConfig, pools: Pools, rank: int = 0, whisper_path: str | None = None, latent_key: str | None = None):
        self.cfg, self.pools, self.rank, self.whisper_path = cfg, pools, rank, whisper_path
        self._readers: OrderedDict[int, ClipReader] = OrderedDict()  # LRU: memory maps hold file handles
        self._whisper = None
        self.latent_key = latent_key  # cached VAE latents (trainer/data/latent_cache.py) of this key, or None
        self._need_pixels: bool | None = None
        self._damaged: dict[int, DamagedClipError] = {}  # clip index -> why it is skipped (found while sampling)

    def _cached(self, i: int, padded: bool):
        """(mean, std) memory maps of clip ``i``'s cached latents, or None."""
        from .latent_cache import has_cache, read_cache

        e = self.pools.entries[i]
        if self.latent_key is None or padded or not has_cache(e.path, self.latent_key):
            return None
        return read_cache(e.path, self.latent_key)

    @property
    def need_pixels(self) -> bool:
        """Frames are decoded for a cached clip too when a loss decodes images, or when another clip has no cache
        (a batch mixing both encodes all of its frames with the VAE, :func:`collate`)."""
        if self._need_pixels is None:
            from .latent_cache import cacheable, has_cache

            lc, d = self.cfg.loss, self.cfg.data
            held = set(self.pools.val)
            train = [e for i, e in enumerate(self.pools.entries) if i not in held]
            self._need_pixels = (self.latent_key is None or lc.spatial.weight > 0 or lc.phd.enabled or
                                 not all(cacheable(e, d.condition) and has_cache(e.path, self.latent_key) for e in train))
        return self._need_pixels

    def __len__(self) -> int:  # nominal; the sampler is infinite
        return len(self.pools.entries)

    def reader(self, i: int) -> ClipReader:
        if i in self._readers:
            self._readers.move_to_end(i)
        else:
            self._readers[i] = ClipReader(self.pools.entries[i].path)
            if len(self._readers) > READER_CACHE:
                self._readers.popitem(last=False)
        return self._readers[i]

    def whisper(self):
        if self._whisper is None:
            if not self.whisper_path:
                raise RuntimeError("audio augmentation needs the whisper encoder path")
            from echomimic_lib.audio import load_whisper_encoder

            self._whisper = load_whisper_encoder(self.whisper_path)
        return self._whisper

    # ------------------------------------------------------------------ one sample
    def __getitem__(self, key: dict) -> dict:
        """The sample of ``key``; a clip whose files turn out damaged mid-run (a frame cut short, a disk error) is
        skipped: said once with the fix and the count so far, and the next good clip of the phase's pool takes its
        place (it stopped a run of hours). Only when every clip of the pool is damaged does the run stop."""
        bad = self._damaged
        pool = self.pools.pool(phase_at(self.cfg.phases, int(key["step"])).phase.data) or [int(key["clip"])]
        at = pool.index(int(key["clip"])) if int(key["clip"]) in pool else 0
        for j in range(len(pool)):
            clip = int(key["clip"]) if j == 0 else pool[(at + j) % len(pool)]
            if clip in bad:
                continue
            try:
                return self._sample({**key, "clip": clip})
            except DamagedClipError as exc:
                bad[clip] = exc
                log.warning("%s -- clip %s is skipped for the rest of the run (%d damaged clip(s) skipped in this process "
                            "so far); another clip takes its samples.", exc, self.pools.entries[clip].id, len(bad))
        first = next(iter(bad.values()))
        raise DamagedClipError(f"every clip this phase trains on is damaged ({len(bad)}); the first: {first}")

    def _sample(self, key: dict) -> dict:
        cfg, d = self.cfg, self.cfg.data
        rng = np.random.default_rng([cfg.seed, self.rank, 104729, int(key["pos"])])
        at = phase_at(cfg.phases, int(key["step"]))
        phase = at.phase
        clip = self.reader(int(key["clip"]))
        n, nf = clip.num_frames, phase.frames
        start = int(rng.integers(0, max(1, n - nf + 1)))
        idx = np.minimum(np.arange(start, start + nf), n - 1)
        ref_idx = self._reference_index(rng, n, idx)
        w, h = d.width, d.height
        padded = d.condition == "pose" and clip.kind == "headshot"
        valid, sample = np.ones((h, w), np.float32), {}
        cached = self._cached(int(key["clip"]), padded)
        if cached is not None:  # the VAE posterior of the frames, stored (trainer/data/latent_cache.py)
            mean, std = cached
            sample["latent_mean"] = torch.from_numpy(np.asarray(mean[idx], np.float32))
            sample["latent_std"] = torch.from_numpy(np.asarray(std[idx], np.float32))
            sample["ref_latent"] = torch.from_numpy(np.asarray(mean[ref_idx], np.float32))
        if cached is None or self.need_pixels:
            frames = clip.frames(list(idx) + [ref_idx])
            if padded:  # a headshot placed where half-body heads are (HPA data); ``valid`` = 0 on the padding
                layout = headshot_layout(np.asarray(clip.array("landmarks"))[:, list(MP_TO_68), :2], w, d.head_box or DEFAULT_HEAD_BOX)
                out = [pad_headshot(f, layout) for f in frames]
                frames, valid = np.stack([o[0] for o in out]), out[0][1]
            frames = np.stack([resize_frame(f, w, h) for f in frames])
            sample.update(pixels=frames_to_tensor(frames[:nf]), reference=frames_to_tensor(frames[nf]))
        sample["audio"], applied = self._audio(clip, idx, rng)
        sample["audio_augmented"] = torch.tensor(bool(applied))
        drop = draw_dropout(rng, d)
        p_pose = pose_dropout_at(at)
        drop_pose = bool(rng.random() < p_pose)
        no_speech = clip.kind == "pose"  # fully pose-driven clips: the audio is always the unconditional one
        sample["drop_reference"], sample["drop_audio"] = torch.tensor(bool(drop[0])), torch.tensor(bool(drop[1] or no_speech))
        sample["drop_condition"] = torch.tensor(bool(drop[2] or drop_pose))
        sample["loss_mask"] = torch.from_numpy(valid)[None].expand(nf, h, w).clone()
        if d.condition == "landmarks":
            parts = rls_parts(rng, d.rls.parts, d.rls.drop_prob) if d.rls.enabled else list(d.landmark_parts)
            sample["cond"] = self._landmark_images(clip, idx, parts, (w, h))
            sample["parts_mask"] = torch.tensor([p in parts for p in d.rls.parts])
        elif d.condition == "face_mask":
            sample["cond"] = torch.from_numpy(face_mask_image(clip, (w, h)))[None, None]
        else:
            kps = [frame_keypoints(clip, i, (w, h), layout if padded else None) for i in idx]
            pics, amask = pose_pictures(clip, idx, kps, phase, (w, h), padded)
            sample["cond"] = torch.from_numpy(pics).float().div(255.0).permute(3, 0, 1, 2)  # (3, F, H, W)
            sample["audio_mask"] = torch.from_numpy(amask * valid)  # a padded headshot's masks end at its border
            sample["keypoints"] = torch.from_numpy(np.stack([k.all_points() for k in kps]).astype(np.float32))
        sample["face_box"] = torch.from_numpy(self._face_box(clip, idx, (w, h), layout if padded else None))
        sample["headshot_padded"] = torch.tensor(padded)
        return sample

    def _reference_index(self, rng, n: int, idx: np.ndarray) -> int:
        """A frame at least ``data.ref_min_gap`` frames from every target frame (inside the window counts as 0);
        in a clip too short for that, one of the frames farthest from the targets."""
        gap = self.cfg.data.ref_min_gap
        dist = np.abs(np.arange(n)[:, None] - np.asarray(idx, dtype=np.int64)[None, :]).min(axis=1)
        cand = np.flatnonzero(dist >= gap) if gap > 0 else np.arange(n)
        if not len(cand):
            cand = np.flatnonzero(dist == dist.max())
        return int(rng.choice(cand))

    def _audio(self, clip: ClipReader, idx: np.ndarray, rng) -> tuple[torch.Tensor, dict]:
        plan = draw_audio_aug(rng, self.cfg.data.audio_aug) if clip.kind != "pose" else {}
        if plan:
            wave = np.asarray(clip.array("audio16k"))
            return augmented_chunks(wave, idx, clip.fps, self.whisper(), plan), plan
        return stored_chunks(clip.array("whisper"), len(clip.array("audio16k")), idx, clip.fps), plan

    def _landmark_images(self, clip: ClipReader, idx, parts, size) -> torch.Tensor:
        from echomimic_lib.landmarks import draw_landmarks

        lm = clip.array("landmarks")
        imgs = np.stack([draw_landmarks(np.asarray(lm[i]), size, parts, normed=True) if parts else
                         np.zeros((size[1], size[0], 3), np.uint8) for i in idx])
        return torch.from_numpy(imgs).float().div(255.0).permute(3, 0, 1, 2)  # (3, F, H, W)

    def _face_box(self, clip: ClipReader, idx, size, layout) -> np.ndarray:
        """Union face box of the sample's frames, normalised (x0, y0, x1, y1); the whole image if unknown."""
        if not clip.has("face_boxes"):
            return np.array([0, 0, 1, 1], np.float32)
        b = np.asarray(clip.array("face_boxes"))[np.asarray(idx)]
        box = np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()], np.float64)
        if layout is not None:
            box = layout.to_canvas(box.reshape(2, 2)).reshape(4) / layout.size
        return np.clip(box, 0, 1).astype(np.float32)


def frame_keypoints(clip: ClipReader, i: int, size, layout=None):
    """Keypoints of frame ``i`` in output pixels: DWPose for half-body / pose clips, face mesh for headshots
    (placed into the half-body canvas by ``layout`` when padded)."""
    if clip.kind in ("halfbody", "pose"):
        return keypoints_from_pose(clip.pose(), int(i), size)
    lm = np.asarray(clip.array("landmarks")[int(i)], dtype=np.float64)[:, :2]
    if layout is not None:  # headshot padded into the half-body canvas
        lm = layout.to_canvas(lm) / layout.size
    return keypoints_from_landmarks(lm, size)


def pose_pictures(clip: ClipReader, idx, kps, phase, size, padded: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A phase's V2 condition pictures (F, H, W, 3) uint8 (its keypoint groups; hands as the inference drawing)
    and audio-attention masks (F, H, W) float32 (zeros muted, lips / head partial attention, ones global)."""
    from echomimic_lib.pose import draw_hands

    mode = phase.audio
    if padded and mode != "muted":
        mode = "head"  # Head Partial Attention for headshot samples
    imgs, masks = [], []
    for j, i in enumerate(idx):
        body = clip.kind in ("halfbody", "pose")
        hands = draw_hands(clip.pose(), int(i), size) if body and "hands" in phase.pose_parts else None
        imgs.append(draw_pose(kps[j], size, phase.pose_parts, hands))
        if mode == "lips":
            masks.append(lips_mask(kps[j], size))
        elif mode == "head":
            masks.append(head_mask(kps[j], size))
        else:
            masks.append(np.full((size[1], size[0]), 0.0 if mode == "muted" else 1.0, np.float32))
    return np.stack(imgs), np.stack(masks)


LATENT_KEYS = ("latent_mean", "latent_std", "ref_latent")


def collate(samples: list[dict]) -> dict:
    """Stack samples; cached latents are kept only when every sample has them (else the VAE encodes the batch)."""
    if any(LATENT_KEYS[0] in x for x in samples) and not all(LATENT_KEYS[0] in x for x in samples):
        samples = [{k: v for k, v in x.items() if k not in LATENT_KEYS} for x in samples]
    return torch.utils.data.default_collate(samples)


def make_loader(cfg: TrainConfig, pools: Pools, rank: int, start_pos: int, whisper_path: str | None, num_workers: int | None = None,
                latent_key: str | None = None):
    ds = EchoDataset(cfg, pools, rank, whisper_path, latent_key)
    sampler = ResumableSampler(cfg, pools, rank, start_pos)
    nw = cfg.data.num_workers if num_workers is None else num_workers
    return torch.utils.data.DataLoader(ds, batch_size=cfg.optim.batch_size, sampler=sampler, num_workers=nw, collate_fn=collate,
                                       persistent_workers=False, prefetch_factor=2 if nw > 0 else None)
