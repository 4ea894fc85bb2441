"""``echomimic-train prepare``: a folder of talking-head / half-body videos -> a training set on disk.

Per clip: frames at a fixed fps, cropped (headshot: one square around the face for the whole clip, framed by
the inference's V1 rule, :mod:`.prepare_headshot`; half-body: the reference's half-body crop rule via
:mod:`echomimic_lib.pose.align`; pose: the whole frame; full: the whole frame in its own aspect, no detector,
:mod:`.prepare_full`), 16 kHz audio and its whisper feature rows (only with a whisper model: EchoMimicV3 needs none),
per-frame face landmarks and face boxes, and for half-body / pose clips the DWPose whole-body keypoints
(:mod:`.prepare_body`). Cleaning rules are in :mod:`.clean`; storage in :mod:`.store`; the settings a dataset was
prepared with, and the check that a resumed run uses the same, in :mod:`.prepare_settings`.

Resumable: a clip is written into ``<id>.partial`` and renamed when complete, and its status file is
written last with its video's path, size and modification time; a re-run skips every clip that has a status file
(kept or dropped) of the same video (path and size), and prepares again one whose video was replaced or whose folder is
gone (a log line says why); a rewrite cut short is put right at the start (:func:`.store.recover_clips`). ``num_workers`` /
``worker_index`` split the input list so several processes prepare disjoint clips into the same folder.
"""
from __future__ import annotations

import logging
import re
import time
import unicodedata
import zlib
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from .clean import PrepareConfig, Verdict
from .clip import ClipStatus, Tools
from .curate import curation_counts, load_sync_model
from .prepare_body import prepare_body
from .prepare_full import prepare_full
from .prepare_headshot import prepare_headshot
from .prepare_settings import check_same_settings, model_identities, whisper_identity
from .status import clip_missing, drop_stale_clip, source_changed, source_stamp, status_path
from .store import PARTIAL, recover_clips, write_json_atomic
from .video import VIDEO_SUFFIXES

log = logging.getLogger(__name__)


MAX_ID_BYTES = 200  # a clip id names its folder, '<id>.partial', '.old~<id>' and 'status/<id>.json': under 255 bytes


def clip_id(video: Path, input_root: Path, out_root: Path | None = None) -> str:
    """The clip's name in the dataset: the path under the input folder, suffix dropped, parts joined by '__', every run
    of characters other than letters and digits (of any script: '日本.mp4' is clip '日本'), '_', '.', '-' as one '_'.
    A name past :data:`MAX_ID_BYTES` in UTF-8 is cut and ends in a hash of the whole. With ``out_root``, a video that
    dataset holds under the id of earlier versions (ASCII letters only: '日本.mp4' was '_') keeps that id."""
    rel = video.relative_to(input_root).with_suffix("")
    name = unicodedata.normalize("NFC", "__".join(rel.parts))  # macOS' decomposed 'ö' is the composed one
    cid = re.sub(r"[^\w.-]+", "_", name)
    cid = cid.replace(".", "_") if not cid.strip(".") else cid  # '..mp4' / '...mp4': never '.' or '..' (a folder above)
    if len(cid.encode()) > MAX_ID_BYTES:
        tail = f"-{zlib.crc32(name.encode()):08x}"
        cid = cid.encode()[:MAX_ID_BYTES - len(tail)].decode(errors="ignore") + tail
    if out_root is not None:
        old = ascii_clip_id(video, input_root)
        if old != cid and not status_path(out_root, cid).is_file() and _stamped_for(status_path(out_root, old), video, input_root):
            return old
    return cid


def ascii_clip_id(video: Path, input_root: Path) -> str:
    """The clip id earlier versions gave a video (letters and digits of ASCII only)."""
    rel = video.relative_to(input_root).with_suffix("")
    cid = re.sub(r"[^A-Za-z0-9_.-]+", "_", "__".join(rel.parts))
    return cid.replace(".", "_") if not cid.strip(".") else cid


