"""Batch-queue EchoMimic jobs on a running ComfyUI through its HTTP API (standard library only).

The command line of ``echomimic queue`` (:func:`build_parser`, :func:`main`); ``client`` is the module
:mod:`echomimic_lib.jobs.queue_client`, whose docstring shows the usage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import EchoMimicError, printable
from .queue_plan import DEFAULT_SERVER
from .queue_replies import QueueInterrupted, job_label
from .queue_state import default_path

REQUEST_TIMEOUT = 60.0  # (queue_client.REQUEST_TIMEOUT: --timeout's default)
ATTEMPTS = 3  # --attempts' default (as echomimic batch's)


def build_parser(prog: str = "echomimic queue", parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``echomimic queue`` (also read by tests/test_docs_truth.py, which checks the documented lines)."""
    p = parser_class(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("workflow", help="API-format workflow JSON (workflows/api/*.json)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--portraits", help="folder of reference images (png, jpg, webp, bmp)")
    source.add_argument("--videos", help="folder of videos of people to dub (mp4, mov, webm, mkv, avi, m4v): every video x "
                                         "every audio into Load Video (workflows/api/v1_dub_video.json)")
    p.add_argument("--audios", required=True, help="folder of audio clips (wav, mp3, flac, ogg, m4a, aac, opus)")
    p.add_argument("--server", action="append", help=f"ComfyUI's address (default: {DEFAULT_SERVER}); give it several times "
                                                     "to spread the jobs by queue depth (then --wait is implied)")
    p.add_argument("--results", help="with several --server: folder for results.jsonl (default: .)")
    p.add_argument("--driving", help="driving video for the landmark / pose-extraction workflows (default: none)")
    p.add_argument("--seed", type=int, help="one seed for every job (default: the workflow's)")
    p.add_argument("--prefix", default="echomimic", help="output sub-folder / file prefix (default: echomimic)")
    p.add_argument("--wait", action="store_true", help="wait for every job and list the saved videos")
    p.add_argument("--resume", action="store_true", help="after an interrupted run: wait for the prompts it queued (queue "
                   "again only jobs not queued, changed or lost by a restarted server; with several --server each is asked about its own prompts); implies --wait")
    p.add_argument("--retry-failed", action="store_true", help="with --resume: queue again the jobs whose prompt failed on "
                   "the server (a line each; default: they are reported failed again)")
    p.add_argument("--attempts", type=int, help="with --retry-failed: the most prompts a job gets, the "
                   f"first included, before a failing one is no longer queued again (default: {ATTEMPTS})")
    p.add_argument("--state", help="file keeping the queued prompt ids for --resume (default: .echomimic_queue.json in "
                                   "the portraits / videos folder)")
    p.add_argument("--dry-run", action="store_true", help="print the jobs, upload and queue nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="errors only on stderr: no progress lines while waiting "
                   "(errors, warnings and the results stay)")
    p.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT, help="seconds to wait for each answer of the server "
                   f"before giving up (default: {REQUEST_TIMEOUT:.0f})")
    return p


def main(client, argv=None, prog: str = "echomimic queue", parser_class=argparse.ArgumentParser) -> int:
    """``echomimic queue ...`` (also ``python -m echomimic_lib.jobs.queue_client ...``); the command line passes its
    ``parser_class``, whose ``--help`` into a closed pipe exits as the other commands do. A Ctrl-C before this run
    queued any prompt (the first upload, the state lock): one line and exit code 130 under both entry points, the
    state file as it was (the run's name taken out); a SIGTERM of the ``echomimic`` command (a subclass) is its own."""
    try:
        return _main(client, argv, prog, parser_class)
    except KeyboardInterrupt as exc:  # (QueueInterrupted, prompts queued: said in _main)
        if type(exc) is not KeyboardInterrupt:
            raise
        sys.stderr.write("\nInterrupted before any prompt was queued; run the same command again to queue the jobs.\n")
        return 130


