"""``echomimic queue --server URL --server URL ...``: the folder jobs spread over several ComfyUI servers.

Each job goes to the live server with the shortest queue (running + pending, as ComfyUI's ``GET /prompt`` says it:
``exec_info.queue_remaining``; ``GET /queue`` from a server that does not; a tie goes to the server named first);
its files are uploaded to that server once. Then every server's jobs are polled (``GET /history/<id>``); a server that stops answering is dropped and its unfinished jobs are uploaded and
queued again on the others. Every finished job (or one no server could run) becomes a line of
``<results>/results.jsonl`` in the same format as ``echomimic batch`` (``status``, ``output``: the saved files,
``seconds``, ``error``, ``attempts``, plus ``server`` and ``prompt_id``).
"""
from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

from ...errors import EchoMimicError as QueueError  # the client's QueueError is one
from ..queue_plan import check_seed_input
from ..queue_progress import Progress
from ..queue_run import failed_before, finished_before, say_changed
from ..queue_state import same_plan
from .results import ResultsFile, read_results

log = logging.getLogger(__name__)


def _safe(fn, *args, **kw):
    """A call to a server; a connection that breaks mid-answer (reset, timeout) is a server that stopped answering."""
    try:
        return fn(*args, **kw)
    except (OSError, ValueError) as exc:
        if isinstance(exc, QueueError):
            raise
        raise QueueError(f"the connection broke ({type(exc).__name__}: {exc})") from None


POLL_TIMEOUT = 10.0  # seconds a /queue or /history answer may take when no --timeout is given (queue_spread's request_timeout)


class _Server:
    def __init__(self, url: str, client, timeout: float | None = None):
        self.url, self.alive, self.names, self.client = url.rstrip("/"), True, {}, client
        self.watch, self._asked, self._fresh = None, True, False  # its queue as this poll sees it (refresh_queue)
        self.counts = True  # whether GET /prompt says its queue_remaining (depth)
        self.timeout, self.why = timeout, ""  # --timeout (None: POLL_TIMEOUT to poll, the client's own to send); why it went

    @property
    def poll_timeout(self) -> float:
        return POLL_TIMEOUT if self.timeout is None else self.timeout

    def drop(self, exc) -> None:
        """This server stopped answering (``exc``: why, said when no server is left; what became of a prompt sent is
        said once for the job, :func:`_none_left`)."""
        self.alive, self.why = False, str(exc).removesuffix(getattr(exc, "said_sent", "") or "")

    def depth(self) -> int:
        """The server's own queue, running + pending (every client's prompts, ours included once it has answered the
        POST): ComfyUI's GET /prompt (``{"exec_info": {"queue_remaining": N}}``, a few bytes whatever the queue);
        GET /queue (every queued prompt in full) only from a server that does not say it."""
        if self.counts:
            try:
                said = _safe(self.client._request, f"{self.url}/prompt", timeout=self.poll_timeout).get("exec_info")
            except QueueError as exc:
                if getattr(exc, "no_answer", False) or getattr(exc, "broken", False):
                    raise  # (no answer: the server stopped answering)
                said = None
            left = said.get("queue_remaining") if isinstance(said, dict) else None
            if isinstance(left, int) and not isinstance(left, bool) and left >= 0:
                return left
            self.counts = False  # (not said: its /queue from now on)
        q = _safe(self.client._request, f"{self.url}/queue", timeout=self.poll_timeout)
        return len(q.get("queue_running", [])) + len(q.get("queue_pending", []))

    def refresh_queue(self) -> None:
        """At the start of a poll: whether the server still holds its prompts is not asked yet this poll; it is asked
        when a prompt's /history says nothing (:meth:`lost`), cheaply and at most every ``client.QUEUE_CHECK_S``
        (:class:`..queue_watch.QueueWatch`: GET /prompt's count, the whole /queue only now and then)."""
        self._asked, self._fresh = False, False

    def lost(self, prompt_id: str) -> bool:
        """True when this poll's look (asked once a prompt's /history said nothing: a prompt that finished between the
        two is found by the /history asked again, :func:`queue_spread`) says the server no longer holds it."""
        if self.alive and not self._asked:
            self._asked = True
            try:
                self._fresh = self.watched().look()
            except QueueError:
                self._fresh = False  # a server that stopped answering is found by its /history call
        return self._fresh and self.watch.holds(prompt_id) is False

    def watched(self):
        """The server's :class:`..queue_watch.QueueWatch` (its queue asked cheaply; one for the whole run)."""
        if self.watch is None:
            self.watch = self.client.watcher(self.url, self.poll_timeout)
        return self.watch

    def place(self, prompt_id: str):
        """Where the server's /queue last had ``prompt_id`` (None: not asked yet)."""
        return None if self.watch is None else self.watch.place(prompt_id)

    def name_of(self, path: Path) -> str:
        if path not in self.names:
            self.names[path] = _safe(self.client.upload, self.url, path, self.timeout)
        return self.names[path]


