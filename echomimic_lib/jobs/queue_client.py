"""Batch-queue EchoMimic jobs on a running ComfyUI through its HTTP API (standard library only).

For every (portrait, audio) pair of two folders — or every (video, audio) pair, for the dubbing workflow: upload both files (``POST /upload/image``, which ComfyUI
also uses for audio and video), put their names into an API-format workflow (``workflows/api/*.json``),
give ``SaveVideo`` (or the EchoMimic samplers that write to a file) a per-job filename prefix, and ``POST /prompt``. With ``--wait`` it polls
``GET /history/<prompt_id>`` and lists the saved files.

    echomimic queue workflows/api/v1_audio.json --portraits faces/ --audios speech/ \\
        [--server http://127.0.0.1:8188] [--driving clip.mp4] [--seed 42] [--wait | --resume] [--dry-run]
    echomimic queue workflows/api/v1_dub_video.json --videos people/ --audios speech/ --wait
"""
from __future__ import annotations

import argparse
import collections
import copy
import http.client
import itertools
import json
import mimetypes
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import EchoMimicError
from ..io.file_names import safe_file_name
from .queue_replies import (CANCELLED, PromptFailed, QueueError, QueueInterrupted, QueueStopped, accepted_with_errors, explain,
                            in_queue, job_label, lost, outcome, saved_files, still_open)
from .queue_state import QueueState, default_path, fingerprint

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
AUDIO_EXT = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus"}
VIDEO_EXT = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}
DEFAULT_SERVER = "http://127.0.0.1:8188"


@dataclass
class Job:
    portrait: Path  # the job's picture, or its video (the dubbing workflow's Load Video)
    audio: Path
    prefix: str
    is_video: bool = False


