"""One server's ``echomimic queue`` run (:func:`queue_folder`): upload, queue every job, keep each accepted prompt in the
queue state (:mod:`.queue_state`) and, with ``--wait`` / ``--resume``, wait for them. ``client`` is the module
:mod:`echomimic_lib.jobs.queue_client` (its HTTP calls; passed in, so that the client, which starts this, is not
imported back)."""
from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

from .queue_plan import DEFAULT_SERVER, build_prompt, check_seed_input, load_workflow, plan_jobs
from .queue_replies import (PromptFailed, in_queue, QueueError, QueueInterrupted, QueueStopped, job_label, not_queued, say_about,
                            saved_files, still_open)
from .queue_progress import Progress
from .queue_watch import EMPTY
from .queue_state import QueueState, default_path, fingerprint, plan_mark, same_plan


def queue_folder(client, workflow, portraits, audios, server: str = DEFAULT_SERVER, seed: int | None = None,
                 driving=None, wait: bool = False, dry_run: bool = False, prefix: str = "echomimic",
                 videos=None, timeout: float = 60.0, resume: bool = False, state=None, retry_failed: bool = False,
                 attempts: int = 3, quiet: bool = False) -> list[dict]:
    """Queue every portrait (or, with ``videos``, every video) x audio job; returns one dict per job
    (prompt_id, prefix, files when waited). Each accepted prompt is kept in ``state`` (default: ``.echomimic_queue.json``
    in the portraits / videos folder, :mod:`.queue_state`); with ``resume`` (implies ``wait``) a job whose same prompt
    an earlier run queued is not queued again: finished, its files are listed, still queued it is waited for, and only
    one the server lost (restarted) is queued again. With ``retry_failed`` too, one whose prompt failed on the server is
    queued again (a line each), until the job has had ``attempts`` prompts. While waiting, stderr says how far the run
    is now and then (:mod:`.queue_progress`; ``quiet``: not)."""
    if (portraits is None) == (videos is None):
        raise QueueError("give either a portraits folder or a videos folder (--portraits or --videos), not both.")
    if videos is not None and driving:
        raise QueueError("--driving and --videos both fill Load Video; with --videos each job's video is used.")
    server = client.check_server(server)
    template = load_workflow(workflow)
    check_seed_input(template, seed, workflow)
    jobs, names, results = plan_jobs(portraits, audios, prefix, videos), {}, []
    client_id, wait, marks, sending = uuid.uuid4().hex, wait or resume, {}, None
    watch = None if dry_run else client.watcher(server, timeout)  # the server's queue, asked cheaply (queue_watch)
    # every job's prompt with the local names: a workflow that cannot take them is refused before any upload
    plans = {} if dry_run else {j.prefix: plan_mark(template, j, seed, driving) for j in jobs}
    book = None if dry_run else QueueState(state if state is not None else default_path(portraits, videos))
    if book is not None:
        book.claim(j.prefix for j in jobs)  # (refused when a live run queues the same jobs)

    def name_of(path: Path) -> str:
        if path not in names:
            names[path] = path.name if dry_run else client.upload(server, path, timeout)
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
                plan = plans[job.prefix]
                kept, failure, retry = (_resumed(client, book, server, job, mark, plan, retry_failed, attempts, timeout,
                                                 watch)
                                        if resume else (None, None, 0))
                if kept is not None:  # its earlier prompt: waited for, listed, or (it failed before) reported
                    result.update({k: kept[k] for k in ("prompt_id", "files") if k in kept}, resumed=True)
                    if failure is not None:
                        result["error"] = failure
                else:  # (its id kept before it is sent: a Ctrl-C while the server answers loses nothing)
                    sent, before = uuid.uuid4().hex, book.find(job.prefix, [server])
                    tries = book.record(server, job.prefix, mark, sent, attempts=retry or None, plan=plan, sending=True)
                    try:
                        sending = (server, sent, f"{job.portrait.name} x {job.audio.name}")
                        result["prompt_id"] = client.post_prompt(server, prompt, client_id, timeout, prompt_id=sent)
                        sending = None
                    except QueueError as exc:
                        if not_queued(exc):  # refused: the job's earlier record stays as it was
                            book.withdraw(job.prefix, sent, before)
                        raise
                    book.record(server, job.prefix, mark, result["prompt_id"], attempts=tries, plan=plan)
            results.append(result)
        progress, over = Progress(len(results), quiet=quiet), _over(results)  # (a line on stderr now and then)
        for result in (r for r in results if wait and not dry_run and "files" not in r and "error" not in r):
            progress.update(over[0], over[1], len(results) - sum(over))
            since, label = progress.clock(), job_label(result)
            try:  # (a long job: "still waiting for ..." now and then)
                entry = client.wait_for(server, result["prompt_id"], request_timeout=timeout,
                                        on_wait=lambda place, job=label, t=since: progress.waiting(job, server, t, place),
                                        watch=watch)
                result["files"] = saved_files(entry)
                book.record(server, result["prefix"], marks[result["prefix"]], result["prompt_id"], result["files"],
                            plan=plans[result["prefix"]])
            except PromptFailed as exc:  # this prompt failed on the server: the others are still waited for
                result["error"] = str(exc)
                book.failed(server, result["prefix"], result["prompt_id"],
                            str(exc).removeprefix(f"prompt {result['prompt_id']} failed: "))
            over[1 if "error" in result else 0] += 1
        if wait and not dry_run:
            progress.update(over[0], over[1], len(results) - sum(over))
    except QueueError as exc:  # prompts already queued run on: say which, and which jobs never were
        if dry_run:
            raise
        done, left = (_known_outcomes(book, server, template, jobs[len(results):], seed, driving)
                      if resume and getattr(exc, "no_answer", False) else ([], jobs[len(results):]))
        if not results and done:
            raise _unreachable(exc, server, done, left, len(jobs)) from None
        maybe = sending if sending is not None and not not_queued(exc) else None  # (a 500, no answer: it may be queued)
        if not results and maybe is None:
            raise
        raise QueueStopped(exc, results + done, [f"{j.portrait.name} x {j.audio.name}" for j in left], server,
                           book.ok, maybe) from None
    except KeyboardInterrupt:
        if dry_run or not (results or sending):
            raise
        raise QueueInterrupted(results, {server: still_open(results)}, book.ok, sending) from None
    finally:
        if book is not None:
            book.release()
    return results