def _submit(job, servers: list[_Server], template, seed, drive, client_id, sending=None, tried=None) -> tuple[_Server, str, dict]:
    """Post ``job`` to the live server with the shortest queue; a server that does not answer is dropped.
    ``sending(server, prompt, prompt_id)``: called just before the prompt is sent with the id it asks for (kept in the
    state first: a Ctrl-C while the server answers loses nothing). ``tried``: a list given to hold (server, prompt id,
    whether it may be queued there) of each send that failed. When no server is left, the error says whether the
    prompt may be queued somewhere (a send that may have arrived: a timeout, a reset) or certainly was NOT queued (every
    server refused the connection: ``never_sent`` set, as with one server)."""
    tried = [] if tried is None else tried
    while True:
        depths = []
        for s in (s for s in servers if s.alive):
            try:
                depths.append((s.depth(), servers.index(s), s))
            except QueueError as exc:
                log.warning("%s stopped answering (%s); its jobs go to the other servers", s.url, exc)
                s.drop(exc)
        if not depths:  # each with why (a --timeout that ran out says so, as with one server)
            raise _none_left(servers, tried)
        server, asked = min(depths)[2], None
        try:
            prompt = _prompt_for(job, server, template, seed, drive)
            asked = uuid.uuid4().hex
            if sending is not None:
                sending(server, prompt, asked)
            pid = _safe(server.client.post_prompt, server.url, prompt, client_id, server.timeout, prompt_id=asked)
        except QueueError as exc:
            if asked is not None:
                tried.append((server, asked, not server.client.not_queued(exc)))
            if "HTTP" in str(exc):  # the server answered and refused the prompt: the job's own problem
                raise
            log.warning("%s stopped answering (%s); trying another server", server.url, exc)
            server.drop(exc)
            continue
        return server, pid, prompt


NOT_SENT = (". This job was not queued: run the same command with --resume once a server answers to queue it (what "
            "finished is kept).")


def _none_left(servers: list[_Server], tried: list) -> QueueError:
    """No server answers any more: each with why, and what became of this job's prompt (``tried``: :func:`_submit`'s)."""
    text = "no ComfyUI server answers any more: " + "; ".join(f"{s.url} ({s.why})" if s.why else s.url for s in servers)
    maybe = [(s, pid) for s, pid, arrived in tried if arrived]
    if maybe:
        server, pid = maybe[-1]
        text += (f". The prompt was being sent to {server.url} (asked for as {pid}): it may be queued there. Run the same "
                 "command with --resume once it answers: it finds it there, or queues it if it is not.")
    elif tried:
        text += (". The prompt was NOT queued (every server refused the connection: it never reached them), so running "
                 "the same command again is safe (add --resume to keep what an earlier run queued).")
    else:
        text += NOT_SENT
    err = QueueError(text)
    err.never_sent = not maybe
    return err


def _prompt_for(job, server: _Server, template, seed, drive) -> dict:
    """The job's prompt for ``server``: its files uploaded there (once a server), their names filled in."""
    build_prompt = server.client.build_prompt
    driving = server.name_of(Path(drive)) if drive else None
    if job.is_video:
        return build_prompt(template, None, server.name_of(job.audio), job.prefix, seed, server.name_of(job.portrait), True)
    return build_prompt(template, server.name_of(job.portrait), server.name_of(job.audio), job.prefix, seed, driving)


