"""Batch-queue EchoMimic jobs on a running ComfyUI through its HTTP API (standard library only).

For every (portrait, audio) pair of two folders — or every (video, audio) pair, for the dubbing workflow: upload both files (``POST /upload/image``, which ComfyUI
also uses for audio and video), put their names into an API-format workflow (``workflows/api/*.json``),
give ``SaveVideo`` (or the EchoMimic samplers that write to a file) a per-job filename prefix, and ``POST /prompt``. With ``--wait`` it polls
``GET /history/<prompt_id>`` and lists the saved files.

    echomimic queue workflows/api/v1_audio.json --portraits faces/ --audios speech/ \\
        [--server http://127.0.0.1:8188] [--driving clip.mp4] [--seed 42] [--wait] [--dry-run]
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

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
AUDIO_EXT = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus"}
VIDEO_EXT = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}
DEFAULT_SERVER = "http://127.0.0.1:8188"


class QueueError(EchoMimicError):
    """The server refused a request, or the inputs cannot be queued."""


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
        raise QueueError(f"{url}: HTTP {exc.code}: {_explain(body) or exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError) or "timed out" in str(exc.reason):
            raise QueueError(f"{url}: no answer within {timeout:.0f} s; is ComfyUI busy or hung? Try again, or raise --timeout.") from None
        raise QueueError(f"cannot reach ComfyUI at {url} ({exc.reason}); is it running (python main.py --listen)?") from None
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


def _explain(body: str) -> str:
    """The error message of a refused request: ComfyUI's ``error`` and ``node_errors``, else the first 500 characters
    of whatever the server answered (an answer of any other shape is shown, never a crash)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:500]
    if not isinstance(data, dict):
        return body[:500]
    error = data.get("error", "")
    lines = [str(error.get("message", error) if isinstance(error, dict) else error)]
    node_errors = data.get("node_errors")
    for node, info in (node_errors.items() if isinstance(node_errors, dict) else ()):
        info = info if isinstance(info, dict) else {"errors": [{"message": str(info)}]}
        errors = info.get("errors")
        for err in (errors if isinstance(errors, list) else [errors]):
            err = err if isinstance(err, dict) else {"message": str(err)}
            lines.append(f"node {node} ({info.get('class_type')}): {err.get('message')}: {err.get('details')}")
    return "; ".join(x for x in lines if x) or body[:500]


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


def post_prompt(server: str, prompt: dict, client_id: str, timeout: float | None = None) -> str:
    reply = _request(f"{server}/prompt", json.dumps({"prompt": prompt, "client_id": client_id}).encode(),
                     {"Content-Type": "application/json"}, timeout)
    pid = reply.get("prompt_id")
    if isinstance(pid, int) and not isinstance(pid, bool):
        pid = str(pid)
    if not isinstance(pid, str) or not pid.strip():  # null, an object: nothing was queued that can be waited for or named
        raise QueueError(f"{server}/prompt: the answer holds no prompt_id ({str(reply)[:120]}); is this ComfyUI?")
    return pid