def _over(results: list[dict]) -> list[int]:
    """[finished, failed] of ``results`` (a job's files listed, its error said)."""
    failed = sum("error" in r for r in results)
    return [sum("files" in r and "error" not in r for r in results), failed]


def _known_outcomes(book: QueueState, server: str, template: dict, jobs: list, seed, driving) -> tuple[list, list]:
    """--resume while ``server`` cannot be asked (unreachable, no answer): (results, jobs left) -- the results of the
    ``jobs`` whose unchanged prompt the state says finished (its files) or failed, as :func:`queue_folder` lists them,
    and the other jobs."""
    done, left = [], []
    for job in jobs:
        found = book.find(job.prefix, [server])
        rec = found[1] if found is not None else {}
        plan = plan_mark(template, job, seed, driving)
        if _finished_same(rec, plan) or ("files" not in rec and rec.get("failed") and same_plan(rec, plan)):
            result = {"portrait": str(job.portrait), "audio": str(job.audio), "prefix": job.prefix,
                      "prompt_id": rec["prompt_id"], "resumed": True}
            result.update({"files": rec["files"]} if "files" in rec else {"error": failed_text(found[0], rec)})
            done.append(result)
        else:
            left.append(job)
    return done, left


def _unreachable(cause: QueueError, server: str, done: list[dict], left: list, total: int) -> QueueError:
    """The error of a ``--resume`` whose server cannot be asked before this run queued anything, ``done`` (the jobs
    the state says finished or failed, listed) returned with it as its ``results``."""
    failed = sum("error" in r for r in done)
    text = (f"{cause}\n--resume: {len(done) - failed} of {total} job(s) finished in an earlier run"
            + (f" and {failed} failed" if failed else "") + " (listed above" + (f", their files on {server})" if failed <
                                                                                 len(done) else ")"))
    if left:
        names = [f"{j.portrait.name} x {j.audio.name}" for j in left]
        text += f"; {len(left)} not queued: " + ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10
                                                                          else "")
    err = QueueError(text + f".\nRun the same command with --resume once {server} answers"
                     + (" to queue the jobs left." if left else "; nothing is left to queue."))
    err.results = done
    return err


def _resumed(client, book: QueueState, server: str, job, mark: str, plan: str, retry_failed: bool, attempts: int,
             timeout: float, watch=None) -> tuple[dict | None, str | None, int]:
    """What ``--resume`` does with this job: (record, None, 0) its earlier prompt is waited for or its files listed;
    (record, why, 0) it failed before and is reported so (:func:`failed_before`); (None, None, attempt) it is queued
    (again; ``attempt``: its count under ``--retry-failed``, 0: as the state says). A record on another server (an
    earlier run's other --server) is listed when it finished (:func:`finished_before`), else said in a line when the
    job is queued again here."""
    found = book.find(job.prefix, [server])
    if found is None:
        return None, None, 0
    url, rec = found
    if url != server:
        if finished_before(job, url, rec, plan):
            return rec, None, 0
        retry, failure = failed_before(client, job, url, rec, plan, retry_failed, attempts)
        if failure is None and not retry:
            say_about(job, f"its prompt {rec['prompt_id']} went to {url}, which is not among --server now; queued "
                           f"again on {server}.")
        return (rec if failure is not None else None), failure, retry
    if rec.get("fingerprint") != mark or not same_plan(rec, plan):  # (an input replaced under its name: the server
        say_changed(client, job, server, rec, timeout, watch)           # may give it its old name back)
        return None, None, 0
    retry = retry_failed and retry_attempt(client, job, server, rec, attempts,
                                           lambda: client._poll_history(server, rec["prompt_id"], timeout))
    if retry:
        return None, None, retry
    if "files" in rec or client._still_there(server, rec["prompt_id"], timeout, watch):
        return rec, None, 0
    if rec.get("failed"):  # the server lost it since (restarted): it failed all the same
        return rec, failed_text(server, rec), 0
    return None, None, 0  # lost in a restart: queued again