def _files(folder, exts: set, what: str) -> list[Path]:
    if not str(folder).strip():  # `--audios $DIR` with DIR unset: not the current folder
        raise QueueError(f"--{what}s is empty; give the folder of {what} files.")
    folder = Path(folder)
    if not folder.is_dir():
        raise QueueError(f"{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise QueueError(f"no {what} files ({', '.join(sorted(exts))}) in {folder}")
    return files


def plan_jobs(portraits, audios, prefix: str = "echomimic", videos=None) -> list[Job]:
    """Every portrait (or every video) x every audio, in name order, each with its own output prefix."""
    sources = _files(videos, VIDEO_EXT, "video") if videos is not None else _files(portraits, IMAGE_EXT, "portrait")
    sounds = _files(audios, AUDIO_EXT, "audio")
    label = {**_labels(sources), **_labels(sounds)}
    pairs = itertools.product(sources, sounds)
    return [Job(p, a, f"{prefix}/{label[p]}__{label[a]}", videos is not None) for p, a in pairs]


LABEL_BYTES = 110  # each file's part of a prefix: two of them, '__' and ComfyUI's '_00001_.mp4' fit in 255 bytes


def _labels(files) -> dict:
    """Each file's part of the output prefix: its stem as a file name every server's file system takes (the batch's
    rule, :func:`~echomimic_lib.io.file_names.safe_file_name`: letters of any script kept, ``take:1`` -> ``take_1``, at
    most :data:`LABEL_BYTES` bytes), or, where two files' parts are one (``anna.png`` and ``anna.jpg``; ``Anna.png``
    too, for case-blind file systems), the name with its extension (``anna_png``), then a number, so no two jobs share
    a prefix and each video says which file it came from."""
    def label(text: str) -> str:
        return safe_file_name(text, fallback="file", max_chars=LABEL_BYTES, max_bytes=LABEL_BYTES)

    out = {f: label(f.stem) for f in files}
    twice = collections.Counter(v.casefold() for v in out.values())
    out = {f: v if twice[v.casefold()] == 1 else label(f"{f.stem}_{f.suffix.lstrip('.')}") for f, v in out.items()}
    seen: collections.Counter = collections.Counter()
    for f, v in out.items():  # 'take:1.png' and 'take_1.png' are both 'take_1_png': numbered
        seen[v.casefold()] += 1
        if seen[v.casefold()] > 1:
            out[f] = f"{v}-{seen[v.casefold()]}"
    return out


def find_node(prompt: dict, class_type: str, explicit: str | None = None) -> str | None:
    """Id of the single node of ``class_type`` (or ``explicit``); None if there is none."""
    if explicit is not None:
        if explicit not in prompt:
            raise QueueError(f"node '{explicit}' is not in the workflow (ids: {', '.join(prompt)}).")
        return explicit
    ids = [k for k, v in prompt.items() if v.get("class_type") == class_type]
    if len(ids) > 1:
        raise QueueError(f"the workflow has several {class_type} nodes ({', '.join(ids)}); say which one to fill.")
    return ids[0] if ids else None


SAVING_NODES = ("SaveVideo", "EchoMimicSamplerToFile", "EchoMimicV3SamplerToFile", "EchoMimicSaveDub")  # nodes that take a filename_prefix


def build_prompt(template: dict, image: str | None, audio: str, prefix: str, seed: int | None = None,
                 driving: str | None = None, video_required: bool = False) -> dict:
    """A copy of the API-format ``template`` with the uploaded file names, the output prefix and the seed.
    ``driving`` goes into Load Video (a driving clip, or with ``video_required`` the job's own video)."""
    prompt = copy.deepcopy(template)
    for class_type, key, value in (("LoadImage", "image", image), ("LoadAudio", "audio", audio), ("LoadVideo", "file", driving)):
        node = find_node(prompt, class_type)
        if node is None and value is not None and (class_type != "LoadVideo" or video_required):
            hint = " (--videos is for the dubbing workflow, workflows/api/v1_dub_video.json)" if video_required else ""
            raise QueueError(f"the workflow has no {class_type} node to put '{value}' into; is it an API-format EchoMimic "
                             f"workflow?{hint}")
        if node is not None and value is not None:
            prompt[node]["inputs"][key] = value
    for node in prompt.values():
        if node.get("class_type") in SAVING_NODES:
            node["inputs"]["filename_prefix"] = prefix
        if seed is not None and "seed" in node.get("inputs", {}):
            node["inputs"]["seed"] = int(seed)
    return prompt


# ------------------------------------------------------------------------------------------ HTTP
REQUEST_TIMEOUT = 60.0  # seconds one request may take before the client gives up (--timeout)
MAX_REPLY_BYTES = 64 * 1024 * 1024  # the largest answer read (ComfyUI's replies are kilobytes; /history of many jobs, a few MB)


def check_server(server: str) -> str:
    """``server`` without a trailing slash, or a :class:`QueueError` when it is not an http(s) URL."""
    parts = urllib.parse.urlsplit(str(server).strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise QueueError(f"--server {server!r} is not a ComfyUI address; give a URL like {DEFAULT_SERVER}.")
    return str(server).strip().rstrip("/")


def _request(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float | None = None) -> dict:
    timeout = REQUEST_TIMEOUT if timeout is None else timeout
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = _read_capped(resp, url).decode("utf-8", "replace")
    except QueueError:
        raise
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(MAX_REPLY_BYTES).decode("utf-8", "replace")  # only explained: a cut-off answer is shown cut
        except (OSError, http.client.HTTPException, ValueError):
            body = ""
        err = QueueError(f"{url}: HTTP {exc.code}: {explain(body) or exc.reason}")
        err.code, err.retry_after = exc.code, (exc.headers or {}).get("Retry-After")
        raise err from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError) or "timed out" in str(exc.reason):
            raise QueueError(f"{url}: no answer within {timeout:.0f} s; is ComfyUI busy or hung? Try again, or raise --timeout.") from None
        parts = urllib.parse.urlsplit(url)
        raise QueueError(f"cannot reach ComfyUI at {parts.scheme}://{parts.netloc} ({exc.reason}, on {parts.path}); is it "
                         "running? Start it (python main.py; --listen to reach it from another machine) or give its "
                         "address with --server URL.") from None
    except TimeoutError:
        raise QueueError(f"{url}: no answer within {timeout:.0f} s; is ComfyUI busy or hung? Try again, or raise --timeout.") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:  # dropped connection, a malformed answer or URL
        raise QueueError(f"{url}: the request failed ({type(exc).__name__}: {exc}); is this ComfyUI's address?") from None
    try:
        reply = json.loads(body or "{}")
    except ValueError:
        raise QueueError(f"{url}: the server answered with something that is not JSON ({body[:80].strip()!r}...); is this "
                         "ComfyUI's address and port (not a web page or another service)?") from None
    if not isinstance(reply, dict):
        raise QueueError(f"{url}: unexpected answer {body[:80]!r}; is this ComfyUI's address?")
    return reply


def _read_capped(resp, url: str) -> bytes:
    """The answer's body, or a :class:`QueueError` when it is larger than :data:`MAX_REPLY_BYTES` (never more than
    that is held in memory: a wrong address can answer with an endless stream)."""
    limit = f"{MAX_REPLY_BYTES // 2**20} MiB" if MAX_REPLY_BYTES % 2**20 == 0 else f"{MAX_REPLY_BYTES} bytes"
    problem = (f"{url}: the server's answer is larger than {limit} (the most this client reads); ComfyUI's answers are "
               "far smaller: is this ComfyUI's address and port?")
    try:
        declared = int(resp.headers.get("Content-Length") or 0)
    except (TypeError, ValueError, AttributeError):
        declared = 0
    if declared > MAX_REPLY_BYTES:
        raise QueueError(problem)
    body = resp.read(MAX_REPLY_BYTES + 1)
    if len(body) > MAX_REPLY_BYTES:
        raise QueueError(problem)
    return body


def upload(server: str, path: Path, timeout: float | None = None) -> str:
    """Upload a file into ComfyUI's input folder like ComfyUI's own uploader (no overwrite: the server keeps a
    different file of the same name and stores this one as ``name (1).ext``, or reuses an identical one);
    returns the name LoadImage/LoadAudio/LoadVideo expect (the one the server chose)."""
    boundary = uuid.uuid4().hex
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\nContent-Type: {mime}\r\n\r\n'.encode(),
        path.read_bytes(),
        f'\r\n--{boundary}--\r\n'.encode(),
    ]
    reply = _request(f"{server}/upload/image", b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout)
    if not isinstance(reply.get("name"), str):
        raise QueueError(f"{server}/upload/image: the answer names no uploaded file ({str(reply)[:120]}); is this ComfyUI?")
    return f"{reply['subfolder']}/{reply['name']}" if reply.get("subfolder") else reply["name"]