def wait_for(server: str, prompt_id: str, timeout: float = 3600.0, poll: float = 2.0, request_timeout: float | None = None) -> dict:
    """The /history entry of a finished prompt (raises if it failed or takes longer than ``timeout``)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        entry = _request(f"{server}/history/{prompt_id}", timeout=request_timeout).get(prompt_id)
        if entry is not None:
            failure, _ = outcome(server, prompt_id, entry)
            if failure == CANCELLED:
                raise QueueError(f"prompt {prompt_id} was {CANCELLED}.")
            if failure:
                raise QueueError(f"prompt {prompt_id} failed: {failure}")
            return entry
        time.sleep(poll)
    raise QueueError(f"prompt {prompt_id} did not finish within {timeout:.0f} s.")


def _malformed(server: str, prompt_id: str, what: str) -> QueueError:
    return QueueError(f"{server}/history/{prompt_id}: the answer is not ComfyUI's history ({what}); is this ComfyUI's "
                      "address, and is the server a current ComfyUI?")


CANCELLED = "cancelled (interrupted) before it finished"


def outcome(server: str, prompt_id: str, entry) -> tuple[str | None, list[str]]:
    """(why it failed -- the node's exception message, or :data:`CANCELLED` -- or None; the saved files) of a /history
    entry; a reply of another shape is a QueueError, not
    a traceback (a proxy's or another service's JSON)."""
    if not isinstance(entry, dict):
        raise _malformed(server, prompt_id, f"an entry of type {type(entry).__name__}")
    status = entry.get("status") or {}
    if not isinstance(status, dict):
        raise _malformed(server, prompt_id, "its status is not an object")
    if status.get("status_str") == "error":
        messages = status.get("messages") or []
        events = {m[0]: m[1] for m in messages if isinstance(m, (list, tuple)) and len(m) == 2 and isinstance(m[0], str)}
        if "execution_interrupted" in events:
            return CANCELLED, []
        err = events.get("execution_error")
        msg = str(err.get("exception_message", "")).strip() if isinstance(err, dict) else ""
        return msg or "see the ComfyUI log", []
    return None, saved_files(entry, server, prompt_id)


def saved_files(entry: dict, server: str = "", prompt_id: str = "") -> list[str]:
    """The saved files (``subfolder/filename``, as the server names them) of a history entry's outputs."""
    outputs = entry.get("outputs") or {}
    if not isinstance(outputs, dict):
        raise _malformed(server, prompt_id, "its outputs are not an object")
    out = []
    for node_out in outputs.values():
        if not isinstance(node_out, dict):
            continue
        for item in [*(node_out.get("images") or []), *(node_out.get("gifs") or [])]:
            if isinstance(item, dict):
                out.append("/".join(str(x) for x in (item.get("subfolder"), item.get("filename")) if x))
    return out


def queue_folder(workflow, portraits, audios, server: str = DEFAULT_SERVER, seed: int | None = None,
                 driving=None, wait: bool = False, dry_run: bool = False, prefix: str = "echomimic",
                 videos=None, timeout: float = REQUEST_TIMEOUT) -> list[dict]:
    """Queue every portrait (or, with ``videos``, every video) x audio job; returns one dict per job
    (prompt_id, prefix, files when waited)."""
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
    client_id = uuid.uuid4().hex

    def name_of(path: Path) -> str:
        if path not in names:
            names[path] = path.name if dry_run else upload(server, path, timeout)
        return names[path]

    drive = name_of(Path(driving)) if driving else None
    for job in jobs:
        if job.is_video:
            prompt = build_prompt(template, None, name_of(job.audio), job.prefix, seed, name_of(job.portrait), True)
        else:
            prompt = build_prompt(template, name_of(job.portrait), name_of(job.audio), job.prefix, seed, drive)
        result = {"portrait": str(job.portrait), "audio": str(job.audio), "prefix": job.prefix, "prompt": prompt}
        if not dry_run:
            result["prompt_id"] = post_prompt(server, prompt, client_id, timeout)
        results.append(result)
    if wait and not dry_run:
        for result in results:
            result["files"] = saved_files(wait_for(server, result["prompt_id"], request_timeout=timeout))
    return results


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
    if len(servers) > 1 and not args.dry_run:  # several servers: echomimic_lib.jobs.batch.comfy_servers
        from .batch.comfy_servers import queue_spread

        try:
            recs = queue_spread(sys.modules[__name__], args.workflow, args.portraits, args.audios, servers, args.results or ".", args.seed,
                                args.driving, args.prefix, args.videos)
        except EchoMimicError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
        for r in recs:
            sys.stdout.write(f"{r['name']}: {r['status']} on {r.get('server')} {r.get('output') or r.get('error', '')}\n")
        return 1 if any(r["status"] != "ok" for r in recs) else 0
    try:
        results = queue_folder(args.workflow, args.portraits, args.audios, servers[0], args.seed, args.driving,
                               args.wait, args.dry_run, args.prefix, args.videos, timeout=args.timeout)
    except EchoMimicError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    for r in results:
        status = r.get("prompt_id", "dry run")
        line = f"{Path(r['portrait']).name} x {Path(r['audio']).name} -> {r['prefix']} [{status}]"
        sys.stdout.write(" ".join([line, *r.get("files", [])]) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog="python -m echomimic_lib.jobs.queue_client"))
