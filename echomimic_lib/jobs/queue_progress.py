"""How far an ``echomimic queue`` run that waits is (``--wait``, ``--resume``, several ``--server``): now and then a line
on stderr, ``queue: 120/2000 done, 3 failed, 1877 waiting (on http://a:8188: 40, ...)``; stdout keeps the results
alone (scripts read them). A line when another twentieth of the jobs is over, or when fewer are but :data:`EVERY_S`
seconds passed since the last line; none while nothing changes, so a run of any size says a bounded number of lines
(about :data:`STEPS`, plus one per :data:`EVERY_S` at most)."""
from __future__ import annotations

import sys
import time

from ..errors import printable

EVERY_S = 30.0  # a line for fewer than a step of jobs over: at most this often (seconds)
STEPS = 20  # a line each time another 1/STEPS of the jobs is over
SHOWN_SERVERS = 4  # servers named in a line (the others counted)


class Progress:
    """Counts of a waiting run, said by :meth:`update` when they are worth a line. ``every_s`` (default
    :data:`EVERY_S`) and ``clock`` (default ``time.monotonic``) can be given, so that a test need not sleep."""

    def __init__(self, total: int, every_s: float | None = None, clock=None, steps: int = STEPS):
        self.total, self.every_s = total, EVERY_S if every_s is None else every_s
        self.clock = clock or time.monotonic
        self.step = max(1, -(-total // max(1, steps)))
        self.over: int | None = None  # jobs over (done or failed) at the last line; None: no line yet
        self.said_at = 0.0
        self.lines = 0

    def update(self, done: int, failed: int, waiting: int, where: dict[str, int] | None = None) -> None:
        """The run now: ``done`` jobs finished (their files), ``failed``, ``waiting`` (queued or not yet sent);
        ``where``: the jobs waiting on each server (several servers)."""
        over, now = done + failed, self.clock()
        if self.over is None:
            if not waiting:  # nothing to wait for: the results say it all
                return
        elif over == self.over or (over - self.over < self.step and now - self.said_at < self.every_s and waiting):
            return
        self.over, self.said_at, self.lines = over, now, self.lines + 1
        line = f"queue: {done}/{self.total} done, {failed} failed, {waiting} waiting"
        busy = [(url, n) for url, n in (where or {}).items() if n]
        if busy and waiting:
            shown = ", ".join(f"{url}: {n}" for url, n in busy[:SHOWN_SERVERS])
            rest = f", {len(busy) - SHOWN_SERVERS} more server(s)" if len(busy) > SHOWN_SERVERS else ""
            line += f" (on {shown}{rest})"
        sys.stderr.write(printable(line) + "\n")
