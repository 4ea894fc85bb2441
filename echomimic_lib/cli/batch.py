"""``echomimic batch``: many animate / dub jobs from a manifest or two folders crossed (see :mod:`echomimic_lib.jobs.batch`)."""
from __future__ import annotations

from .common import add_speed_options, say

EPILOG = """\
manifest (CSV with a header, or JSONL: one JSON object a line); columns are the single commands' options:
  kind,name,reference,audio,seed,steps,width,height,version,pose,lora
  animate,anna_en,faces/anna.png,speech/en.wav,420,30,512,512,v1,,
  ,bob_v2,bob.png,speech/de.wav,,,,,v2,poses/fight,
JSONL: {"kind": "dub", "video": "clips/talk.mp4", "audio": "speech/fr.wav", "mask": "hull"}
EchoMimicV3 flash-pro rows: version v3-flash, with the options of `animate --version v3-flash` as columns, e.g.
  {"version": "v3-flash", "reference": "anna.png", "audio": "en.wav", "prompt": "A woman is speaking.", "seed": 7}
Stacked LoRAs: lora = files separated by ';' (anna.safetensors;ink.safetensors), lora-strength one value or one each
(0.8;0.5). An empty cell means "not given" (a --set value applies). Relative paths are read from the manifest's
folder. Output: OUTDIR/<name>.mp4 and OUTDIR/results.jsonl; a row rendered again whose <name>.mp4 is there
(its inputs or settings changed) has that earlier video moved to OUTDIR/stale/ first (never deleted).
Exit codes: 0 every row done (or skipped: already done with the same inputs and settings), 1 some rows failed
(their error is in results.jsonl), 2 the manifest has rows that cannot be run (all listed, nothing started).
Across machines: --backend ray (see the README, "Batch jobs")."""


def _defaults(args) -> dict:
    from ..errors import EchoMimicError

    out = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EchoMimicError(f"--set {item!r}: use KEY=VALUE, e.g. --set steps=6 (any manifest column).")
        out[key.strip()] = value
    from ..jobs.batch.manifest_row import check_set_columns

    check_set_columns(out)  # a typo said once, before the rows are read
    if args.models:
        out["models"] = args.models
    if args.offline:
        out["offline"] = "true"
    if args.smoke:
        out["smoke"] = "true"
    for flag in ("compile", "cuda_graphs"):
        if getattr(args, flag):
            out[flag] = "true"
    for option in ("deep_cache", "deep_cache_branch"):
        if getattr(args, option):
            out[option] = str(getattr(args, option))
    return out


def _check_options(args) -> None:
    """The batch's own options, before any row is read or checked: a wrong one would otherwise be said after every
    row's checks (or fail every row, exit 1, or be taken silently as another value)."""
    from pathlib import Path

    from ..errors import EchoMimicError
    from ..speed import check_deep_cache

    for flag, value, what in (("-o", args.output, "the output folder"), ("JOBS", args.jobs, "the manifest file"),
                              ("--images", args.images, "a folder"), ("--videos", args.videos, "a folder"),
                              ("--audios", args.audios, "a folder")):
        if value is not None and not str(value).strip():  # `-o $OUT` with OUT unset: never the current folder
            raise EchoMimicError(f"{flag} is empty; give {what}.")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise EchoMimicError(f"-o {out}: is a file, not a folder; the batch writes <name>.mp4 for every row and "
                             "results.jsonl into a folder: give a new or existing folder.")
    from ..jobs.batch.outdir import check_outdir

    check_outdir(out)  # a broken link or a loop of links at -o, a file above it: before the rows are read
    for flag, value, low, why in (("--workers", args.workers, 1, "leave it out: one per local GPU, else 1"),
                                  ("--threads", args.threads, 0, "0 or left out: the CPU cores shared out"),
                                  ("--attempts", args.attempts, 1, "the attempts for a row whose worker dies; default 3")):
        if value is not None and value < low:
            raise EchoMimicError(f"{flag} {value}: use {low} or more ({why}).")
    from ..jobs.batch.runner import parse_row_timeout

    if parse_row_timeout(args.row_timeout) and args.backend == "ray":
        raise EchoMimicError("--row-timeout works with the local workers only; leave it out with --backend ray.")
    if args.deep_cache:
        check_deep_cache(args.deep_cache, 0)  # the interval; the branch depends on each row's denoiser
    if args.backend == "ray":  # the --device list before the rows are read (a list this machine lacks, cuda:N with Ray)
        from ..jobs.batch.ray_backend import check_device

        check_device(str(args.device or "auto").strip().lower())
    else:
        from ..jobs.batch import BatchOptions
        from ..jobs.batch.runner import worker_devices

        worker_devices(BatchOptions(workers=args.workers, device=args.device))