def _stamped_for(status: Path, video: Path, input_root: Path) -> bool:
    """``status`` was written for ``video`` (its source stamp names the video's path under the input folder)."""
    from .status import _status_row

    if not status.is_file():
        return False
    row = _status_row(status)  # (unreadable: a str, no stamp)
    stamp = row.get("source_stamp") if isinstance(row, dict) else None
    return isinstance(stamp, dict) and stamp.get("path") == video.relative_to(input_root).as_posix()


def list_videos(input_dir: Path) -> list[Path]:
    return sorted(p for p in Path(input_dir).rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def check_clip_ids(videos: list[Path], input_root: Path, out_root: Path | None = None) -> None:
    """Refuse, before any model is loaded, two videos that map to one clip id (``talk.mp4`` and ``talk.mov``,
    ``a b.mp4`` and ``a_b.mp4``, ``x/y.mp4`` and ``x__y.mp4``; ids that differ only in case too, as the clips'
    folders and status files would be one on macOS / Windows): the second would be skipped as done, or overwrite the
    first. Ids are not made unique by a suffix, since which video got which would hang on the listing order."""
    from ..config import ConfigError

    seen: dict[str, Path] = {}
    for video in videos:
        cid = clip_id(video, input_root, out_root)
        if cid.endswith(PARTIAL):  # the name of another clip's folder while it is written (and removed by recover_clips)
            raise ConfigError(f"{video} would become clip '{cid}', a name prepare keeps for a clip being written ('<clip>"
                              f"{PARTIAL}'). Rename it (e.g. {video.name.replace(PARTIAL, '_partial')}) and run prepare again.")
        first = seen.setdefault(cid.casefold(), video)
        if first is not video:
            raise ConfigError(f"{first} and {video} both become clip '{clip_id(first, input_root, out_root)}' (a clip id is the "
                              "path under the input folder, its suffix dropped and characters other than letters, digits, "
                              "'_', '.', '-' replaced by '_', compared ignoring case): one would overwrite or hide the "
                              f"other. Rename one of them (e.g. {video.stem}_2{video.suffix}) and run prepare again.")




def check_options_and_files(cfg: PrepareConfig, whisper_path, worker_index: int, num_workers: int) -> None:
    """The options in range and the whisper file there (no model loaded)."""
    from echomimic_lib.errors import EchoMimicError

    from .clean import check_options

    try:
        check_options(cfg)
    except ValueError as exc:
        raise EchoMimicError(str(exc)) from None
    if not (num_workers >= 1 and 0 <= worker_index < num_workers):
        raise EchoMimicError(f"--worker-index {worker_index} --workers {num_workers}: the index must be 0..workers-1")
    if whisper_path is not None and not Path(whisper_path).is_file():
        raise EchoMimicError(f"--whisper {whisper_path}: file not found; give whisper-tiny's checkpoint "
                             "(audio_processor/whisper_tiny.pt of a model folder; `echomimic download` fetches it).")


def preflight(cfg: PrepareConfig, whisper_path, landmarker_model, pose_detector, device, worker_index: int, num_workers: int):
    """Options and tools, checked before any clip: a bad option or a broken model stops the run with its own
    message instead of marking every clip 'unreadable'. Returns the run's :class:`Tools` (models loaded)."""
    check_options_and_files(cfg, whisper_path, worker_index, num_workers)
    tools = Tools(whisper_path, landmarker_model, pose_detector, device)
    try:
        if whisper_path is not None:  # without one no whisper rows are stored (EchoMimicV3 data)
            tools.whisper  # noqa: B018 - load now: a broken file is reported as such, not as a bad clip
        tools.sync_net = load_sync_model(cfg.curate)  # the lip_sync filter's SyncNet, checked before any clip
        if landmarker_model is not None and (cfg.kind == "headshot" or cfg.face_landmarks and cfg.kind == "halfbody"):
            tools.landmarker  # noqa: B018 - a given model is checked now; a missing one stops the run at the first clip
    except BaseException:
        tools.close()
        raise
    return tools


def _the_clips_fault(exc: BaseException, out_root: Path) -> bool:
    """A clip is recorded as dropped only for its own faults: a full disk, or anything that went wrong writing
    the output folder, is the run's (the clip is prepared again once it is fixed)."""
    from echomimic_lib.errors import WeightsError
    from echomimic_lib.io.file_safety import disk_full

    if disk_full(exc) or isinstance(exc, WeightsError):  # a full disk, a missing or broken model: the run's problem
        return False
    name = getattr(exc, "filename", None) or getattr(exc, "path", None)  # a WriteError names the clip it was writing
    if isinstance(exc, OSError) and name:
        try:
            Path(name).resolve().relative_to(out_root.resolve())
            return False
        except ValueError:
            pass
    return True


def check_folders(input_dir, output_dir) -> None:
    """Before any model is loaded: the videos' folder exists, and the output is a new or empty folder or a prepared
    dataset (resumed), never the videos' folder itself nor a folder of other files (its manifest.jsonl, report.jsonl,
    config would be replaced and the clips mixed into it)."""
    from ..config import ConfigError

    src, out = Path(input_dir), Path(output_dir)
    if not src.is_dir():
        raise ConfigError(f"{src}: {'not a folder' if src.exists() else 'not found'}; give the folder of your videos "
                          "(searched recursively).")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; give a folder for the prepared dataset (a new one, or one to resume).")
    if out.exists() and out.resolve() == src.resolve():
        raise ConfigError(f"the output {out} is the videos' folder {src}: the prepared clips, manifest.jsonl and "
                          "report.jsonl would be written among your videos. Give a new folder, e.g. "
                          f"{src.resolve().parent / (src.resolve().name + '_prepared')}.")
    if not out.is_dir() or (out / "prepare_config.json").is_file() or (out / "status").is_dir() and (
            (out / "report.jsonl").is_file() or any(out.glob("shard-*"))):  # status/ alone may be a folder of the user's
        return  # new, or a prepared dataset (a resume, another worker's, or one an older version wrote without its config)
    foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # hidden: another worker's partial config
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise ConfigError(f"the output {out} is a folder of other files ({shown}), not a prepared dataset: prepare writes "
                          "manifest.jsonl, report.jsonl, prepare_config.json, status/ and shard-*/ into it, replacing any "
                          "of these. Give a new or empty folder (or a dataset prepared before, to resume it).")


def _no_videos(input_dir: Path):
    from ..config import ConfigError

    others = sorted(str(p.relative_to(input_dir)) for p in input_dir.rglob("*") if p.is_file())
    held = (f"; it holds {', '.join(others[:4])}{f' and {len(others) - 4} more' if len(others) > 4 else ''}, none a video"
            if others else "; it is empty")
    return ConfigError(f"no videos found under {input_dir} (looked for {', '.join(VIDEO_SUFFIXES)}, recursively){held}: "
                       "give the folder that holds your videos (a silent video needs a same-name audio file beside it).")




def prepare_dataset(input_dir, output_dir, cfg: PrepareConfig, whisper_path, landmarker_model=None, pose_detector=None,
                    worker_index: int = 0, num_workers: int = 1, progress: bool = True, device: str = "cpu") -> dict:
    """Prepare every video under ``input_dir`` (this worker's share) into ``output_dir``; returns the summary.
    ``whisper_path`` None: no whisper rows are stored (enough for EchoMimicV3; the V1/V2 trainer refuses such clips)."""
    from tqdm import tqdm

    input_dir, out_root = Path(input_dir), Path(output_dir)
    check_folders(input_dir, out_root)
    videos = list_videos(input_dir)
    check_options_and_files(cfg, whisper_path, worker_index, num_workers)  # a wrong option first: it says more
    if not videos:  # before any model loads, and nothing written: an empty dataset folder would pass for a prepared one
        raise _no_videos(input_dir)
    check_clip_ids(videos, input_dir, out_root)
    whisper, models = whisper_identity(whisper_path), model_identities(cfg, landmarker_model, pose_detector)
    check_same_settings(out_root, cfg, whisper, models)
    tools = preflight(cfg, whisper_path, landmarker_model, pose_detector, device, worker_index, num_workers)
    out_root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_root / "prepare_config.json", {**asdict(cfg), "whisper": whisper, **models})
    def mine(cid: str) -> bool:
        return zlib.crc32(cid.encode()) % num_workers == worker_index

    recover_clips(out_root, mine)  # this worker's clip writes a killed run cut short (trainer/data/store.py)
    videos = [v for v in videos if mine(clip_id(v, input_dir, out_root))]
    fn = {"headshot": prepare_headshot, "full": prepare_full}.get(cfg.kind, prepare_body)
    done, unstamped = Counter(), []
    bar = tqdm(videos, desc=f"prepare ({cfg.kind})", unit="clip", disable=not progress)
    try:
        for video in bar:
            cid = clip_id(video, input_dir, out_root)
            stamp = source_stamp(video, input_dir)
            if status_path(out_root, cid).is_file():
                why = source_changed(status_path(out_root, cid), stamp, unstamped)
                gone = clip_missing(status_path(out_root, cid), out_root) if why is None else None
                if why is None and gone is None:
                    done["skipped (done before)"] += 1
                    continue
                log.warning("clip %s is prepared again: %s", cid, why or gone)
                done["redone (video changed)" if why else "redone (clip folder missing)"] += 1
            t0 = time.time()
            try:
                st = fn(video, cid, out_root, cfg, tools)
            except (OSError, ValueError, RuntimeError) as exc:
                if isinstance(exc, RuntimeError) and "DWPose" in str(exc) or not _the_clips_fault(exc, out_root):
                    raise  # not the clip's: nothing is recorded, so a rerun after the fix prepares it
                st = ClipStatus(cid, str(video), "dropped", "unreadable", f"{type(exc).__name__}: {exc}", kind=cfg.kind, fps=cfg.fps)
            if st.status != "ok":  # a clip kept from the video before: out of the dataset's folder with its status
                drop_stale_clip(out_root, cid, cfg.num_shards)
            write_json_atomic(status_path(out_root, cid), {**st.record(), "source_stamp": stamp,
                                                           "prepare_seconds": round(time.time() - t0, 2)})
            done["kept" if st.status == "ok" else "dropped"] += 1
            bar.set_postfix(done)
    finally:
        tools.close()
    summary = finalize(out_root)
    summary["this_run"] = dict(done)
    if whisper_path is None:
        summary["no_whisper"] = True
    return summary