BUSY_TRIES = 6  # a server (or its proxy) answering 429 / 503 (queue full, busy) is asked again, this many times in all


def _busy_wait(err: QueueError, attempt: int) -> float:
    try:
        return min(max(float(err.retry_after), 0.0), 60.0)
    except (TypeError, ValueError):  # no Retry-After, or a date: 1, 2, 4, ... s
        return float(min(2 ** attempt, 30))


def post_prompt(server: str, prompt: dict, client_id: str, timeout: float | None = None) -> str:
    """Queue ``prompt``; its prompt_id. A 429 / 503 answer (nothing was queued) is retried after its Retry-After."""
    data = json.dumps({"prompt": prompt, "client_id": client_id}).encode()
    for attempt in range(BUSY_TRIES):
        try:
            reply = _request(f"{server}/prompt", data, {"Content-Type": "application/json"}, timeout)
            break
        except QueueError as err:
            if getattr(err, "code", None) not in (429, 503) or attempt == BUSY_TRIES - 1:
                raise
            time.sleep(_busy_wait(err, attempt))
    pid = reply.get("prompt_id")
    if isinstance(pid, int) and not isinstance(pid, bool):
        pid = str(pid)
    if not isinstance(pid, str) or not pid.strip():  # null, an object: nothing was queued that can be waited for or named
        raise QueueError(f"{server}/prompt: the answer holds no prompt_id ({str(reply)[:120]}); is this ComfyUI?")
    warning = accepted_with_errors(server, pid, reply)  # queued, but some outputs failed validation: they will not run
    if warning:
        sys.stderr.write(warning + "\n")
    return pid


QUEUE_CHECK_S = 10.0  # while a prompt is not in /history: how often /queue is asked whether the server still has it


def _history(server: str, prompt_id: str, timeout: float | None):
    return _request(f"{server}/history/{prompt_id}", timeout=timeout).get(prompt_id)


def _queued(server: str, prompt_id: str, timeout: float | None) -> bool | None:
    """Whether ``server``'s /queue still holds ``prompt_id`` (None: the answer says nothing, e.g. too large)."""
    try:
        return in_queue(_request(f"{server}/queue", timeout=timeout), prompt_id)
    except QueueError as exc:
        if "cannot reach" in str(exc):
            raise
        return None