def _cmd_batch(args) -> int:
    from pathlib import Path

    from ..errors import EchoMimicError
    from ..jobs.batch import BatchOptions, crossed, read_manifest, run_batch

    _check_options(args)
    defaults = _defaults(args)
    if args.jobs and (args.images or args.videos or args.audios):
        raise EchoMimicError("give a manifest file or --images/--videos with --audios, not both.")
    loose = [item.partition("=")[0].strip() for item in args.set or []]  # given to the rows whose kind has them
    if args.jobs:
        jobs = read_manifest(args.jobs, args.output, defaults, loose)
    elif args.audios:
        jobs = crossed(args.output, args.audios, images=args.images, videos=args.videos, defaults=defaults, loose=loose)
    elif args.images or args.videos:
        given = "--images" if args.images else "--videos"
        raise EchoMimicError(f"{given} needs --audios DIR: every {'image' if args.images else 'video'} is rendered "
                             "with every speech file of that folder.")
    else:
        raise EchoMimicError("nothing to do: give a manifest (JOBS) or --images DIR / --videos DIR with --audios DIR.")
    opts = BatchOptions(workers=args.workers, device=args.device, threads=args.threads, scores=not args.no_scores,
                        max_attempts=args.attempts, backend=args.backend, ray_address=args.ray_address, quiet=args.quiet,
                        dry_run=args.dry_run, row_timeout=args.row_timeout)
    if args.dry_run:
        s = run_batch(jobs, args.output, opts)
        say(f"dry run: {s.to_render} would render, {s.skipped} skipped (already done), {s.failed} would fail of {s.total}"
            f"{' (each said above with its reason)' if s.failed else ''}; nothing was downloaded, rendered or written.")
        if s.smoke:
            say(f"  {sum(s.smoke.values())} row(s) are smoke runs (--smoke): tiny random weights (64 px, 2 steps), not the "
                f"real models (their videos show noise, not the person); the run writes the tiny weights into "
                f"{', '.join(sorted(s.smoke))} first where they are not there yet.")
        if s.downloads:
            say(f"  the run would download {len(s.downloads)} file(s) first (--offline: none; rows lacking them fail):")
            for f in s.downloads:
                shards = " (then the weight shards it lists)" if f["file"].endswith(".index.json") else ""
                say(f"    {f['file']} from {f['from']} into {f['to']}{shards}")
        if s.stale:
            say(f"  {len(s.stale)} row(s) not done have an earlier video of other inputs or settings at their name "
                f"({_names(s.stale)}): a run moves each to {Path(args.output) / 'stale'}/ before rendering (never deleted; "
                f"{_size_of(s.stale.values())} more there).")
        _say_stale_folder(args.output)
        return s.exit_code
    try:
        s = run_batch(jobs, args.output, opts)
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the rows done are in results.jsonl, the rows in flight removed
        import sys

        sys.stderr.write(f"batch stopped: the finished rows are kept in {Path(args.output) / 'results.jsonl'} and the "
                         "rows in flight left nothing behind; run the same command again to resume (finished rows are "
                         "skipped).\n")
        raise
    if not args.quiet:
        say(f"batch: {s.ok} done, {s.skipped} skipped (already done), {s.failed} failed of {s.total}; results in "
            f"{Path(args.output) / 'results.jsonl'}")
    _say_stale(s, args.quiet)
    if not args.quiet:
        _say_stale_folder(args.output)
    return s.exit_code


def _say_stale_folder(outdir) -> None:
    from ..jobs.batch.outdir import stale_note

    note = stale_note(outdir)
    if note:
        say(f"  {note}")


