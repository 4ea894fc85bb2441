"""``echomimic batch``: check every row, skip the finished ones, render the rest on the workers, record each row.

Order: the manifest is read, the --device list checked and the output folder locked (:mod:`.lock`: one batch per
folder), every row checked (:mod:`.manifest`, :mod:`.plan`; rows that cannot be understood stop the
batch before any weight loads), finished rows are skipped (:mod:`.results`), rows whose inputs are unusable
become error rows, the rest go to the workers (:mod:`.workers`, or Ray: :mod:`.ray_backend`), grouped by weight
set. Each finished row is appended to ``results.jsonl`` at once. One progress bar covers the batch (rows done of
the total, frames per second, ETA) and names the rows being rendered with their sampling progress.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

from ...io.file_safety import ExistingFileError
from .lock import BatchLock
from .manifest import check_jobs
from .outdir import check_outdir, check_results_file, check_stale_folder, move_to_stale
from .results import FILE_NAME, ResultsFile, is_done, read_results, remove_partials

log = logging.getLogger(__name__)


@dataclass
class BatchOptions:
    workers: int | None = None     # None: one per local GPU, else 1 (CPU)
    device: str = "auto"           # auto | cpu | cuda | cuda:N,cuda:M (local only: Ray assigns the GPUs)
    threads: int | None = None     # CPU threads per worker (default: the cores shared out)
    scores: bool = True            # weight-free `echomimic evaluate` scores per row
    max_attempts: int = 3          # a row whose worker dies is retried until this many attempts
    row_timeout: float | str | None = None  # local workers: seconds (or "30m", "2h") a row may take; None: no limit
    backend: str = "local"         # local | ray
    ray_address: str | None = None
    quiet: bool = False
    dry_run: bool = False          # check every row and say what a run would do; nothing rendered, loaded or written
    on_event: object = None        # callable(kind, worker, job, payload): tests and embedding programs
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.device = str(self.device or "auto").strip().lower()  # CUDA:0 / Cuda, as --device of a single command takes them
        self.row_timeout = parse_row_timeout(self.row_timeout)


@dataclass
class BatchSummary:
    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    to_render: int = 0             # rows handed to the workers (a dry run: rows that would be)
    stopped: str = ""              # why the batch stopped before every row was rendered (a full disk)
    records: list = field(default_factory=list)
    stale: dict = field(default_factory=dict)  # name -> where its earlier video went (a dry run: where it is)
    downloads: list = field(default_factory=list)  # a dry run: the files the run would download (file, from, to)
    smoke: dict = field(default_factory=dict)  # a dry run: models folder -> rows to render there with tiny random weights

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def parse_row_timeout(value) -> float | None:
    """``--row-timeout``: seconds as a number, or with a unit (``90s``, ``30m``, ``2h``); None/"" : no limit."""
    from ...errors import EchoMimicError

    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    try:
        seconds = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise EchoMimicError(f"--row-timeout {value}: use a time above 0, in seconds (1800) or with a unit (90s, 30m, "
                             "2h); leave it out for no limit.")
    return seconds


MAX_WORKERS = 256  # local worker processes of one batch (each loads its own models: more is no batch a machine runs)


def worker_devices(opts: BatchOptions) -> list[str]:
    """One device name per worker (``--device`` checked: a GPU named twice, one this machine lacks, cpu mixed with
    GPUs, or a name that is not a device are refused before any row is checked)."""
    import torch

    from ...errors import EchoMimicError

    device = opts.device
    if "cpu" in [d.strip() for d in device.split(",")] and device != "cpu":
        raise EchoMimicError(f"--device {device}: use either the CPU (--device cpu, with --workers N) or a list of GPUs "
                             "(cuda:0,cuda:1), not both in one batch.")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EchoMimicError(f"--device {device}: no CUDA GPU is available; use --device cpu.")
        gpus = _gpu_list(device, torch.cuda.device_count())
    elif device in ("auto", "cpu"):
        gpus = []
    else:
        raise EchoMimicError(f"--device {device}: use auto, cpu, cuda or a list like cuda:0,cuda:1.")
    if opts.workers is not None and opts.workers < 1:
        raise EchoMimicError(f"--workers {opts.workers}: use 1 or more.")
    if opts.workers is not None and opts.workers > MAX_WORKERS:  # (10**12 built a list of that many: out of memory)
        raise EchoMimicError(f"--workers {opts.workers}: use at most {MAX_WORKERS} (each worker is a process that loads its "
                             "own models); leave it out for one per local GPU, else 1.")
    if gpus:
        n = opts.workers or len(gpus)
        return [gpus[i % len(gpus)] for i in range(n)]
    return ["cpu"] * (opts.workers or 1)


def _gpu_list(device: str, count: int) -> list[str]:
    from ...devices import parse_device  # the one reading of cuda:N (as --device of a single command)
    from ...errors import EchoMimicError

    names = [d.strip() for d in device.split(",")]
    if names == ["cuda"]:
        return [f"cuda:{i}" for i in range(count)]
    have = f"this machine has {count} GPU(s): cuda:0" + (f" to cuda:{count - 1}" if count > 1 else "")
    out = []
    for name in names:  # (cpu among them was refused by worker_devices)
        parsed = parse_device(name)
        if parsed is None or parsed[0] != "cuda" or parsed[1] is None:
            raise EchoMimicError(f"--device {device}: '{name}' is not a GPU; write each as cuda:N, e.g. cuda:0,cuda:1.")
        gpu = f"cuda:{parsed[1]}"
        if parsed[1] >= count:
            raise EchoMimicError(f"--device {device}: there is no {gpu}; {have} (CUDA_VISIBLE_DEVICES counts).")
        if gpu in out:
            raise EchoMimicError(f"--device {device}: names {gpu} twice; name each GPU once, and give --workers N for "
                                 "more workers per GPU (e.g. --device cuda:0 --workers 2).")
        out.append(gpu)
    return out


class _Display:
    """One tqdm bar for the batch: rows done / total, frames per second, ETA; the rows in flight as a postfix."""

    def __init__(self, total: int, disable: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="job", desc="batch", disable=disable, dynamic_ncols=True)
        self.t0, self.frames, self.current = time.perf_counter(), 0, {}

    def event(self, kind, worker, job, payload) -> None:
        wid = getattr(worker, "wid", "-")
        if kind == "start":
            self.current[wid] = f"{job.name} loading"
        elif kind == "progress":
            self.current[wid] = f"{job.name} {payload[0]}/{payload[1]}"
        elif kind in ("done", "died"):
            self.current.pop(wid, None)
            if kind == "done":
                self.frames += int(payload.get("frames") or 0)
                self.bar.update(1)
        rate = self.frames / max(time.perf_counter() - self.t0, 1e-6)
        now = "; ".join(f"w{k}: {v}" for k, v in sorted(self.current.items(), key=str))
        self.bar.set_postfix_str(f"{rate:.2f} frames/s" + (f" | {now}" if now else ""), refresh=True)

    def close(self) -> None:
        self.bar.close()


# every record's fields, null where they do not apply (a script reading results.jsonl finds the same columns on every
# line: ``error`` on a finished row, ``frames`` on an error row); V3 rows add theirs
RECORD_FIELDS = ("name", "line", "kind", "status", "output", "error", "seconds", "frames", "fps", "device",
                 "frames_sha256", "loaded_models", "peak_rss_gb", "peak_vram_gb", "scores", "fingerprint", "worker",
                 "attempts", "stale_video")


def _record(job, payload: dict, worker) -> dict:
    rec = dict.fromkeys(RECORD_FIELDS)
    rec.update({"name": job.name, "line": job.line, "kind": job.kind, "status": payload.get("status", "error"),
                "output": str(job.output) if payload.get("status") == "ok" else None})
    rec.update({k: v for k, v in payload.items() if rec.get(k) is None or v is not None})
    rec.update(fingerprint=job.fingerprint, worker=getattr(worker, "wid", None), attempts=job.attempts)
    return rec


def _prepare_weights(jobs) -> None:
    """Smoke rows: write the tiny random weight sets once, before the workers start (never concurrently). V3 rows:
    each learns the distinct prompts of the rows to render on its models folder (encoded in one umT5 load)."""
    from ...tiny import ensure_tiny
    from .v3 import is_v3, prepare_smoke, share_prompts

    prepare_smoke([j for j in jobs if is_v3(j)])
    share_prompts(jobs)
    for root, weights in sorted({(j.weight_key[0], j.weight_key[1]) for j in jobs if j.request.__dict__.get("smoke")
                                 and not is_v3(j)}):
        ensure_tiny(root, weights)


def refuse_foreign_outputs(todo: list, outdir) -> None:
    """A folder no batch wrote into yet (no ``results.jsonl``) may hold videos of other commands or the user's own:
    a row whose ``<name>.mp4`` is already there is refused before anything runs, never replaced. (Once the batch has
    begun, its ``results.jsonl`` exists and a rerun replaces the rows' own videos, as before.)"""
    if os.path.lexists(outdir / FILE_NAME):
        return
    found = [job for job in todo if os.path.lexists(job.output)]
    if found:
        shown = ", ".join(f"{job.output.name} (line {job.line})" for job in found[:5])
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        raise ExistingFileError(f"{outdir} already holds {shown}{more}, which no batch wrote (the folder has no "
                                f"{FILE_NAME}): rendering would replace them. Move them away, give these rows other names "
                                "(the 'name' column), or choose another -o folder.")


def set_aside_stale(jobs: list, outdir, move: bool = True) -> dict:
    """The rows to render (or failing up front) whose ``<name>.mp4`` is already there: a video of other inputs or
    settings (or a file no record names). Before anything renders it is moved, never deleted, to
    ``OUTDIR/stale/<name>.rendered-<its time>.mp4``, so a row that then fails leaves no video at its name that a
    studio could ship as the row's. Returns name -> the new path (``move`` False, a dry run: the file as it is)."""
    from datetime import datetime, timezone

    out = {}
    found = [job for job in sorted(jobs, key=lambda j: j.line)  # (said in the manifest's order)
             if os.path.lexists(job.output) and not os.path.isdir(job.output)]  # (a folder: the writer refuses it)
    if not found:
        return out
    check_stale_folder(outdir)  # a dry run says it too (a run: again as it moves, through a handle)
    for job in found:
        path = job.output
        if not move:
            out[job.name] = str(path)
            continue
        try:  # (a time past year 9999 or before year 1, which tmpfs / btrfs / xfs keep: no date)
            when = datetime.fromtimestamp(os.lstat(path).st_mtime, timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
        except (ValueError, OverflowError, OSError):
            when = "unknown-time"
        target = move_to_stale(outdir, path, f"{job.name}.rendered-{when}", path.suffix)  # (stale/ by a handle)
        out[job.name] = str(target)
        log.info("line %d (%s): its earlier video %s is from other inputs or settings; moved to %s", job.line,
                 job.name, path.name, target)
    return out


def run_batch(jobs: list, outdir, opts: BatchOptions | None = None) -> BatchSummary:
    """Run checked-or-not ``jobs`` (from :func:`.manifest.read_manifest` or :func:`.manifest.crossed`) into ``outdir``."""
    opts = opts or BatchOptions()
    from pathlib import Path

    if opts.backend == "ray":  # said before any check or load
        from .ray_backend import check_device, import_ray

        check_device(opts.device)  # cuda:N: Ray, not --device, picks the GPUs
        if opts.row_timeout:
            from ...errors import EchoMimicError

            raise EchoMimicError("--row-timeout works with the local workers only; leave it out with --backend ray "
                                 "(or use the local backend).")
        import_ray()
    else:
        worker_devices(opts)  # a wrong --device list is said before any row is checked
    outdir = Path(outdir)
    check_outdir(outdir)  # (a file, a pipe or a broken link at -o or above it: said before any row is checked)
    if opts.dry_run:  # what a run would do, found as a run finds it; no folder made, no lock, nothing written
        return _dry_run(jobs, outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with BatchLock(outdir):  # one batch per folder: a second one is refused naming the first
        check_results_file(outdir)  # before any row is checked, any video moved aside
        return _run_locked(jobs, outdir, opts)


def _dry_run(jobs: list, outdir) -> BatchSummary:
    """The run's steps in its order, each refusal in its words (and so its exit code): the folder's lock (another
    batch writing there), ``results.jsonl``, every row's checks, the finished rows, the videos no batch wrote,
    ``stale/``. What the run would download (the face model or DWPose while checking the rows, a weight set's missing
    files in the workers) is listed (:mod:`echomimic_lib.io.fetch_plan`): no network, nothing made or written."""
    from .plan import weight_downloads
    from .v3 import is_v3

    if outdir.is_dir():  # (not there yet: the run makes it, empty)
        BatchLock(outdir).check()
        check_results_file(outdir)
    jobs = check_jobs(jobs, [])
    summary, _records, todo, bad = _sort(jobs, read_results(outdir))
    if outdir.is_dir():
        refuse_foreign_outputs(todo, outdir)
        summary.stale = set_aside_stale(bad + todo, outdir, move=False)
    later = weight_downloads(todo)  # (a set wrong in another way than missing files: its rows become error rows)
    bad += [job for job in todo if job.error]
    todo = [job for job in todo if not job.error]
    summary.to_render = len(todo)
    for job in sorted(bad, key=lambda j: j.line):
        log.warning("line %d (%s) would fail: %s", job.line, job.name, job.error)
    summary.failed = len(bad)
    for job in todo:
        if getattr(job.request, "smoke", False):
            where = str(job.request.folder) if is_v3(job) else str(job.weight_key[0])
            summary.smoke[where] = summary.smoke.get(where, 0) + 1
    seen: set = set()  # only the rows that would render download anything; each file once (thousands of rows)
    for f in [f for job in todo for f in job.downloads] + later:
        if tuple(sorted(f.items())) not in seen:
            seen.add(tuple(sorted(f.items())))
            summary.downloads.append(f)
    return summary


def _sort(jobs: list, previous: dict):
    """The checked ``jobs`` told apart: finished (skipped: their records kept), error rows, rows to render."""
    summary = BatchSummary(total=len(jobs))
    records: dict[str, dict] = {}
    todo, bad = [], []
    for job in jobs:
        if is_done(job, previous):
            records[job.name] = previous[job.name]
            summary.skipped += 1
        elif job.error:
            bad.append(job)
        else:
            todo.append(job)
    summary.to_render = len(todo)
    return summary, records, todo, bad


def _run_locked(jobs: list, outdir, opts: BatchOptions) -> BatchSummary:
    jobs = check_jobs(jobs)
    previous = read_results(outdir)
    summary, records, todo, bad = _sort(jobs, previous)
    refuse_foreign_outputs(todo, outdir)
    summary.stale = stale = set_aside_stale(bad + todo, outdir)
    for job in bad:
        log.warning("line %d (%s): %s", job.line, job.name, job.error)
    results = ResultsFile(outdir)
    display = _Display(len(jobs) - summary.skipped, opts.quiet)
    if summary.skipped:
        log.info("%d of %d row(s) already done with the same inputs and settings: skipped", summary.skipped, len(jobs))

    def on_event(kind, worker, job, payload):
        full = kind == "done" and isinstance(payload, dict) and bool(payload.get("disk_full"))
        if full:
            payload = {k: v for k, v in payload.items() if k != "disk_full"}  # (not a field of the record)
        if kind == "died":
            log.warning("%s: %s; %s", job.name, payload, "retrying" if getattr(job, "retrying", False) else "giving up")
            remove_partials(job)
        if kind == "done":
            if payload.get("status") != "ok":
                remove_partials(job)
            rec = _record(job, payload, worker)
            rec["stale_video"] = stale.get(job.name)
            records[job.name] = rec
            results.append(rec)
            if rec["status"] == "ok":
                summary.ok += 1
            else:
                summary.failed += 1
                log.warning("line %d (%s) failed: %s%s", job.line, job.name, rec.get("error"),
                            f" (its earlier video, of other inputs or settings, is {stale[job.name]}, not {job.output.name})"
                            if job.name in stale else "")
        display.event(kind, worker, job, payload)
        if opts.on_event is not None:
            opts.on_event(kind, worker, job, payload)
        if full:
            raise _DiskFull(f"line {job.line} ({job.name}): {payload.get('error')}")

    try:
        for job in bad:
            on_event("done", None, job, {"status": "error", "error": job.error})
        for job in todo:
            remove_partials(job)  # left by a run that was killed half-way
        if todo:
            _prepare_weights(todo)
            try:
                _dispatch(todo, opts, on_event)
            except _DiskFull as exc:  # the rows in flight were stopped (their partial files go below)
                left = sum(1 for job in todo if job.name not in records)
                summary.stopped = (f"the disk is full ({exc}). The batch stopped there: {left} row(s) not rendered (the "
                                   "rows in flight were stopped). Free some space (OUTDIR/stale/ holds earlier videos, "
                                   "if any), then run the same command again: the finished rows are skipped.")
                log.error("%s", summary.stopped)
    finally:
        display.close()
        for job in todo:  # interrupted: the rows in flight leave nothing half-written (their workers are gone)
            if records.get(job.name, {}).get("status") != "ok":
                remove_partials(job)
        ordered = [records[j.name] for j in jobs if j.name in records]
        mine = {j.name for j in jobs}  # another manifest's rows in this folder (a big one run in parts): kept, after
        _rewrite(results, ordered + [rec for name, rec in previous.items() if name not in mine])
    summary.records = ordered
    return summary


class _DiskFull(Exception):
    """A row met a full disk: the batch stops handing out rows (every later one would render, then fail to write)."""


def _rewrite(results: ResultsFile, records: list) -> None:
    """results.jsonl rewritten whole, in the manifest's order. A write the system refuses there (a full disk) after
    every row's line was appended as it finished loses nothing (the file holds each row's line, in the order they
    finished; a row's last line counts): said, and the batch ends as its rows did. When some lines could not be
    appended either, those finished rows are unrecorded: said, naming them (a rerun renders them again)."""
    from ...errors import EchoMimicError
    from ...io.os_errors import os_error_text

    try:
        results.rewrite(records)
    except OSError as exc:
        text = os_error_text(exc, results.path, "write")
        lost = sorted(set(results.unwritten))
        if lost:
            names = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
            raise EchoMimicError(f"{text} {len(lost)} finished row(s) are not recorded in it ({names}): a run of the same "
                                 "command renders them again (their videos are moved to stale/ first); free space "
                                 "first.") from None
        log.warning("%s It keeps every row's line as written when the row finished (in that order, not the manifest's); "
                    "nothing is lost.", text)


def _dispatch(todo: list, opts: BatchOptions, on_event) -> None:
    if opts.backend == "ray":
        from .ray_backend import run_on_ray

        run_on_ray(todo, opts, on_event)
        return
    from .workers import LocalPool

    devices = worker_devices(opts)
    devices = devices[:max(1, len(todo))]
    smoke = all(getattr(j.request, "smoke", False) for j in todo)
    threads = opts.threads or (1 if smoke else max(1, (os.cpu_count() or 1) // len(devices)))
    log.info("%d job(s) on %d worker(s): %s", len(todo), len(devices), ", ".join(devices))
    pool = LocalPool(devices, threads=threads, scores=opts.scores, max_attempts=opts.max_attempts,
                     row_timeout=opts.row_timeout)
    try:
        pool.run(todo, on_event)
    except BaseException:
        pool.close(now=True)
        raise
    pool.close()