def finalize(out_root: Path) -> dict:
    """Merge the status files into ``manifest.jsonl`` (kept clips) and ``report.jsonl`` (all), atomically."""
    import json

    from echomimic_lib.io.json_file import read_json

    from ..config import ConfigError

    out_root = Path(out_root)
    thresholds = _curate_thresholds(out_root)  # (a damaged settings file: said before anything is written)
    rows = []
    for p in sorted((out_root / "status").glob("*.json")):  # a damaged disk or copy: named, and the manifest before is kept
        row = read_json(p, "unreadable status file", "delete it and run the same prepare command again (its clip is "
                        "prepared again)", ConfigError)
        why = _not_a_status_row(row)
        if why:
            raise ConfigError(f"{p}: not a status file prepare wrote ({why}); delete it and run the same prepare command "
                              "again (its clip is prepared again)")
        if not isinstance(row.get("id"), str):  # (a hand-edited or older row: named by its file, as status_path names it)
            row["id"] = p.stem
        rows.append(row)
    kept = [r for r in rows if r["status"] == "ok"]
    from echomimic_lib.io.file_safety import write_text_atomic

    for name, items in (("manifest.jsonl", kept), ("report.jsonl", rows)):
        write_text_atomic(out_root / name, "".join(json.dumps(r, sort_keys=True) + "\n" for r in items))
    by_reason = Counter(r["reason"] for r in rows if r["status"] != "ok")
    curation = _curation_record(out_root, rows, thresholds)
    return {"clips": len(rows), "kept": len(kept), "kept_seconds": round(sum(r["seconds"] for r in kept), 2),
            "dropped": dict(by_reason), "rows": rows, "curation": curation}


