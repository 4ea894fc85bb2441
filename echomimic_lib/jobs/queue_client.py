"""Batch-queue EchoMimic jobs on a running ComfyUI through its HTTP API (standard library only).

For every (portrait, audio) pair of two folders — or every (video, audio) pair, for the dubbing workflow: upload both files (``POST /upload/image``, which ComfyUI
also uses for audio and video), put their names into an API-format workflow (``workflows/api/*.json``),
give ``SaveVideo`` (or the EchoMimic samplers that write to a file) a per-job filename prefix, and ``POST /prompt``. With ``--wait`` it polls
``GET /history/<prompt_id>`` and lists the saved files.

    echomimic queue workflows/api/v1_audio.json --portraits faces/ --audios speech/ \\
        [--server http://127.0.0.1:8188] [--driving clip.mp4] [--seed 42] [--wait | --resume [--retry-failed]] [--dry-run]
    echomimic queue workflows/api/v1_dub_video.json --videos people/ --audios speech/ --wait

This module is the HTTP client (requests, uploads, prompts, waiting) and keeps every public name importable; the jobs
and prompts are :mod:`.queue_plan`, one server's run :mod:`.queue_run`, several servers'
:mod:`.batch.comfy_servers`, the command line :mod:`.queue_cli`, the state kept for ``--resume`` :mod:`.queue_state`,
each request's overall deadline :mod:`.queue_deadline`.
"""
from __future__ import annotations

import argparse
import errno
import http.client
import json
import math
import mimetypes
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from ..errors import printable
from ..io.json_file import loads_json
from . import queue_cli, queue_run
from .queue_deadline import Deadline
from .queue_plan import (AUDIO_EXT, DEFAULT_SERVER, IMAGE_EXT, LABEL_BYTES, SAVING_NODES, VIDEO_EXT, Job,  # noqa: F401
                         build_prompt, find_node, load_workflow, plan_jobs)
from .queue_replies import (CANCELLED, PromptFailed, QueueError, QueueInterrupted, QueueStopped,  # noqa: F401
                            accepted_with_errors, explain, html_page, in_queue, job_label, lost, not_queued, outcome,
                            queue_place, saved_files, say_about, still_open)
from .queue_watch import QueueWatch
from .queue_state import QueueState, default_path, fingerprint, plan_mark  # noqa: F401

# ------------------------------------------------------------------------------------------ HTTP
REQUEST_TIMEOUT = 60.0  # seconds one request may take before the client gives up (--timeout)
MAX_REPLY_BYTES = 64 * 1024 * 1024  # the largest answer read (ComfyUI's replies are kilobytes; /history of many jobs, a few MB)


def check_server(server: str) -> str:
    """``server`` without a trailing slash, or a :class:`QueueError` when it is not an http(s) URL."""
    try:
        parts = urllib.parse.urlsplit(str(server).strip())
    except ValueError:  # (an IPv6 bracket left open: urllib's own error)
        parts = urllib.parse.SplitResult("", "", "", "", "")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise QueueError(f"--server {_masked(server)!r} is not a ComfyUI address; give a URL like {DEFAULT_SERVER}.")
    if "@" in parts.netloc:  # (urllib would look up "bob:pw@host" as a host name; the URL is kept in the state file)
        raise QueueError(f"--server {_masked(server)!r} gives a user name (user:password@): this client sends no "
                         f"login, and --server is written into the state file and its messages; give ComfyUI's own "
                         f"address (a remote one through an SSH tunnel: ssh -L 8188:127.0.0.1:8188 HOST, then --server "
                         f"{DEFAULT_SERVER}).")
    return str(server).strip().rstrip("/")


def _masked(server) -> str:
    """``server`` with what comes before an ``@`` in its address (a user name and password) left out."""
    head, sep, rest = str(server).strip().partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{head}{sep}***@{netloc.rpartition('@')[2]}{slash}{path}" if "@" in netloc else str(server).strip()


LOGIN = ("the server asks for a login (a proxy or an auth extension in front of ComfyUI; this client sends none): give "
         "--server ComfyUI's own address, e.g. through an SSH tunnel: ssh -L 8188:127.0.0.1:8188 HOST, then --server "
         f"{DEFAULT_SERVER}")


