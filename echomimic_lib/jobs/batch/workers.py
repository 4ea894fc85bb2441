"""The embedded engine: one ``multiprocessing`` (spawn) worker process per local GPU, or ``--workers N`` on the CPU.

Each worker has its own pipe to the batch process. A worker asks for work by saying it is idle; the batch
hands it the next job (one at a time, so long clips and short ones balance as they finish), preferring a job
with the weight set the worker has loaded, then one of a set no other worker holds (:func:`pick_job`). A worker that dies (killed, out of host memory, a crash in native
code) is noticed through its process sentinel: its job goes back to the front of the queue for the next idle
worker, and a fresh worker takes the dead one's place. A worker exits by itself when the batch process goes
away (Linux: a parent-death signal; elsewhere it checks its parent between jobs).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import wait

from .crash_rule import CrashRule, respawn_budget, set_crash_error  # noqa: F401 - (set_crash_error: was here)

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def error_message(exc: BaseException) -> str:
    """What an error row says: our checks' own message, or the kind of failure and what to try."""
    from ...errors import EchoMimicError

    if isinstance(exc, EchoMimicError):
        return str(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        first = (str(exc).splitlines() or ["host RAM"])[0]
        return (f"out of memory ({first}); use a smaller width/height, fewer context_frames, acc, or a fp16/bf16 "
                "dtype on a GPU, or fewer --workers per GPU.")
    if isinstance(exc, OSError):  # a full disk, an input moved away mid-batch: what the system said, and the fix
        from ...io.os_errors import os_error_text

        return os_error_text(exc)
    return f"{type(exc).__name__}: {exc} (a bug in EchoMimic, not in the row; please report it with the traceback in the log)"


def render_payload(job, device: str, cache, scorer, progress=None) -> dict:
    """A job's ``done`` payload, in a worker process or a Ray actor (:mod:`.ray_backend`): the record's measured
    fields, or the row's error. A failing row never stops its worker; out of memory also drops the loaded models."""
    from .render import run_job

    try:
        return {"status": "ok", **run_job(job, device, cache, scorer, progress)}
    except BaseException as exc:  # noqa: BLE001 - every failure becomes the row's error
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        log.debug("%s", traceback.format_exc())
        if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
            cache.clear()
        payload = {"status": "error", "error": error_message(exc)}
        if disk_full(exc):  # the batch stops: every later row would render in full, then fail the same way
            payload["disk_full"] = True
        return payload


def disk_full(exc: BaseException) -> bool:
    """A write refused for want of space (a full disk, a quota), here or in what it was raised from."""
    import errno

    from ...io.os_errors import write_errno

    full = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if write_errno(exc) in full:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def worker_main(wid: int, device: str, threads: int, conn, parent: int, scores: bool, log_level: int) -> None:
    """A worker: loads models on first use, renders jobs it is handed, keeps the models for the next job."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the batch's to handle
    logging.basicConfig(level=log_level, format=f"[worker {wid}] %(message)s")
    import torch

    from .render import ModelCache, Scorer

    torch.set_num_threads(max(1, threads))
    cache, scorer = ModelCache(), (Scorer() if scores else None)
    conn.send(("idle", None, None))
    while True:
        if not conn.poll(1.0):
            if os.getppid() != parent:
                return
            continue
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            break

        def progress(done, total, name=job.name):
            conn.send(("progress", name, (done, total)))

        conn.send(("done", job.name, render_payload(job, device, cache, scorer, progress)))
        conn.send(("idle", None, None))
    if scorer is not None:
        scorer.close()


def _received(conn) -> list:
    """The messages waiting on a worker's pipe; those before its end closed (the worker died: buried by the caller)."""
    out = []
    try:
        while conn.poll():
            out.append(conn.recv())
    except (EOFError, OSError):
        pass
    return out


def _answered(conn) -> bool:
    """A message waits on the worker's pipe (its row may have just finished: read it before any timeout)."""
    try:
        return conn.poll()
    except (EOFError, OSError):
        return False


def pick_job(pending: list, held, others: list):
    """The next job for a worker holding weight set ``held`` (None: fresh), ``others``: the sets the other workers
    hold. Its own set first (its models stay loaded); else a set no other worker holds, the one with the most rows
    (so two fresh workers load two sets, not both the same one); else, rather than wait, a row of the set with the most
    rows per worker holding it (the workers stay balanced). Removes the job from ``pending`` (grouped by weight set)."""
    sets: dict = {}  # (keys by repr: a key may hold lists)
    for i, job in enumerate(pending):
        sets.setdefault(repr(job.weight_key), []).append(i)
    if repr(held) in sets:
        return pending.pop(sets[repr(held)][0])
    others = [repr(key) for key in others]
    holders = {key: others.count(key) for key in sets}
    free = [key for key in sets if not holders[key]]
    key = (max(free, key=lambda k: len(sets[k])) if free else  # max keeps the first of equals: the manifest's order
           max(sets, key=lambda k: len(sets[k]) / holders[k]))
    return pending.pop(sets[key][0])


class _Worker:
    def __init__(self, wid: int, device: str, proc, conn):
        self.wid, self.device, self.proc, self.conn = wid, device, proc, conn
        self.job = None        # the job it is rendering
        self.started = 0.0     # when it was handed that job (time.monotonic)
        self.timed_out = False  # killed for taking longer than the pool's row_timeout
        self.idle = False
        self.weight_key = None


def format_seconds(seconds: float) -> str:
    """``1800`` -> ``30m``, ``5400`` -> ``90m``, ``7200`` -> ``2h``, ``45`` -> ``45s``: a --row-timeout as written."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def timeout_error(seconds: float, wid: int, device: str) -> str:
    """The error of a row stopped for taking longer than ``--row-timeout``."""
    shown = format_seconds(seconds)
    return (f"took longer than --row-timeout {shown} (worker {wid}, {device}, was stopped and replaced; nothing of "
            f"this row was kept); raise it (e.g. --row-timeout {format_seconds(seconds * 2)}) if the row is only long, or "
            "run the row alone (echomimic animate/dub) with -v to see where it hangs. A rerun renders it again.")


class LocalPool(CrashRule):
    """``devices``: one entry per worker (``cpu``, ``cuda:0``, ...). Events: (kind, worker, job, payload) with kind
    ``start`` | ``progress`` | ``done`` | ``died``. ``row_timeout``: seconds a row may take before its worker is
    killed and the row fails (None: no limit). The death rules are :class:`.crash_rule.CrashRule`'s."""

    def __init__(self, devices: list[str], threads: int = 1, scores: bool = True, max_attempts: int = 3,
                 respawns: int | None = None, row_timeout: float | None = None):
        CrashRule.__init__(self, len(devices), max_attempts, respawns)
        self.ctx = mp.get_context("spawn")
        self.devices, self.threads, self.scores, self.row_timeout = devices, threads, scores, row_timeout
        self.workers: list[_Worker] = []
        self._next_id = 0
        for device in devices:
            self._spawn(device)

    def _spawn(self, device: str) -> None:
        parent_conn, child_conn = self.ctx.Pipe()
        wid, self._next_id = self._next_id, self._next_id + 1
        level = logging.getLogger("echomimic_lib").getEffectiveLevel()
        proc = self.ctx.Process(target=worker_main, name=f"echomimic-batch-{wid}", daemon=True,
                                args=(wid, device, self.threads, child_conn, os.getpid(), self.scores, max(level, logging.WARNING)))
        proc.start()
        child_conn.close()
        self.workers.append(_Worker(wid, device, proc, parent_conn))

    def _pick(self, pending: list, worker: _Worker):
        return pick_job(pending, worker.weight_key, [w.weight_key for w in self.workers if w is not worker])

    def run(self, jobs: list, on_event) -> None:
        """Hand out ``jobs`` (grouped by weight set) until each is done or has failed ``max_attempts`` times."""
        pending = sorted(jobs, key=lambda j: (tuple(map(str, j.weight_key)), j.line))
        remaining = len(pending)
        while remaining:
            if not self.workers:
                for job in pending:
                    on_event("done", None, job, {"status": "error", "error": "no worker left: every worker died (see the log)."})
                return
            for w in self.workers:
                if w.idle and pending:
                    job = self._pick(pending, w)
                    job.attempts += 1
                    w.job, w.idle, w.weight_key, w.started = job, False, job.weight_key, time.monotonic()
                    w.conn.send(job)
                    on_event("start", w, job, None)
            ready = wait([w.conn for w in self.workers] + [w.proc.sentinel for w in self.workers], timeout=1.0)
            for w in list(self.workers):
                if w.conn in ready:
                    for kind, _name, payload in _received(w.conn):  # on_event's own errors are raised, not taken for the pipe's
                        if kind == "idle":
                            w.idle = True
                        elif kind == "progress" and w.job is not None:
                            on_event("progress", w, w.job, payload)
                        elif kind == "done" and w.job is not None:
                            job, w.job = w.job, None
                            remaining -= 1
                            if isinstance(payload, dict) and payload.get("status") == "ok":
                                self.finished_one(job)
                            on_event("done", w, job, payload)
                if self.row_timeout and w.job is not None and not w.timed_out and w.proc.is_alive() \
                        and time.monotonic() - w.started > self.row_timeout and not _answered(w.conn):
                    log.warning("worker %d (%s): line %d (%s) took longer than the row timeout: worker stopped",
                                w.wid, w.device, w.job.line, w.job.name)
                    w.timed_out = True
                    w.proc.kill()
                    w.proc.join(timeout=10)
                if not w.proc.is_alive():
                    remaining -= self._buried(w, pending, on_event)

    def _buried(self, w: _Worker, pending: list, on_event) -> int:
        """A worker died: requeue its job (or fail it after ``max_attempts``; a weight set whose rows crash the worker:
        fail its rows, :meth:`.crash_rule.CrashRule.died`; a row past ``row_timeout``: fail it), start a replacement.
        Returns the number of jobs this finished."""
        w.proc.join(timeout=1)
        self.workers.remove(w)
        w.conn.close()
        ended = []
        job = w.job
        if job is not None and w.timed_out:  # killed by us: the row, not the worker, is the problem
            job.retrying = False
            why = timeout_error(self.row_timeout, w.wid, w.device)
            on_event("died", w, job, why)
            ended = [(job, {"status": "error", "error": why})]
        elif job is not None:
            why = f"worker {w.wid} ({w.device}) died (exit code {w.proc.exitcode}) while rendering it"
            ended = self.died(job, why, pending)  # (decides job.retrying before the death is reported)
            on_event("died", w, job, why)
        for n, (each, payload) in enumerate(ended):
            on_event("done", w if n == 0 else None, each, payload)  # (the others never started: no worker)
        if w.timed_out or self.take_respawn():
            self._spawn(w.device)
        return len(ended)

    def close(self, now: bool = False) -> None:
        """Stop the workers: after their current job, or ``now`` (interrupted: killed at once)."""
        for w in self.workers if now else ():
            w.proc.kill()
        for w in self.workers:
            try:
                w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self.workers:
            w.proc.join(timeout=10)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=5)
        self.workers = []