def queue_spread(client, workflow, portraits, audios, servers: list[str], results_dir, seed: int | None = None, driving=None,
                 prefix: str = "echomimic", videos=None, poll: float = 2.0, timeout: float = 3600.0,
                 max_attempts: int = 3, state=None, resume: bool = False, retry_failed: bool = False,
                 retry_attempts: int = 3, request_timeout: float | None = None, quiet: bool = False) -> list[dict]:
    """Queue every job over ``servers``, wait for all, record them; returns the records. ``client``: the module
    :mod:`echomimic_lib.jobs.queue_client` (its uploads, prompts and history calls; passed in, so that the
    client, which starts this, is not imported back). ``state``: the queue state file (:mod:`..queue_state`) where
    each prompt is kept with the server it went to; with ``resume`` each server is asked about its own prompts, and the
    jobs of a server that no longer answers (or is no longer given) are queued again on the others, a line each; with
    ``retry_failed`` too, a job whose prompt failed on its server is queued again, a line each, until it has had
    ``retry_attempts`` prompts (``max_attempts``: the servers a job may outlive within this run). ``request_timeout``:
    ``--timeout``, the seconds each answer of a server may take, as with one server (None: 10 s to poll, the client's
    default to upload and queue). A job no server took (none answered before it was sent) is recorded with ``queued``
    false, its error saying so and that --resume queues it. While waiting, stderr says how far the run is and which job
    it still waits for, now and then (:mod:`..queue_progress`; ``quiet``: not)."""
    template = client.load_workflow(workflow)
    check_seed_input(template, seed, workflow)
    if videos is not None and driving:
        raise QueueError("--driving and --videos both fill Load Video; with --videos each job's video is used.")
    jobs = client.plan_jobs(portraits, audios, prefix, videos)
    pool = [_Server(u, client, request_timeout) for u in dict.fromkeys(client.check_server(u) for u in servers)]
    book = client.QueueState(state) if state is not None else None  # (a damaged state file: refused here)
    marks: dict[str, str] = {}
    plans = {j.prefix: client.plan_mark(template, j, seed, driving) for j in jobs}  # (the job's, whatever its server)
    earlier = read_results(results_dir)  # records of other runs in that results.jsonl (a batch's, an earlier queue's) stay
    client_id, results = uuid.uuid4().hex, _results_file(results_dir)
    records: dict[str, dict] = {}
    flight = {}  # job prefix -> [job, server, prompt_id, attempts, t0]
    now_sending: list = []  # [(server, asked prompt id, job)] while a prompt is being sent
    tries_of: dict[str, int | None] = {}  # job prefix -> the prompts it has had (the state's attempts), kept when it moves
    waited: dict[str, list] = {}  # job prefix -> [when it went in flight (monotonic), where its server's /queue has it]

    def record(job, status, attempts, t0, **extra):
        rec = {"name": job.prefix.replace("/", "__"), "line": jobs.index(job) + 1, "kind": "comfyui", "status": status,
               "reference": str(job.portrait), "audio": str(job.audio), "seconds": round(time.time() - t0, 3),
               "attempts": attempts, **extra}
        records[job.prefix] = rec
        results.append(rec)
        if book is not None and status == "ok" and job.prefix in marks:
            book.record(extra["server"], job.prefix, marks[job.prefix], extra["prompt_id"], extra["files"],
                        plan=plans[job.prefix])

    def send(job, attempts, t0, tries=None, earlier=None):
        """``earlier``: (server, prompt id) of the job's prompt on a server that stopped answering (moved here)."""
        before, asked, kept = (book.find(job.prefix) if book is not None else None), [], {}

        def sending(server, prompt, pid):
            asked.append(pid)
            now_sending[:] = [(server.url, pid, f"{job.portrait.name} x {job.audio.name}")]
            if book is not None:
                marks[job.prefix] = client.fingerprint(prompt)
                tries_of[job.prefix] = book.record(server.url, job.prefix, marks[job.prefix], pid, attempts=tries,
                                                   plan=plans[job.prefix], sending=True)
                kept[pid] = book.find(job.prefix)  # (what the record goes back to should a later send be refused)

        tried: list = []
        try:
            server, pid, prompt = _submit(job, pool, template, seed, driving, client_id, sending, tried)
            now_sending.clear()
            flight[job.prefix] = [job, server, pid, attempts, t0]
            waited[job.prefix] = [time.monotonic(), None]
            if book is not None:
                book.record(server.url, job.prefix, marks[job.prefix], pid, attempts=tries_of[job.prefix],
                            plan=plans[job.prefix])
        except QueueError as exc:
            now_sending.clear()
            if book is not None and asked:  # the last prompt sent certainly not queued: the record goes back to the
                maybe = [pid for _, pid, arrived in tried if arrived]  # one of a send that may have arrived, or the earlier
                if client.not_queued(exc) or (maybe and maybe[-1] != asked[-1]):
                    book.withdraw(job.prefix, asked[-1], kept[maybe[-1]] if maybe else before)
            if getattr(exc, "never_sent", False) is True and earlier is not None:  # (it may still run there)
                url, pid = earlier
                record(job, "error", attempts, t0, server=url, prompt_id=pid, error=(
                    f"its prompt {pid} went to {url}, which stopped answering, and no other server can take it: it may "
                    f"still run there ({str(exc).removesuffix(NOT_SENT)}). Run the same command with --resume once a "
                    "server answers: it finds it there, or queues it again."))
            elif getattr(exc, "never_sent", False) is True:  # (no server took it: not queued, --resume queues it)
                record(job, "error", attempts, t0, error=f"not queued: {exc}", queued=False)
            else:  # (refused by the server it went to, or it may be queued there)
                record(job, "error", attempts, t0, error=str(exc), **({"server": tried[-1][0].url} if tried else {}))

    if book is not None:
        book.claim(j.prefix for j in jobs)  # (refused when a live run queues the same jobs; released below)
    try:
        for job in jobs:
            t0 = time.time()
            kept, gone = _resumed(client, job, book, pool, template, seed, driving) if resume and book is not None else (None, None)
            if gone is not None:  # its server cannot be asked (not given, no answer, restarted)
                url, rec, why = gone
                if finished_before(job, url, rec, plans[job.prefix]):  # listed, never rendered again
                    files = rec["files"]
                    record(job, "ok", 1, t0, server=url, prompt_id=rec["prompt_id"], output=files[0] if files else None,
                           files=files, resumed=True)
                    continue
                tries, failure = failed_before(client, job, url, rec, plans[job.prefix], retry_failed, retry_attempts)
                if failure is not None:  # it failed: queued again only with --retry-failed
                    record(job, "error", 1, t0, server=url, prompt_id=rec["prompt_id"], error=failure, resumed=True)
                    continue
                if why and not tries:
                    client.say_about(job, why)
                same = same_plan(rec, plans[job.prefix])
                send(job, 1, t0, tries or (rec.get("attempts") if same else None))  # (a moved prompt keeps its count)
                continue
            if kept is None or not same_plan(kept[1], plans[job.prefix]):  # (new or changed: an input replaced too)
                send(job, 1, t0)
                continue
            server, rec, marks[job.prefix] = kept
            tries_of[job.prefix] = rec.get("attempts")
            tries = _retry(client, job, server, rec, retry_attempts) if retry_failed else 0
            if tries:
                send(job, 1, t0, tries)
            elif "files" in rec:
                files = rec["files"]
                record(job, "ok", 1, t0, server=server.url, prompt_id=rec["prompt_id"], output=files[0] if files else None,
                       files=files, resumed=True)
            else:
                flight[job.prefix] = [job, server, rec["prompt_id"], 1, t0]
                waited[job.prefix] = [time.monotonic(), None]
        end, progress = time.monotonic() + timeout, Progress(len(jobs), quiet=quiet)  # (a line on stderr now and then)

        def say_progress():
            failed = sum(r["status"] != "ok" for r in records.values())
            where: dict[str, int] = {}
            for _, server, *_ in flight.values():
                where[server.url] = where.get(server.url, 0) + 1
            progress.update(len(records) - failed, failed, len(jobs) - len(records), where)

        while flight and time.monotonic() < end:
            say_progress()
            time.sleep(poll)
            for server in {id(f[1]): f[1] for f in flight.values()}.values():
                server.refresh_queue()
            for key, (job, server, pid, attempts, t0) in list(flight.items()):
                try:
                    entry = (_safe(client._poll_history, server.url, pid, server.poll_timeout)  # (asked again first)
                             if server.alive else None)
                except QueueError as exc:
                    log.warning("%s stopped answering (%s); resubmitting its jobs", server.url, exc)
                    server.drop(exc)
                    entry = None
                if not server.alive:
                    del flight[key]
                    if attempts >= max_attempts:
                        record(job, "error", attempts, t0, server=server.url, error=f"{attempts} server(s) went away (the last: {server.why or 'no answer'})")
                    else:
                        send(job, attempts + 1, t0, tries_of.get(job.prefix), (server.url, pid))  # (the same attempt)
                    continue
                if entry is None and server.lost(pid):  # restarted: its queue and history are gone
                    entry = _safe(client._request, f"{server.url}/history/{pid}", timeout=server.poll_timeout).get(pid)
                    if entry is None:
                        del flight[key]
                        log.warning("%s", client.lost(server.url, pid))
                        if attempts >= max_attempts:
                            record(job, "error", attempts, t0, server=server.url, prompt_id=pid, error=str(client.lost(server.url, pid)))
                        else:
                            send(job, attempts + 1, t0, tries_of.get(job.prefix))  # queued again (the uploads are on disk there, or go again)
                        continue
                if entry is None:
                    continue
                del flight[key]
                try:
                    failure, files = client.outcome(server.url, pid, entry)
                except QueueError as exc:
                    failure, files = str(exc), []
                if failure:
                    record(job, "error", attempts, t0, server=server.url, prompt_id=pid, error=failure)
                    if book is not None:
                        book.failed(server.url, job.prefix, pid, failure)
                else:
                    record(job, "ok", attempts, t0, server=server.url, prompt_id=pid, output=files[0] if files else None,
                           files=files)
            if flight:  # the job waited for longest: a line now and then while it runs long
                job, server, pid = flight[next(iter(flight))][:3]
                since = waited.setdefault(job.prefix, [time.monotonic(), None])
                if server.place(pid) is not None:
                    since[1] = server.place(pid)
                progress.waiting(f"{job.portrait.name} x {job.audio.name}", server.url, since[0], since[1])
        for job, server, pid, attempts, t0 in flight.values():
            record(job, "error", attempts, t0, server=server.url, prompt_id=pid, error=f"not finished within {timeout:.0f} s")
        say_progress()
    except KeyboardInterrupt:  # Ctrl-C: the prompts in flight go on on their servers; say which, and how to cancel
        pending: dict[str, list[str]] = {}
        for _, server, pid, _, _ in flight.values():
            pending.setdefault(server.url, []).append(pid)
        raise client.QueueInterrupted([records[j.prefix] for j in jobs if j.prefix in records], pending,  # (listed)
                                      book is not None and book.ok,
                                      now_sending[0] if now_sending else None) from None
    finally:
        if book is not None:
            book.release()
        ordered = [records[j.prefix] for j in jobs if j.prefix in records]
        mine = {r["name"] for r in ordered}
        results.rewrite([r for name, r in earlier.items() if name not in mine] + ordered)
    return ordered


