"""Reading ComfyUI's answers for ``echomimic queue`` (:mod:`.queue_client`; standard library only): a refused prompt's
``node_errors`` one line a node and input (server.py ``post_prompt``, execution.py ``validate_inputs``), a /history
entry's outcome with the failing node (execution.py ``handle_execution_error``), whether /queue still holds a prompt,
and what to tell a user who stops (or loses) a run with prompts still on the server."""
from __future__ import annotations

import html
import json
import shlex
import sys
from pathlib import Path

from ..errors import EchoMimicError, printable
from ..io.json_file import loads_json


class QueueError(EchoMimicError):
    """The server refused a request, or the inputs cannot be queued."""


class PromptFailed(QueueError):
    """One prompt failed on the server (an execution error, cancelled, or lost from its queue and history): the
    other prompts of the run are still waited for."""


CANCELLED = "cancelled (interrupted) before it finished"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


PAGE_HEAD = 64 << 10  # characters of an HTML answer looked at: its title or first words are said, cut to 200


def html_page(body: str) -> str | None:
    """What an HTML page says, in one line (its title, else its text without the markup), for an answer that is a web
    page (a proxy's error page, a login page) rather than ComfyUI's JSON; None when ``body`` is not HTML. Only its
    first :data:`PAGE_HEAD` characters are read, each once (an answer is up to 64 MiB: a pattern search that goes back
    over it for each ``<`` took hours over a page of unclosed tags, after the request's deadline)."""
    head = body[:1000].lstrip().lower()
    if not (head.startswith("<!doctype html") or head.startswith("<html") or "<html" in head[:200]):
        return None
    page = body[:PAGE_HEAD]
    low = page.lower()
    text = _title(page, low)
    if text is None or not text.strip():
        text = _words(page, low)
    return _one_line(html.unescape(text))[:200] or "no text"


def _title(page: str, low: str) -> str | None:
    start = low.find("<title")
    opened = low.find(">", start) if start >= 0 else -1
    end = low.find("</title>", opened) if opened >= 0 else -1
    return page[opened + 1:end] if end >= 0 else None


def _words(page: str, low: str) -> str:
    """``page`` without its tags, scripts and styles (each character looked at once)."""
    words, at = [], 0
    while at < len(page):
        lt = page.find("<", at)
        if lt < 0:
            words.append(page[at:])
            break
        words.append(page[at:lt])
        block = next((t for t in ("script", "style") if low.startswith(t, lt + 1)), None)
        close = low.find(f"</{block}", lt) if block else lt
        gt = low.find(">", close) if close >= 0 else -1
        if gt < 0:  # an unclosed tag or script: the rest is markup
            break
        at = gt + 1
    return " ".join(words)


def explain(body: str) -> str:
    """The error message of a refused request: ComfyUI's ``error``, then each of its ``node_errors`` on a line of its
    own (node id, class, input: message and details), an HTML page's title, else the first 500 characters of whatever
    the server answered (an answer of any other shape is shown, never a crash)."""
    page = html_page(body)
    if page is not None:
        return f"an HTML page ({page!r}), not ComfyUI's answer: a proxy or another web server answered"
    try:
        data = loads_json(body, "the answer", expect=dict)
    except EchoMimicError:
        return _one_line(body[:500])
    error = data.get("error", "")
    head = str(error.get("message", error) if isinstance(error, dict) else error)
    if isinstance(error, dict) and str(error.get("details") or "").strip():  # e.g. "Node ID '#5'" of a missing class_type
        head += f" ({str(error['details']).strip()})"
    lines = node_error_lines(data.get("node_errors"))
    if not lines:
        return head or _one_line(body[:500])
    return "\n".join([head or "the server refused the workflow", *lines])


def node_error_lines(node_errors) -> list[str]:
    """ComfyUI's ``node_errors`` one line a node and input: node id, class, input: message and details."""
    lines = []
    for node, info in (node_errors.items() if isinstance(node_errors, dict) else ()):
        info = info if isinstance(info, dict) else {"errors": [{"message": str(info)}]}
        errors = info.get("errors")
        for err in (errors if isinstance(errors, list) else [errors]):
            err = err if isinstance(err, dict) else {"message": str(err)}
            extra = err.get("extra_info") if isinstance(err.get("extra_info"), dict) else {}
            name = extra.get("input_name")
            where = f"node {node} ({info.get('class_type')})" + (f", input '{name}'" if name else "")
            details = str(err.get("details") or "").strip()
            said = err.get("message") or "invalid"
            lines.append(f"  {where}: {said}" + (f": {details}" if details and details != name else ""))
    return lines