def _request(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float | None = None) -> dict:
    timeout = REQUEST_TIMEOUT if timeout is None else timeout
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    deadline = Deadline(2 * timeout)  # the whole answer within twice --timeout, not only each read (a trickling server)
    try:
        with deadline.open(req, timeout) as resp:
            body = _read_capped(resp, url).decode("utf-8", "replace")
            if deadline.expired:
                raise _too_slow(url, timeout)
    except QueueError:
        raise
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(MAX_REPLY_BYTES).decode("utf-8", "replace")  # only explained: a cut-off answer is shown cut
        except (OSError, http.client.HTTPException, ValueError):
            body = ""
        if 300 <= exc.code < 400:  # (never followed: a POST would be sent on as a GET, its upload or prompt dropped)
            err = QueueError(f"{url}: HTTP {exc.code}: the server redirects to {exc.headers.get('Location') or '?'} "
                             "(ComfyUI's API never redirects: a proxy, a login page or http -> https?); give --server "
                             "ComfyUI's own address.")
            err.code, err.retry_after = exc.code, None
            raise err from None
        why = f"{explain(body) or exc.reason}" + (f"; {LOGIN}" if exc.code in (401, 407) else "")
        err = QueueError(f"{url}: HTTP {exc.code}: {why}")
        err.code, err.retry_after = exc.code, (exc.headers or {}).get("Retry-After")
        raise err from None
    except (OSError, http.client.HTTPException, ValueError) as exc:  # unreachable, silent, dropped, a malformed answer
        raise _failed(url, exc, timeout, deadline.expired) from None
    finally:
        deadline.stop()
    if not body.strip():  # (every answer this client asks for is JSON; ComfyUI's empty history is "{}")
        raise QueueError(f"{url}: the server's answer is empty, not JSON; is this ComfyUI's address and port (not a web "
                         "page or another service)?")
    page = html_page(body)
    what = (f"an HTML page ({page!r}), not JSON" if page is not None else
            f"something that is not JSON ({body[:80].strip()!r}...)")
    reply = loads_json(body, url, f"the server answered with {what}",
                       "is this ComfyUI's address and port (not a web page or another service)?", QueueError)
    if not isinstance(reply, dict):
        raise QueueError(f"{url}: unexpected answer {body[:80]!r}; is this ComfyUI's address?")
    return reply


def _failed(url: str, exc: BaseException, timeout: float, expired: bool) -> QueueError:
    """What a request that raised ``exc`` (no HTTP answer) says: the overall deadline ran out (``expired``: it shut the
    connection), no answer within ``timeout``, the server cannot be reached, or the exchange broke. The first three
    have ``no_answer`` set (the server cannot be asked now: ``--resume`` lists the jobs its state says finished)."""
    if expired:
        return _too_slow(url, timeout)
    unreachable = isinstance(exc, urllib.error.URLError)
    reason = exc.reason if unreachable else exc
    if isinstance(reason, TimeoutError) or (unreachable and "timed out" in str(reason)):
        err = QueueError(f"{url}: no answer within {timeout:g} s; is ComfyUI busy or hung? Try again, or raise --timeout.")
    elif unreachable:
        parts = urllib.parse.urlsplit(url)
        never = never_connected(reason)
        sent = (" The prompt was NOT queued (the connection was refused: it never reached the server), so running the "
                "same command again is safe (add --resume to keep what an earlier run queued)."
                if never and parts.path.endswith("/prompt") else "")
        err = QueueError(f"cannot reach ComfyUI at {parts.scheme}://{parts.netloc} ({reason}, on {parts.path}); is it "
                         "running? Start it (python main.py; --listen to reach it from another machine) or give its "
                         "address with --server URL." + sent)
        err.never_sent, err.said_sent = never, sent  # (several servers say it once for the job: comfy_servers)
    else:
        err = QueueError(f"{url}: the request failed ({type(exc).__name__}: {exc}); is this ComfyUI's address?")
        err.broken = True  # (a connection reset mid-answer: a question asked again while waiting, :func:`passing`)
        return err
    err.no_answer = True
    return err


def never_connected(reason) -> bool:
    """Whether a request that failed with ``reason`` (an URLError's) never reached the server: the connection was refused
    (nothing listens: the server is down), or the name or the network cannot be reached. urllib raises these only while
    connecting; a reset or a timeout once connected may come after the request arrived."""
    if isinstance(reason, (ConnectionRefusedError, socket.gaierror)):
        return True
    return isinstance(reason, OSError) and reason.errno in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH)


def _too_slow(url: str, timeout: float) -> QueueError:
    err = QueueError(f"{url}: the server's answer did not come whole within {2 * timeout:g} s (twice --timeout; the "
                     "connection stayed open with little sent); is ComfyUI hung, or is this not ComfyUI's address? Raise "
                     "--timeout, or give --server ComfyUI's address.")
    err.no_answer = err.too_slow = True  # (too_slow: hung or not ComfyUI, never asked again: :func:`passing`)
    return err


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
    returns the name LoadImage/LoadAudio/LoadVideo expect (the one the server chose). An answer that fails in passing
    (:func:`passing`: a proxy's 502, busy, a reset) is sent again, as a poll is asked again (the file again: harmless)."""
    boundary = uuid.uuid4().hex
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{form_name(path.name)}"\r\n'
        f'Content-Type: {mime}\r\n\r\n'.encode(),
        path.read_bytes(),
        f'\r\n--{boundary}--\r\n'.encode(),
    ]
    data, headers = b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    # (sent again after a passing error: an identical file is kept under its name)
    reply = _again(lambda: _request(f"{server}/upload/image", data, headers, timeout), f"{path.name} is sent again", "")
    if not isinstance(reply.get("name"), str):
        raise QueueError(f"{server}/upload/image: the answer names no uploaded file ({str(reply)[:120]}); is this ComfyUI?")
    return f"{reply['subfolder']}/{reply['name']}" if reply.get("subfolder") else reply["name"]