def _results_file(results_dir) -> ResultsFile:
    """``<results_dir>/results.jsonl`` opened for the run, or a :class:`QueueError` naming ``--results`` and the fix."""
    folder = Path(results_dir)
    if folder.exists() and not folder.is_dir():
        raise QueueError(f"--results {folder} is a file, not a folder: give the folder that results.jsonl is written into "
                         "(default: the current folder).")
    try:
        return ResultsFile(folder)
    except OSError as exc:
        raise QueueError(f"--results {folder}: results.jsonl cannot be written there ({exc.strerror or exc}); give a "
                         "folder you can write to.") from None


def _resumed(client, job, book, pool: list[_Server], template, seed, drive):
    """((server, record, fingerprint), None) of this job's prompt an earlier run queued, when its server (one of
    ``pool``) still has it, finished or queued, and it is the same prompt; (None, (url, record, line)) when its server
    cannot be asked about it -- no longer given, no longer answers (``line``: what to say when the job is queued again
    on the others) or lost it in a restart (``line`` None) --: the caller reports it failed
    (:func:`..queue_run.failed_before`) or queues it again, its count of attempts going with it (``--attempts`` caps it
    in all); (None, None): queue it, new or changed."""
    found = book.find(job.prefix, [s.url for s in pool])
    if found is None:
        return None, None
    url, rec = found
    pid = rec["prompt_id"]
    server = next((s for s in pool if s.url == url), None)
    if server is None:
        return None, (url, rec, f"its prompt {pid} went to {url}, which is not among --server now; queued again.")
    try:
        if server.alive:
            mark = client.fingerprint(_prompt_for(job, server, template, seed, drive))
            if mark != rec.get("fingerprint") or not same_plan(rec, client.plan_mark(template, job, seed, drive)):
                say_changed(client, job, url, rec, server.poll_timeout, server.watched())  # (still there: said)
                return None, None  # another workflow, seed or file: a new prompt
            if "files" in rec or _safe(client._still_there, url, pid, server.poll_timeout, server.watched()):
                return (server, rec, mark), None
            return None, (url, rec, None)  # lost in a restart
    except QueueError as exc:
        if "HTTP" in str(exc):  # it answers: refused the upload (the job's own problem, said when it is queued again)
            return None, None
        log.debug("%s: %s", url, exc)
        server.drop(exc)
    return None, (url, rec, f"{url} does not answer; its prompt {pid} is queued again on the other servers.")


def _retry(client, job, server: _Server, rec: dict, cap: int) -> int:
    """--retry-failed over several servers: :func:`..queue_run.retry_attempt`, a server that stopped answering asked
    no more (it is found when its prompt is polled)."""
    from ..queue_run import retry_attempt

    def history():
        try:
            return _safe(client._history, server.url, rec["prompt_id"], server.poll_timeout)
        except QueueError as exc:
            log.debug("%s: %s", server.url, exc)
            return None

    return retry_attempt(client, job, server.url, rec, cap, history)