def accepted_with_errors(server: str, prompt_id: str, reply: dict) -> str | None:
    """What to warn of when ComfyUI queued a prompt (200) whose ``node_errors`` name nodes it refused (server.py
    ``post_prompt`` answers ``{"prompt_id", "number", "node_errors"}``: the outputs that failed validation are left
    out, the others run); None when it names none."""
    lines = node_error_lines(reply.get("node_errors"))
    if not lines:
        return None
    return "\n".join([f"warning: {server} queued prompt {prompt_id}, but the outputs depending on these nodes failed "
                      "validation and will not run:", *lines])


def not_queued(exc: Exception) -> bool:
    """Whether a failed ``POST /prompt`` (``exc``) certainly queued nothing: the server answered with a redirect, a
    4xx or a 503, or the connection was refused (``never_sent``: the request never reached it); a 500, 502 or 504, a
    timeout or a connection reset once connected may come after the prompt was queued."""
    code = getattr(exc, "code", None)
    return getattr(exc, "never_sent", False) is True or (isinstance(code, int) and (code < 500 or code == 503))


def _malformed(server: str, prompt_id: str, what: str) -> QueueError:
    return QueueError(f"{server}/history/{prompt_id}: the answer is not ComfyUI's history ({what}); is this ComfyUI's "
                      "address, and is the server a current ComfyUI?")


def outcome(server: str, prompt_id: str, entry) -> tuple[str | None, list[str]]:
    """(why it failed -- the failing node and its exception message, or :data:`CANCELLED` -- or None; the saved files)
    of a /history entry; a reply of another shape is a QueueError, not a traceback (a proxy's or another service's
    JSON)."""
    if not isinstance(entry, dict):
        raise _malformed(server, prompt_id, f"an entry of type {type(entry).__name__}")
    status = entry.get("status") or {}
    if not isinstance(status, dict):
        raise _malformed(server, prompt_id, "its status is not an object")
    if status.get("status_str") == "error":
        messages = status.get("messages") or []
        messages = messages if isinstance(messages, list) else []  # (another shape says nothing: "see the log")
        events = {m[0]: m[1] for m in messages if isinstance(m, (list, tuple)) and len(m) == 2 and isinstance(m[0], str)}
        if "execution_interrupted" in events:
            return CANCELLED, []
        err = events.get("execution_error")
        msg = str(err.get("exception_message", "")).strip() if isinstance(err, dict) else ""
        node = f"node {err.get('node_id')} ({err.get('node_type')}): " if isinstance(err, dict) and err.get("node_id") else ""
        return node + (msg or "see the ComfyUI log"), []
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
        kinds = [k for k in (node_out.get("images"), node_out.get("gifs")) if isinstance(k, list)]  # (else: no files)
        for item in [x for k in kinds for x in k]:
            if isinstance(item, dict):
                out.append("/".join(str(x) for x in (item.get("subfolder"), item.get("filename")) if x))
    return out


def in_queue(reply, prompt_id: str) -> bool | None:
    """Whether a ``GET /queue`` answer holds ``prompt_id`` (running or pending; each item is ComfyUI's
    ``(number, prompt_id, prompt, extra_data, outputs)``); None when the answer is of another shape (say nothing)."""
    items = []
    for key in ("queue_running", "queue_pending"):
        part = reply.get(key) if isinstance(reply, dict) else None
        if not isinstance(part, list):
            return None
        items += part
    return any(isinstance(i, (list, tuple)) and len(i) > 1 and str(i[1]) == prompt_id for i in items)


def queue_place(reply, prompt_id: str) -> str | None:
    """Where a ``GET /queue`` answer has ``prompt_id``, in words: ``running``, ``queued, 3 prompt(s) before it`` (the
    pending ones with a lower number, which ComfyUI runs first; the list is not in order); None when it is not there or
    the answer is of another shape."""
    def items(key):
        part = reply.get(key) if isinstance(reply, dict) else None
        return [i for i in part if isinstance(i, (list, tuple)) and len(i) > 1] if isinstance(part, list) else []

    running, pending = items("queue_running"), items("queue_pending")
    if any(str(i[1]) == prompt_id for i in running):
        return "running"
    mine = next((i[0] for i in pending if str(i[1]) == prompt_id), None)
    if mine is None:
        return None
    try:
        ahead = len(running) + sum(1 for i in pending if i[0] < mine)
    except TypeError:  # (numbers of another type: the place is not said)
        return "queued"
    return f"queued, {ahead} prompt(s) before it" if ahead else "queued, next"