def form_name(name: str) -> str:
    """``name`` as a browser writes it into a multipart header's quoted ``filename`` (RFC 7578 4.2, the HTML standard):
    ``"``, CR and LF percent-encoded, and ``\\`` too (ComfyUI's aiohttp reads ``\\x`` as ``x``), as are the bytes of
    a name that is not UTF-8 (``x%FF.png``); ComfyUI keeps the name as sent (``say %22hi%22.png``), and the workflow is
    given the name its answer says."""
    name = name.replace("\\", "%5C").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    return "".join(f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else c for c in name)


BUSY_TRIES = 6  # a server (or its proxy) answering 429 / 503 (queue full, busy) is asked again, this many times in all


def _busy_wait(err: QueueError, attempt: int) -> float:
    try:
        seconds = float(getattr(err, "retry_after", None))
    except (TypeError, ValueError):  # no Retry-After, or a date
        seconds = math.nan
    if not math.isfinite(seconds):  # ... or nan / inf, which time.sleep refuses: 1, 2, 4, ... s
        return float(min(2 ** attempt, 30))
    return min(max(seconds, 0.0), 60.0)


def post_prompt(server: str, prompt: dict, client_id: str, timeout: float | None = None, prompt_id: str | None = None) -> str:
    """Queue ``prompt``; its prompt_id. A 429 / 503 answer (nothing was queued) is retried after its Retry-After.
    ``prompt_id``: the id asked for (ComfyUI keeps the one a client sends, so a run can record it before sending: a
    Ctrl-C while the answer comes does not lose it; an older ComfyUI answers with its own, which is returned)."""
    body = {"prompt": prompt, "client_id": client_id, **({"prompt_id": prompt_id} if prompt_id else {})}
    data = json.dumps(body).encode()
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
        sys.stderr.write(printable(warning) + "\n")
    return pid


QUEUE_CHECK_S = 10.0  # while a prompt is not in /history: how often the server is asked whether it still has it
QUEUE_FULL_S = 120.0  # ... the whole /queue at most this often while GET /prompt's count stays the same (queue_watch)


def _history(server: str, prompt_id: str, timeout: float | None):
    return _request(f"{server}/history/{prompt_id}", timeout=timeout).get(prompt_id)


POLL_TRIES = 5  # a /history question while waiting that failed in passing (:func:`passing`) is asked this many times


def passing(err: QueueError) -> bool:
    """Whether a failed question (a GET: asking again changes nothing on the server) may pass: a proxy's or a busy
    server's 429 / 502 / 503 / 504, no answer in time, a connection broken (reset) or timed out. Not: a connection
    refused (nothing listens: the server is down, and a restarted one has lost its prompts anyway), an answer
    trickling past twice --timeout (hung, or not ComfyUI: asking again would take as long each time), any other HTTP
    answer, or an answer that is not ComfyUI's (the wrong address)."""
    code = getattr(err, "code", None)
    if code is not None:
        return code in (429, 502, 503, 504)
    if getattr(err, "never_sent", False) is True or getattr(err, "too_slow", False) is True:
        return False
    return bool(getattr(err, "no_answer", False) or getattr(err, "broken", False))


def _poll_history(server: str, prompt_id: str, timeout: float | None):
    """:func:`_history` while waiting: a question that failed in passing (a flaky network, a proxy's 502, a restart)
    is asked again after 1, 2, 4, 8 s (or its Retry-After), a line each, up to :data:`POLL_TRIES` in all, before the
    error ends the wait (before: one failed poll ended a run of hours, every prompt left on the server)."""
    return _again(lambda: _history(server, prompt_id, timeout), "asked again", "; the prompts go on on the server")


def _again(ask, again: str, after: str):
    """``ask()``, asked again after an error that passes (:func:`passing`) after 1, 2, 4, 8 s (or its Retry-After), up
    to :data:`POLL_TRIES` tries in all, a note each: "note: ERROR; ``again`` in N s (i of 4``after``)"."""
    for attempt in range(POLL_TRIES):
        try:
            return ask()
        except QueueError as err:
            if not passing(err) or attempt == POLL_TRIES - 1:
                raise
            pause = _busy_wait(err, attempt)
            sys.stderr.write(printable(f"note: {err}; {again} in {pause:g} s ({attempt + 1} of {POLL_TRIES - 1}{after})")
                             + "\n")
            time.sleep(pause)
    return None  # (never reached: the last try returns or raises)