def wait_for(server: str, prompt_id: str, timeout: float = 3600.0, poll: float = 2.0, request_timeout: float | None = None) -> dict:
    """The /history entry of a finished prompt (raises if it failed or takes longer than ``timeout``)."""
    end, check = time.monotonic() + timeout, 0.0
    while time.monotonic() < end:
        entry = _history(server, prompt_id, request_timeout)
        if entry is None and time.monotonic() >= check:  # /queue holds every queued workflow: asked every 10 s at most
            check = time.monotonic() + QUEUE_CHECK_S
            queued = _queued(server, prompt_id, request_timeout)
        else:
            queued = None
        if queued is False:
            entry = _history(server, prompt_id, request_timeout)  # (it may have finished between the two questions)
            if entry is None:  # neither queued nor done: a restarted server lost it; waiting would take the whole hour
                raise lost(server, prompt_id)
        if entry is not None:
            failure, _ = outcome(server, prompt_id, entry)
            if failure == CANCELLED:
                raise PromptFailed(f"prompt {prompt_id} was {CANCELLED}.")
            if failure:
                raise PromptFailed(f"prompt {prompt_id} failed: {failure}")
            return entry
        time.sleep(poll)
    raise QueueError(f"prompt {prompt_id} did not finish within {timeout:.0f} s.")


def queue_folder(workflow, portraits, audios, server: str = DEFAULT_SERVER, seed: int | None = None,
                 driving=None, wait: bool = False, dry_run: bool = False, prefix: str = "echomimic",
                 videos=None, timeout: float = REQUEST_TIMEOUT, resume: bool = False, state=None) -> list[dict]:
    """Queue every portrait (or, with ``videos``, every video) x audio job; returns one dict per job
    (prompt_id, prefix, files when waited). Each accepted prompt is kept in ``state`` (default: ``.echomimic_queue.json``
    in the portraits / videos folder, :mod:`.queue_state`); with ``resume`` (implies ``wait``) a job whose same prompt
    an earlier run queued is not queued again: finished, its files are listed, still queued it is waited for, and only
    one the server lost (restarted) is queued again."""
    if (portraits is None) == (videos is None):
        raise QueueError("give either a portraits folder or a videos folder (--portraits or --videos), not both.")
    if videos is not None and driving:
        raise QueueError("--driving and --videos both fill Load Video; with --videos each job's video is used.")
    server = check_server(server)
    try:
        template = json.loads(Path(workflow).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QueueError(f"workflow not found: {workflow}; give an API-format workflow such as workflows/api/v1_audio.json.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise QueueError(f"{workflow}: not a readable JSON workflow ({type(exc).__name__}: {str(exc)[:120]}); use "
                         "workflows/api/*.json (or ComfyUI's 'Export (API)').") from None
    if (not isinstance(template, dict) or "nodes" in template
            or not all(isinstance(v, dict) and "class_type" in v for v in template.values())):
        raise QueueError(f"{workflow}: not an API-format workflow; use workflows/api/*.json (or ComfyUI's 'Export (API)').")
    jobs, names, results = plan_jobs(portraits, audios, prefix, videos), {}, []
    client_id, wait, marks = uuid.uuid4().hex, wait or resume, {}
    book = None if dry_run else QueueState(state if state is not None else default_path(portraits, videos))

    def name_of(path: Path) -> str:
        if path not in names:
            names[path] = path.name if dry_run else upload(server, path, timeout)
        return names[path]

    try:
        drive = name_of(Path(driving)) if driving else None
        for job in jobs:
            if job.is_video:
                prompt = build_prompt(template, None, name_of(job.audio), job.prefix, seed, name_of(job.portrait), True)
            else:
                prompt = build_prompt(template, name_of(job.portrait), name_of(job.audio), job.prefix, seed, drive)
            result = {"portrait": str(job.portrait), "audio": str(job.audio), "prefix": job.prefix, "prompt": prompt}
            if not dry_run:
                marks[job.prefix] = mark = fingerprint(prompt)
                earlier = book.known(server, job.prefix, mark) if resume else None
                if earlier is not None and ("files" in earlier or _still_there(server, earlier["prompt_id"], timeout)):
                    result.update({k: earlier[k] for k in ("prompt_id", "files") if k in earlier}, resumed=True)
                else:
                    result["prompt_id"] = post_prompt(server, prompt, client_id, timeout)
                    book.record(server, job.prefix, mark, result["prompt_id"])
            results.append(result)
        for result in (r for r in results if wait and not dry_run and "files" not in r):
            try:
                result["files"] = saved_files(wait_for(server, result["prompt_id"], request_timeout=timeout))
                book.record(server, result["prefix"], marks[result["prefix"]], result["prompt_id"], result["files"])
            except PromptFailed as exc:  # this prompt failed on the server: the others are still waited for
                result["error"] = str(exc)
    except QueueError as exc:  # prompts already queued run on: say which, and which jobs never were
        if dry_run or not results:
            raise
        raise QueueStopped(exc, results, [f"{j.portrait.name} x {j.audio.name}" for j in jobs[len(results):]], server,
                           book.ok) from None
    except KeyboardInterrupt:
        if dry_run or not results:
            raise
        raise QueueInterrupted(results, {server: still_open(results)}, book.ok) from None
    return results


def _still_there(server: str, prompt_id: str, timeout: float | None) -> bool:
    """Whether ``server`` has ``prompt_id`` finished or queued (not lost in a restart; an unclear /queue: waited for)."""
    return _history(server, prompt_id, timeout) is not None or _queued(server, prompt_id, timeout) is not False


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
                   "again only jobs not queued, changed or lost by a restarted server); implies --wait (one --server)")
    p.add_argument("--state", help="file keeping the queued prompt ids for --resume (default: .echomimic_queue.json in "
                                   "the portraits / videos folder)")
    p.add_argument("--dry-run", action="store_true", help="print the jobs, upload and queue nothing")
    p.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT, help="seconds to wait for each answer of the server "
                   f"before giving up (default: {REQUEST_TIMEOUT:.0f})")
    return p