def say_changed(client, job, server: str, rec: dict, timeout, watch) -> None:
    """A line when ``--resume`` queues a changed job again while its earlier prompt is still queued or running on
    ``server`` (in its /queue, asked first, and not in its /history, asked after): that render goes on, its time spent
    for nothing unless it is cancelled, so the line says how. Nothing when that cannot be told (no answer)."""
    pid = rec["prompt_id"]
    if "files" in rec or rec.get("failed"):
        return
    try:
        watch = watch or client.watcher(server, timeout)
        watch.look()
        if watch.queue is EMPTY or watch.last is None or not in_queue(watch.last, pid) or client._history(server, pid, timeout) is not None:
            return
    except QueueError:
        return
    body = shlex.quote(json.dumps({"delete": [pid]}))
    say_about(job, f"changed (workflow, seed or an input) since its prompt {pid} was queued on {server}, which still "
                   f"holds it: queued again. The earlier prompt renders on unless cancelled: curl -X POST {server}/queue "
                   f"-H 'Content-Type: application/json' -d {body} (and POST {server}/interrupt if it is running).")


def failed_text(server: str, rec: dict) -> str:
    return (f"its prompt {rec['prompt_id']} failed on {server}: {rec['failed']} (--resume --retry-failed queues it "
            "again, up to --attempts prompts)")


def _finished_same(rec: dict, plan: str) -> bool:
    """Whether ``rec`` holds the files of the job planned as ``plan``, by a plan that holds its inputs' mark (this
    version's): an older record cannot tell an input replaced since, so its job is rendered again."""
    return "files" in rec and isinstance(rec.get("plan"), str) and "." in rec["plan"] and same_plan(rec, plan)


def finished_before(job, server: str, rec: dict, plan: str) -> bool:
    """A job whose earlier prompt finished (its files collected) on a server that cannot be asked now (not given,
    unreachable, restarted) and that has not changed since (:func:`.queue_state.same_plan`): listed with its files,
    never rendered again, said in a line naming that server. Finished means the state holds its files: files deleted
    since, on that server, are not seen (it may be gone); a run without --resume renders every job again. Also for
    several servers (:mod:`.batch.comfy_servers`). Only a record whose plan holds its inputs' mark (this version's) is
    listed: one with no plan, or one written before the plan held the inputs, cannot tell an input replaced since, and
    its job is rendered again (never an old video listed for a new input)."""
    if not _finished_same(rec, plan):
        return False
    say_about(job, f"its prompt {rec['prompt_id']} finished on {server} (its files are there); not rendered again (a "
                   "run without --resume renders every job again).")
    return True


def failed_before(client, job, server: str, rec: dict, plan: str, retry_failed: bool, attempts: int) -> tuple[int, str | None]:
    """A job whose earlier prompt is on a server that cannot be asked now (not given, unreachable, restarted): (0, None)
    when its record does not say it failed or the job changed since (its ``plan``, :func:`.queue_state.plan_mark`; a
    record without one is taken as the same job): queue it as a new or lost prompt. A failed one is queued again only
    with ``retry_failed`` ((attempt, None), :func:`retry_attempt`); else (0, why): reported failed, naming its server
    and the reason. Also for several servers (:mod:`.batch.comfy_servers`)."""
    if not rec.get("failed") or not same_plan(rec, plan):
        return 0, None
    retry = retry_attempt(client, job, server, rec, attempts, lambda: None) if retry_failed else 0
    return (retry, None) if retry else (0, failed_text(server, rec))


def retry_attempt(client, job, server: str, rec: dict, attempts: int, history) -> int:
    """--retry-failed: the attempt this job's earlier prompt (``rec``, on ``server``) is queued again as, said in a line,
    when it failed: the state says so, or ``history()`` (the server's /history entry of it, None: none) does (it may
    have failed after the earlier run stopped waiting). 0: not queued again (it did not fail, or it has had
    ``attempts`` prompts, said too). Also for several servers (:mod:`.batch.comfy_servers`)."""
    failure = rec.get("failed")
    if not failure and "files" not in rec:
        entry = history()
        failure = client.outcome(server, rec["prompt_id"], entry)[0] if entry is not None else None
    if not failure:
        return 0
    done = rec.get("attempts") if isinstance(rec.get("attempts"), int) and rec.get("attempts") > 0 else 1
    why = " ".join(str(failure).split())[:200]
    if done >= attempts:
        say_about(job, f"its prompt {rec['prompt_id']} failed {done} time(s), the most --attempts {attempts} allows; not "
                       f"queued again ({why}).")
        return 0
    say_about(job, f"its prompt {rec['prompt_id']} failed ({why}); queued again (attempt {done + 1} of {attempts}).")
    return done + 1