def _not_a_status_row(row) -> str:
    """Why ``row`` is not a clip's status row as :meth:`ClipStatus.record` writes it ("" when it is one)."""
    import math

    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    if not isinstance(row.get("status"), str):
        return "no text 'status'"
    seconds = row.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "'seconds' is not a number of seconds"
    if row["status"] != "ok" and not isinstance(row.get("reason"), str):
        return "a dropped clip without a text 'reason'"
    return ""


def _curate_thresholds(out_root: Path) -> dict:
    """The curation thresholds the dataset was prepared with (``prepare_config.json``'s ``curate``; {} without one)."""
    from echomimic_lib.io.json_file import kind_of, read_json

    from ..config import ConfigError

    conf = out_root / "prepare_config.json"
    if not conf.exists():
        return {}
    fix = ("delete it and run the same prepare command again (it writes the file anew from the command's settings; "
           "finished clips are skipped)")
    settings = read_json(conf, "unreadable settings file", fix, ConfigError, expect=dict)
    thresholds = settings.get("curate") or {}
    if not isinstance(thresholds, dict):
        raise ConfigError(f"{conf}: unreadable settings file (its curate holds {kind_of(thresholds)} where an object "
                          f"{{...}} belongs); {fix}")
    return thresholds


def _curation_record(out_root: Path, rows: list[dict], thresholds: dict) -> dict:
    """``curation.json``: the curation thresholds of the run (``prepare_config.json``) and the clips each filter removed."""
    record = {"removed": curation_counts(rows), "thresholds": thresholds}
    write_json_atomic(out_root / "curation.json", record)
    return record