def _main(client, argv, prog: str, parser_class) -> int:
    p = build_parser(prog, parser_class)
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: argparse printed why
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not (args.timeout > 0 and args.timeout < 1e6):  # NaN fails both
        sys.stderr.write(f"error: --timeout {args.timeout} must be a number of seconds above 0.\n")
        return 2
    if args.attempts is not None and not args.retry_failed:  # (before: taken and unused, no prompt queued again)
        sys.stderr.write(f"error: --attempts {args.attempts} caps the prompts --retry-failed queues again (a failed "
                         "prompt is not retried by itself): give it with --resume --retry-failed, or leave it out.\n")
        return 2
    args.attempts = ATTEMPTS if args.attempts is None else args.attempts
    if args.attempts < 1:
        sys.stderr.write(f"error: --attempts {args.attempts} must be 1 or more (the prompts a job gets, the first "
                         "included).\n")
        return 2
    if args.retry_failed and not args.resume:
        sys.stderr.write("error: --retry-failed queues again the failed prompts of an earlier run: give it with --resume.\n")
        return 2
    where = Path(args.state).parent if args.state is not None and str(args.state).strip() else None
    if where is not None and not args.dry_run and not where.is_dir():  # (before: a warning, every job queued unrecorded)
        sys.stderr.write(printable(f"error: --state {args.state}: its folder {where} does not exist, so the queued prompts "
                                   "could not be kept (and --resume finds nothing there): create the folder, or give "
                                   "--state a file in an existing folder (the earlier run's, to resume it).") + "\n")
        return 2
    # one server written twice (a trailing slash) is one server: the addresses as the queue sends to them
    servers = list(dict.fromkeys(str(s).strip().rstrip("/") for s in args.server or [DEFAULT_SERVER]))
    if args.results is not None and len(args.server or []) < 2 and not args.dry_run:  # (before: ignored, no results.jsonl)
        sys.stderr.write(printable(f"error: --results {args.results}: results.jsonl is written only with several "
                                   "--server; with one the jobs and their files are listed here (redirect them: > "
                                   "jobs.txt): leave --results out, or give a second --server.") + "\n")
        return 2
    if len(servers) > 1 and not args.dry_run:  # several servers: echomimic_lib.jobs.batch.comfy_servers
        from .batch.comfy_servers import queue_spread

        try:
            state = args.state if args.state is not None else default_path(args.portraits, args.videos)
            recs = queue_spread(client, args.workflow, args.portraits, args.audios, servers, args.results or ".", args.seed,
                                args.driving, args.prefix, args.videos, state=state, resume=args.resume,
                                retry_failed=args.retry_failed, retry_attempts=args.attempts, request_timeout=args.timeout,
                                quiet=args.quiet)
        except QueueInterrupted as exc:  # (the jobs over listed, as one server's run does; results.jsonl holds them)
            _print_records(exc.results)
            sys.stderr.write(f"\nInterrupted. {printable(exc.advice())}\n")
            return 130
        except EchoMimicError as exc:
            sys.stderr.write(f"error: {printable(exc)}\n")
            return 2
        _print_records(recs)
        return 1 if any(r["status"] != "ok" for r in recs) else 0
    try:
        results = client.queue_folder(args.workflow, args.portraits, args.audios, servers[0], args.seed, args.driving,
                               args.wait, args.dry_run, args.prefix, args.videos, timeout=args.timeout, resume=args.resume,
                               state=args.state, retry_failed=args.retry_failed, attempts=args.attempts,
                                      quiet=args.quiet)
    except QueueInterrupted as exc:  # Ctrl-C with prompts on the server: which, and how to cancel them
        _print_results(exc.results)
        sys.stderr.write(f"\nInterrupted. {printable(exc.advice())}\n")
        return 130
    except EchoMimicError as exc:
        _print_results(getattr(exc, "results", []))
        sys.stderr.write(f"error: {printable(exc)}\n")
        return 2
    _print_results(results)
    return 1 if any("error" in r for r in results) else 0


def _print_records(recs: list[dict]) -> None:
    """Several servers' records (results.jsonl's), one line each."""
    for r in recs:  # (server words made printable: a terminal escape in an answer is shown, never acted on)
        if r.get("queued") is False:  # (no server took it: --resume queues it)
            line = f"{r['name']}: not queued: {str(r.get('error', '')).removeprefix('not queued: ')}"
        else:
            where = f" on {r['server']}" if r.get("server") else ""
            line = f"{r['name']}: {r['status']}{where} {r.get('output') or r.get('error', '')}"
        sys.stdout.write(printable(line) + "\n")


def _print_results(results: list[dict]) -> None:
    for r in results:
        line = f"{job_label(r)} -> {r['prefix']} [{r.get('prompt_id', 'dry run')}]"
        sys.stdout.write(printable(" ".join([line, *r.get("files", []), *([r["error"]] if "error" in r else [])])) + "\n")