def lost(server: str, prompt_id: str) -> PromptFailed:
    return PromptFailed(f"prompt {prompt_id} is neither queued on nor in the history of {server}: the server was restarted "
                        "(ComfyUI keeps its queue and history in memory) or the prompt was deleted from its queue; queue "
                        "it again (the same command with --resume queues again only the jobs whose prompt was lost).")


RESUME = ("Run the same command with --resume to wait for them (and queue only the jobs not queued or lost) instead "
          "of queueing every job again.")


def still_on_server(server: str, prompt_ids: list[str], resumable: bool = False) -> str:
    """What a user who stopped waiting (Ctrl-C, a dropped connection) needs: the prompts ComfyUI still holds, that they
    go on, how to cancel them, and (one server's run, whose prompts are kept on disk) how to wait for them again."""
    ids = json.dumps({"delete": list(prompt_ids)})
    return (f"ComfyUI still has {len(prompt_ids)} prompt(s) of this run: {', '.join(prompt_ids)} (queued or running; "
            "their videos still land in ComfyUI's output folder). To cancel them use ComfyUI's queue panel, or "
            f"curl -X POST {server}/queue -H 'Content-Type: application/json' -d {shlex.quote(ids)} for the queued ones and "
            f"curl -X POST {server}/interrupt for the one running. "
            + (RESUME if resumable else "Running the same command again queues every job again."))


def job_label(result: dict) -> str:
    return f"{Path(result['portrait']).name} x {Path(result['audio']).name}"


def say_about(job, text: str) -> None:
    """One stderr line about a folder job (``<portrait> x <audio>: text``), e.g. an earlier run's prompt queued again."""
    sys.stderr.write(printable(f"{job.portrait.name} x {job.audio.name}: {text}") + "\n")


def still_open(results: list[dict]) -> list[str]:
    return [r["prompt_id"] for r in results if "prompt_id" in r and "files" not in r and "error" not in r]


class QueueStopped(QueueError):
    """The run stopped on an error after some prompts were queued: ``results`` (those queued, listed first) and what
    the user should know about the ones still on the server and the ones never queued."""

    def __init__(self, cause: Exception, results: list[dict], not_queued: list[str], server: str, resumable: bool = False,
                 sending: tuple[str, str, str] | None = None):
        self.results = results
        not_queued = [j for j in not_queued if sending is None or j != sending[2]]  # (said below: it may be queued)
        total = len(results) + len(not_queued) + (sending is not None)
        text = f"{cause}\n{len(results)} of {total} job(s) were queued before this (listed above)"
        if not_queued:
            shown = ", ".join(not_queued[:10]) + (f" and {len(not_queued) - 10} more" if len(not_queued) > 10 else "")
            text += f"; not queued: {shown}"
        pending = still_open(results)
        text += f".\n{still_on_server(server, pending, resumable)}" if pending else "."
        super().__init__(text + (f"\n{maybe_sent(sending, resumable)}" if sending is not None else ""))


def maybe_sent(sending: tuple[str, str, str], resumable: bool) -> str:
    """What to say of the prompt being sent (``sending``: server, the id asked for, the job) when the run stopped: it
    may be queued there."""
    url, pid, job = sending
    return (f"The prompt of {job} was being sent to {url} (asked for as {pid}): it may be queued there. "
            + ("Run the same command with --resume: it finds it there, or queues it if it is not."
               if resumable else "Check ComfyUI's queue panel before running the command again."))


class QueueInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) after prompts were queued: ``results`` so far (one server's run; several servers': the
    results.jsonl records of the jobs over), ``pending``: the prompt
    ids still on each server, ``sending``: (server, prompt id, job) of a prompt being sent when it came (it may be
    queued there), and the advice for them (:meth:`advice`)."""

    def __init__(self, results: list[dict], pending: dict[str, list[str]], resumable: bool = False,
                 sending: tuple[str, str, str] | None = None):
        super().__init__()
        self.results, self.pending = results, {url: ids for url, ids in pending.items() if ids}
        self.resumable, self.sending = resumable, sending

    def advice(self) -> str:
        said = [still_on_server(url, ids, self.resumable) for url, ids in self.pending.items()]
        if self.sending is not None:
            said.append(maybe_sent(self.sending, self.resumable))
        return "\n".join(said) if said else "Every queued prompt had finished."
