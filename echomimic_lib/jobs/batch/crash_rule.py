"""The rules for worker deaths that both backends keep (:class:`.workers.LocalPool`, :mod:`.ray_backend`), in one place.

A worker that dies has its row retried until ``max_attempts``; a weight set whose rows keep crashing the worker
fails only its own rows, named once with the ``echomimic doctor`` command that checks it; workers are restarted
within a budget that every finished row gives back (:func:`respawn_budget`)."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def set_crash_error(key: tuple, gave_up: int, line: int, attempts: int) -> str:
    """The error of every row of a weight set that crashes the worker (:meth:`CrashRule.crashed_set`)."""
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
    row gives the budget back (:meth:`CrashRule.finished_one`): only a setup where nothing finishes (a broken driver)
    runs it out, and then the batch ends."""
    return max(2 * workers, max_attempts)


class CrashRule:
    """The death bookkeeping of one batch run: ``workers`` started at first, ``max_attempts`` per row."""

    def __init__(self, workers: int, max_attempts: int = 3, respawns: int | None = None):
        self.max_attempts = max_attempts
        self.respawn_budget = respawn_budget(workers, max_attempts) if respawns is None else respawns
        self.respawns_left = self.respawn_budget
        self.set_crashes: dict = {}  # repr(weight key) -> {"gave_up": the line of its row that used up its attempts}
        self.bad_sets: dict = {}     # repr(weight key) -> the error of its rows (they crash the worker)

    def finished_one(self, job=None) -> None:
        """A row rendered: the workers work; the deaths before it are forgiven (a long batch with a crashing row now
        and then keeps its workers), its weight set's too."""
        self.respawns_left = max(self.respawns_left, self.respawn_budget)
        if job is not None:
            self.set_crashes.pop(repr(job.weight_key), None)

    def crashed_set(self, job) -> str | None:
        """Count a death of ``job``'s weight set; the set's error when its rows crash the worker: a row of the set
        gave up after its attempts and another row of it crashed too, with no row of it rendered in between."""
        key = repr(job.weight_key)
        if key in self.bad_sets:
            return self.bad_sets[key]
        seen = self.set_crashes.setdefault(key, {"gave_up": None})
        if seen["gave_up"] is None or seen["gave_up"] == job.line:
            if job.attempts >= self.max_attempts:
                seen["gave_up"] = job.line
            return None
        self.bad_sets[key] = why = set_crash_error(job.weight_key, seen["gave_up"], job.line, self.max_attempts)
        log.warning("%s", why)
        return why

    def died(self, job, why: str, pending: list) -> list:
        """``job``'s worker died (``why``): count it. Returns the ``(job, payload)`` that end now (the row, and a
        crashing weight set's other rows, taken out of ``pending``), or [] when the row goes back to the front of
        ``pending`` for another attempt. ``job.retrying`` says which, before the caller reports the death."""
        set_error = self.crashed_set(job)
        job.retrying = False
        if set_error is not None:  # the weight set is the problem: its rows fail, the other sets' go on
            same = [j for j in pending if j.weight_key == job.weight_key]
            pending[:] = [j for j in pending if j.weight_key != job.weight_key]
            if pending:  # (its deaths were the set's, not the machine's)
                self.respawns_left = max(self.respawns_left, self.respawn_budget)
            return [(each, {"status": "error", "error": set_error}) for each in [job, *same]]
        if job.attempts >= self.max_attempts:
            return [(job, {"status": "error", "error": f"{why}, {job.attempts} time(s); giving up on this row."})]
        job.retrying = True
        pending.insert(0, job)
        return []

    def take_respawn(self) -> bool:
        """May a dead worker be replaced? (Uses one from the budget.)"""
        if self.respawns_left > 0:
            self.respawns_left -= 1
            return True
        return False
