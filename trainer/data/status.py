"""A prepared clip's status file (``ROOT/status/<clip>.json``, written last: the resume marker of ``prepare``) and what
a re-run reads from it: whether the clip stands for its video still (:func:`source_changed`) and whether its folder is
there (:func:`clip_missing`); :func:`drop_stale_clip` removes a clip kept from an earlier video of the same id.
"""
from __future__ import annotations

import logging
from pathlib import Path

from echomimic_lib.io.json_file import read_json

log = logging.getLogger("trainer.data.prepare")  # the prepare command's messages, under its name


def status_path(out_root: Path, cid: str) -> Path:
    return out_root / "status" / f"{cid}.json"


def source_stamp(video: Path, input_root: Path) -> dict:
    """What a clip's status records of its video: the path under the input folder, the size and modification time
    (of the file a link points to), so a re-run tells a video replaced under the same clip id from the one prepared."""
    st = video.stat()
    return {"path": video.relative_to(input_root).as_posix(), "size": st.st_size, "mtime": round(st.st_mtime, 3)}


def source_changed(status: Path, stamp: dict, unstamped: list) -> str | None:
    """Why the clip's status file no longer stands for its video (None: it does, and the clip is skipped). A status
    written before source stamps were recorded is trusted as before; the first one is said once (``unstamped``)."""

    row = _status_row(status)
    if isinstance(row, str):
        return row
    old = row.get("source_stamp", "unstamped")
    if old == "unstamped":
        if not unstamped:
            log.warning("%s and maybe other status files were written by an older version without their video's size and "
                        "time: those clips are kept as done without checking their videos (delete a clip's status/<id>.json "
                        "to prepare it again).", status)
        unstamped.append(status)
        return None
    if not isinstance(old, dict) or old.get("path") != stamp["path"]:
        return f"the clip is now {stamp['path']}, its status is of {old.get('path') if isinstance(old, dict) else old}"
    if old.get("size") != stamp["size"]:
        return f"{stamp['path']} is {stamp['size']} bytes, {old.get('size')} when it was prepared (the video was replaced)"
    return None  # the time is recorded, not compared: videos copied to another disk or machine keep their clips


class _Unreadable(Exception):
    pass


def _status_row(status: Path) -> dict | str:
    """The clip's status row, or why it cannot be read (the clip is then prepared again and its status written anew):
    not JSON, not UTF-8, nested past what the parser reads, not an object, a folder, the system refusing it."""
    try:
        return read_json(status, "its status file is unreadable", "it is written anew when the clip is prepared",
                         _Unreadable, expect=dict)
    except _Unreadable as exc:
        return str(exc)


def drop_stale_clip(out_root: Path, cid: str, num_shards: int) -> None:
    """Remove the clip's folder kept from an earlier video of the same id (a real folder in its shard, never a link)."""
    import shutil

    from .clip import shard_dir, shard_of

    folder = shard_dir(out_root, shard_of(cid, num_shards)) / cid
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)


def clip_missing(status: Path, out_root: Path) -> str | None:
    """Why a clip whose status says kept must be prepared again (None: its folder is there): the folder is gone, or
    holds no ``clip.json`` (removed by hand, or a copy of the dataset cut short), so the manifest would list a clip
    training cannot read."""
    from .store import CLIP_META

    row = _status_row(status)
    if isinstance(row, str) or row.get("status") != "ok":  # (unreadable: source_changed said it already)
        return None
    folder = Path(out_root) / str(row.get("path") or "")
    if (folder / CLIP_META).is_file():
        return None
    return f"its clip folder {folder} is {'missing' if not folder.exists() else f'damaged (no {CLIP_META})'}"
