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
import traceback
from multiprocessing.connection import wait

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
        self.idle = False
        self.weight_key = None


def set_crash_error(key: tuple, gave_up: int, line: int, attempts: int) -> str:
    """The error of every row of a weight set that crashes the worker (:meth:`LocalPool._crashed_set`)."""
    label = ", ".join(str(k) for k in key[:3] if k not in ("", None))
    check = (f"echomimic doctor --models {key[0]} --weights {key[1]}" if len(key) > 1
             and key[1] in ("v1_audio", "v1_pose", "v2") else "echomimic doctor")
    return (f"its weight set ({label}) crashes the worker: line {gave_up} crashed it on each of its {attempts} "
            f"attempt(s), then line {line} did too, so none of this set's rows is rendered (the other sets' rows go "
            f"on). Check the set with `{check}` (a file cut short or of another model, or a set too big for this "
            "machine's memory), then run the batch again: it renders these rows.")


def respawn_budget(workers: int, max_attempts: int) -> int:
    """Workers restarted after deaths with no row finished in between: at least one row's attempts (a row that
    crashes its worker every time never leaves the pool empty, even with one worker), 2 per worker otherwise. A finished
    row gives the budget back (:meth:`LocalPool.finished_one`): only a setup where nothing finishes (a broken driver)
    runs it out, and then the batch ends."""
    return max(2 * workers, max_attempts)


class LocalPool:
    """``devices``: one entry per worker (``cpu``, ``cuda:0``, ...). Events: (kind, worker, job, payload) with kind
    ``start`` | ``progress`` | ``done`` | ``died``."""

    def __init__(self, devices: list[str], threads: int = 1, scores: bool = True, max_attempts: int = 3,
                 respawns: int | None = None):
        self.ctx = mp.get_context("spawn")
        self.devices, self.threads, self.scores, self.max_attempts = devices, threads, scores, max_attempts
        self.respawn_budget = respawn_budget(len(devices), max_attempts) if respawns is None else respawns
        self.respawns_left = self.respawn_budget
        self.set_crashes: dict = {}  # repr(weight key) -> {"gave_up": the line of its row that used up its attempts}
        self.bad_sets: dict = {}     # repr(weight key) -> the error of its rows (they crash the worker)
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
                    w.job, w.idle, w.weight_key = job, False, job.weight_key
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
                if not w.proc.is_alive():
                    remaining -= self._buried(w, pending, on_event)

    respawn_budget = 0  # (set per pool in __init__)

    def finished_one(self, job=None) -> None:
        """A row rendered: the workers work; the deaths before it are forgiven (a long batch with a crashing row now
        and then keeps its workers), its weight set's too."""
        self.respawns_left = max(self.respawns_left, self.respawn_budget)
        if job is not None:
            self.__dict__.setdefault("set_crashes", {}).pop(repr(job.weight_key), None)

    def _crashed_set(self, job) -> str | None:
        """Count a death of ``job``'s weight set; the set's error when its rows crash the worker: a row of the set
        gave up after its attempts and another row of it crashed too, with no row of it rendered in between."""
        bad_sets = self.__dict__.setdefault("bad_sets", {})
        key = repr(job.weight_key)
        if key in bad_sets:
            return bad_sets[key]
        seen = self.__dict__.setdefault("set_crashes", {}).setdefault(key, {"gave_up": None})
        if seen["gave_up"] is None or seen["gave_up"] == job.line:
            if job.attempts >= self.max_attempts:
                seen["gave_up"] = job.line
            return None
        bad_sets[key] = why = set_crash_error(job.weight_key, seen["gave_up"], job.line, self.max_attempts)
        log.warning("%s", why)
        return why

    def _buried(self, w: _Worker, pending: list, on_event) -> int:
        """A worker died: requeue its job (or fail it after ``max_attempts``; a weight set whose rows crash the worker:
        fail its rows, :meth:`_crashed_set`), start a replacement. Returns the number of jobs this finished."""
        w.proc.join(timeout=1)
        self.workers.remove(w)
        w.conn.close()
        finished = 0
        job = w.job
        if job is not None:
            why = f"worker {w.wid} ({w.device}) died (exit code {w.proc.exitcode}) while rendering it"
            on_event("died", w, job, why)
            set_error = self._crashed_set(job)
            if set_error is not None:  # the weight set is the problem: its rows fail, the other sets' go on
                same = [j for j in pending if j.weight_key == job.weight_key]
                pending[:] = [j for j in pending if j.weight_key != job.weight_key]
                on_event("done", w, job, {"status": "error", "error": set_error})
                for each in same:  # (never started: no worker)
                    on_event("done", None, each, {"status": "error", "error": set_error})
                finished = 1 + len(same)
                if pending:  # (its deaths were the set's, not the machine's)
                    self.respawns_left = max(self.respawns_left, self.respawn_budget)
            elif job.attempts >= self.max_attempts:
                on_event("done", w, job, {"status": "error", "error": f"{why}, {job.attempts} time(s); giving up on this row."})
                finished = 1
            else:
                pending.insert(0, job)
        if self.respawns_left > 0:
            self.respawns_left -= 1
            self._spawn(w.device)
        return finished

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