def main(argv=None, prog: str = "echomimic queue", parser_class=argparse.ArgumentParser) -> int:
    """``echomimic queue ...`` (also ``python -m echomimic_lib.jobs.queue_client ...``); the command line passes its
    ``parser_class``, whose ``--help`` into a closed pipe exits as the other commands do."""
    p = build_parser(prog, parser_class)
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: argparse printed why
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not (args.timeout > 0 and args.timeout < 1e6):  # NaN fails both
        sys.stderr.write(f"error: --timeout {args.timeout} must be a number of seconds above 0.\n")
        return 2
    servers = args.server or [DEFAULT_SERVER]
    if len(servers) > 1 and (args.resume or args.state):
        sys.stderr.write("error: --resume and --state are for one --server; with several, results.jsonl records the jobs.\n")
        return 2
    if len(servers) > 1 and not args.dry_run:  # several servers: echomimic_lib.jobs.batch.comfy_servers
        from .batch.comfy_servers import queue_spread

        try:
            recs = queue_spread(sys.modules[__name__], args.workflow, args.portraits, args.audios, servers, args.results or ".", args.seed,
                                args.driving, args.prefix, args.videos)
        except QueueInterrupted as exc:  # (results.jsonl holds the finished jobs)
            sys.stderr.write(f"\nInterrupted. {exc.advice()}\n")
            return 130
        except EchoMimicError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
        for r in recs:
            sys.stdout.write(f"{r['name']}: {r['status']} on {r.get('server')} {r.get('output') or r.get('error', '')}\n")
        return 1 if any(r["status"] != "ok" for r in recs) else 0
    try:
        results = queue_folder(args.workflow, args.portraits, args.audios, servers[0], args.seed, args.driving,
                               args.wait, args.dry_run, args.prefix, args.videos, timeout=args.timeout, resume=args.resume,
                               state=args.state)
    except QueueInterrupted as exc:  # Ctrl-C with prompts on the server: which, and how to cancel them
        _print_results(exc.results)
        sys.stderr.write(f"\nInterrupted. {exc.advice()}\n")
        return 130
    except EchoMimicError as exc:
        _print_results(getattr(exc, "results", []))
        sys.stderr.write(f"error: {exc}\n")
        return 2
    _print_results(results)
    return 1 if any("error" in r for r in results) else 0


def _print_results(results: list[dict]) -> None:
    for r in results:
        line = f"{job_label(r)} -> {r['prefix']} [{r.get('prompt_id', 'dry run')}]"
        sys.stdout.write(" ".join([line, *r.get("files", []), *([r["error"]] if "error" in r else [])]) + "\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog="python -m echomimic_lib.jobs.queue_client"))