def _size_of(paths) -> str:
    import os

    from ..jobs.batch.outdir import size_text

    total = 0
    for p in paths:
        try:
            total += os.lstat(p).st_size
        except OSError:
            pass
    return size_text(total)


def _names(names) -> str:
    names = list(names)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _say_stale(s, quiet: bool) -> None:
    """The earlier videos moved aside (``stale_video`` in results.jsonl): those of rows that failed now, each named,
    even with -q (the row has no video; the old one is not it), the others counted."""
    import sys
    from pathlib import Path

    failed = [(r["name"], r["stale_video"]) for r in s.records if r.get("stale_video") and r.get("status") != "ok"]
    for name, path in failed:
        sys.stderr.write(f"{name}: failed, and has no video now; its earlier video, from other inputs or settings, was "
                         f"moved to {path} (not the row's: do not ship it as {name}).\n")
    redone = len(s.stale) - len(failed)
    if redone and not quiet:
        say(f"{redone} row(s) rendered again replaced an earlier video of other inputs or settings; the earlier ones "
            f"are kept in {Path(next(iter(s.stale.values()))).parent}/ (stale_video in results.jsonl).")


def add_commands(sub) -> None:
    b = sub.add_parser("batch", help="many animate / dub jobs: a CSV/JSONL manifest or folders crossed, resumable, "
                                     "on every local GPU or N CPU workers", epilog=EPILOG,
                       description="Render every row of a manifest (or every image/video x audio pair). Every row is "
                                   "checked before any weight loads; models load once per worker; a rerun skips "
                                   "finished rows; a failing row is recorded and the others go on.")
    b.add_argument("jobs", nargs="?", help="manifest: .csv (with a header) or .jsonl")
    b.add_argument("-o", "--output", required=True, help="output folder: <name>.mp4 per row and results.jsonl")
    b.add_argument("--images", help="folder of reference images, crossed with --audios (animate)")
    b.add_argument("--videos", help="folder of videos, crossed with --audios (dub)")
    b.add_argument("--audios", help="folder of speech files")
    b.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a value for every row whose kind has that column (a row's own value wins), e.g. --set steps=6 "
                        "--set version=v2")
    b.add_argument("--models", help="models folder for every row (default: $ECHOMIMIC_MODELS, else ~/.cache/echomimic)")
    b.add_argument("--offline", action="store_true", help="never download; a row with missing weights fails")
    b.add_argument("--smoke", action="store_true", help="every row as `animate --smoke`: tiny random weights, 64 px, 2 steps")
    add_speed_options(b)  # columns of the same names set them per row
    b.add_argument("--workers", type=int, help="worker processes (default: one per local GPU, else 1 on the CPU)")
    b.add_argument("--device", default="auto", help="auto (every local GPU, else the CPU), cpu, cuda, or cuda:0,cuda:1 "
                                                     "(with --backend ray: auto, cpu or cuda; Ray assigns the GPUs)")
    b.add_argument("--threads", type=int, help="CPU threads per worker (default: the cores shared out; 1 with --smoke)")
    b.add_argument("--attempts", type=int, default=3, help="attempts for a row whose worker dies (killed, crashed)")
    b.add_argument("--row-timeout", metavar="TIME",
                   help="local workers: a row running longer than this (seconds, or 90s / 30m / 2h) has its worker "
                        "stopped and fails (a hung row no longer blocks the batch); default: no limit")
    b.add_argument("--no-scores", action="store_true", help="skip the weight-free evaluate scores in results.jsonl")
    b.add_argument("--resume", action="store_true",
                   help="skip the rows results.jsonl says are done with the same inputs and settings (what every rerun "
                        "does; accepted as `echomimic queue --resume` is)")
    b.add_argument("--dry-run", action="store_true",
                   help="check every row and say how many would render, be skipped (already done) or fail, and why; "
                        "nothing loads, renders or is written")
    b.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local worker processes, or a Ray cluster (pip install ray; see the README)")
    b.add_argument("--ray-address", help="Ray cluster address (default: start or join a local one)")
    b.set_defaults(func=_cmd_batch)