def _queued(server: str, prompt_id: str, timeout: float | None, places: list | None = None) -> bool | None:
    """Whether ``server``'s /queue still holds ``prompt_id`` (None: the answer says nothing, e.g. too large);
    ``places``: a list given to hold where it is there (:func:`.queue_replies.queue_place`)."""
    try:
        reply = _request(f"{server}/queue", timeout=timeout)
    except QueueError as exc:
        if "cannot reach" in str(exc):
            raise
        return None
    if places is not None:
        places[:] = [queue_place(reply, prompt_id)]
    return in_queue(reply, prompt_id)


def wait_for(server: str, prompt_id: str, timeout: float = 3600.0, poll: float = 2.0, request_timeout: float | None = None,
             on_wait=None, watch: QueueWatch | None = None) -> dict:
    """The /history entry of a finished prompt (raises if it failed or takes longer than ``timeout``). ``on_wait(place)``:
    called before each pause while it is not finished, ``place`` what /queue last said of it (``running``, ``queued,
    3 prompt(s) before it``; None: not said), for a line now and then (:meth:`.queue_progress.Progress.waiting`).
    Whether the server still has it (a restart loses it) is asked cheaply every QUEUE_CHECK_S (``watch``, a
    :class:`.QueueWatch` of ``server`` shared by a run's waits: :func:`watcher`; a new one when not given)."""
    end, watch = time.monotonic() + timeout, watch or watcher(server, request_timeout)
    while time.monotonic() < end:
        entry = _poll_history(server, prompt_id, request_timeout)
        if entry is None and watch.look() and watch.holds(prompt_id) is False:
            entry = _poll_history(server, prompt_id, request_timeout)  # (it may have finished between the two questions)
            if entry is None:  # neither queued nor done: a restarted server lost it; waiting would take the whole hour
                raise lost(server, prompt_id)
        if entry is not None:
            failure, _ = outcome(server, prompt_id, entry)
            if failure == CANCELLED:
                raise PromptFailed(f"prompt {prompt_id} was {CANCELLED}.")
            if failure:
                raise PromptFailed(f"prompt {prompt_id} failed: {failure}")
            return entry
        if on_wait is not None:
            on_wait(watch.place(prompt_id))
        time.sleep(poll)
    raise QueueError(f"prompt {prompt_id} did not finish within {timeout:.0f} s.")


def watcher(server: str, timeout: float | None) -> QueueWatch:
    """A :class:`.QueueWatch` of ``server`` asking with this module's :func:`_request` (looked up when asked)."""
    return QueueWatch(server, lambda url, timeout=None: _request(url, timeout=timeout), timeout, QUEUE_CHECK_S,
                      QUEUE_FULL_S)


def queue_folder(workflow, portraits, audios, server: str = DEFAULT_SERVER, seed: int | None = None,
                 driving=None, wait: bool = False, dry_run: bool = False, prefix: str = "echomimic",
                 videos=None, timeout: float = REQUEST_TIMEOUT, resume: bool = False, state=None, retry_failed: bool = False,
                 attempts: int = 3, quiet: bool = False) -> list[dict]:
    """:func:`echomimic_lib.jobs.queue_run.queue_folder` with this module's HTTP calls."""
    return queue_run.queue_folder(sys.modules[__name__], workflow, portraits, audios, server, seed, driving, wait, dry_run,
                                  prefix, videos, timeout, resume, state, retry_failed, attempts, quiet)


def _still_there(server: str, prompt_id: str, timeout: float | None, watch: QueueWatch | None = None) -> bool:
    """Whether ``server`` has ``prompt_id`` finished or queued (not lost in a restart; an unclear queue: waited for;
    a question that fails in passing: asked again, :func:`_poll_history`). ``watch``: a :class:`.QueueWatch` shared by
    the jobs of a ``--resume`` (its last look serves them all: a prompt of an earlier run not queued then and not in
    /history asked after it is lost), so a long queue is not fetched whole for each job."""
    if _poll_history(server, prompt_id, timeout) is not None:
        return True
    watch = watch or watcher(server, timeout)
    watch.look()
    return watch.holds(prompt_id) is not False


build_parser = queue_cli.build_parser


def main(argv=None, prog: str = "echomimic queue", parser_class=argparse.ArgumentParser) -> int:
    """``echomimic queue ...`` (also ``python -m echomimic_lib.jobs.queue_client ...``): :func:`.queue_cli.main`."""
    return queue_cli.main(sys.modules[__name__], argv, prog, parser_class)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog="python -m echomimic_lib.jobs.queue_client"))