def summary_table(summary: dict) -> str:
    """The end-of-run table: kept clips and every drop reason with counts and seconds."""
    rows = summary["rows"]
    lines = [f"{'status':<10} {'reason':<16} {'clips':>6} {'seconds':>10}", "-" * 45]
    kept = [r for r in rows if r["status"] == "ok"]
    lines.append(f"{'kept':<10} {'':<16} {len(kept):>6} {sum(r['seconds'] for r in kept):>10.1f}")
    for reason in sorted({r["reason"] for r in rows if r["status"] != "ok"}):
        rs = [r for r in rows if r["status"] != "ok" and r["reason"] == reason]
        lines.append(f"{'dropped':<10} {reason:<16} {len(rs):>6} {sum(r['seconds'] for r in rs):>10.1f}")
    lines.append("-" * 45)
    lines.append(f"{'total':<27} {len(rows):>6}")
    removed = summary.get("curation", {}).get("removed", {})
    if any(removed.values()) or any(v is not None for k, v in summary.get("curation", {}).get("thresholds", {}).items()
                                    if k in ("syncnet", "max_yaw", "max_camera_motion")):
        lines.append("curation removed: " + ", ".join(f"{k} {v}" for k, v in removed.items()) + " (curation.json)")
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"  dropped {r['id']}: {r['reason']} ({r.get('detail', '')})")
    if summary.get("no_whisper"):
        lines.append(NO_WHISPER_NOTE)
    return "\n".join(lines)


NO_WHISPER_NOTE = ("prepared without --whisper: no whisper.npy was written (EchoMimicV3 LoRA training needs none; "
                   "V1/V2 training needs a dataset prepared with --whisper)")


__all__ = ["PrepareConfig", "Verdict", "prepare_dataset", "finalize", "summary_table", "clip_id", "check_clip_ids", "list_videos"]
