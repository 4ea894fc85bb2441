"""The held-out validation split: clips training never reads, from which validation draws.

Clips are held out by *group*, so one identity never sits on both sides: a clip's group is the ``group`` field of
its manifest row when the dataset gives one (e.g. a speaker id), else the folder it came from inside the prepared
input tree (``speaker_07/clip_003.mp4`` -> ``speaker_07``; put each speaker's videos in one folder), else the
clip itself (a top-level video). Groups are ordered by a hash of their name and the run's seed, and taken in that
order until at least ``data.val_clips`` clips are held out: the same datasets and seed always give the same split,
on every rank, and adding clips to a dataset moves no other group across the line.

``data.val_clips``: ``None`` (default) holds out one group when validation is on (``validation.every > 0``) and
none otherwise; a number holds out at least that many clips (0: none, validation then renders a training clip).
Only clips validation can render are held out (V2 pose condition: half-body clips). When holding out would leave
no training clip of a kind (e.g. no half-body clip): the default falls back to validating on a training clip with a warning; an explicit
``val_clips`` is refused with the fix. ``validation.clip`` names the clip to validate on: its group is held out.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

from ..config import ConfigError
from .store import ClipEntry

log = logging.getLogger(__name__)


class SplitError(ConfigError):
    """The datasets are too small for the held-out split that was asked for."""


@dataclass(frozen=True)
class Split:
    train: list[int]  # indices of the entries training reads
    val: list[int]  # held-out indices (empty: validation falls back to a training clip)
    groups: list[str]  # the held-out groups
    fallback: str = ""  # why nothing was held out although validation is on ("" when not)


def clip_group(entry: ClipEntry) -> str:
    """The identity group of a clip (see the module docstring)."""
    if entry.group:
        return f"group:{entry.group}"
    return entry.id.rsplit("__", 1)[0] if "__" in entry.id else entry.id


def validation_candidates(entries: list[ClipEntry], condition: str) -> list[int]:
    """Clips validation can render: any for V1, half-body clips for the V2 pose condition."""
    return [i for i, e in enumerate(entries) if condition != "pose" or e.kind == "halfbody"]


def _order_key(group: str, seed: int) -> int:
    return zlib.crc32(f"{seed}:{group}".encode("utf-8"))


def split_entries(entries: list[ClipEntry], val_clips: int | None, validation_on: bool, condition: str = "landmarks",
                  seed: int = 0, named_clip: str | None = None) -> Split:
    """The held-out split of ``entries`` (see the module docstring)."""
    want = (1 if validation_on else 0) if val_clips is None else int(val_clips)
    if want < 0:
        raise SplitError(f"data.val_clips: {val_clips} must be 0 or more (or left out: one group when validation is on)")
    everything = list(range(len(entries)))
    if want == 0 and (not named_clip or val_clips == 0):
        return Split(everything, [], [], "data.val_clips is 0" if validation_on else "")
    cand = validation_candidates(entries, condition)
    groups: dict[str, list[int]] = {}
    for i in cand:
        groups.setdefault(clip_group(entries[i]), []).append(i)
    order = sorted(groups, key=lambda g: (_order_key(g, seed), g))
    if named_clip:
        named = [g for g in order if any(entries[i].id == named_clip for i in groups[g])]
        if not named:
            raise SplitError(f"validation.clip: no clip '{named_clip}' that validation can render in data.roots; "
                             "give a clip id from a manifest.jsonl (V2: a half-body clip)")
        order = named + [g for g in order if g != named[0]]
        want = max(want, 1)
    held, val = [], []
    for g in order:
        if len(val) >= want:
            break
        held.append(g)
        val += groups[g]
    train = sorted(set(everything) - set(val))
    emptied = sorted({entries[i].kind for i in val} - {entries[i].kind for i in train})
    if emptied:
        msg = (f"holding out {len(val)} clip(s) ({', '.join(held)}) for validation leaves no {'/'.join(emptied)} clip to train on: "
               f"the datasets have {len(groups)} identity group(s) that validation can use")
        if val_clips is None and not named_clip:
            log.warning("%s; validation renders a training clip instead (add clips of another speaker or folder to hold one out)", msg)
            return Split(everything, [], [], msg)
        raise SplitError(f"data.val_clips / validation.clip: {msg}. Add clips of another identity (another folder or manifest "
                         "'group'), or set data.val_clips: 0 to validate on a training clip.")
    return Split(train, sorted(val), held)
