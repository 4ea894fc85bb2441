"""How far an ``echomimic queue`` run that waits is (``--wait``, ``--resume``, several ``--server``): now and then a line
on stderr, ``queue: 120/2000 done, 3 failed, 1877 waiting (on http://a:8188: 40, ...)``; stdout keeps the results
alone (scripts read them). A line when another twentieth of the jobs is over, or when fewer are but :data:`EVERY_S`
seconds passed since the last line; none while nothing changes, so a run of any size says a bounded number of lines
(about :data:`STEPS`, plus one per :data:`EVERY_S` at most). While a job runs long (one 20-minute render) a line now
and then, at most every :data:`EVERY_S` seconds, says it is still waited for: ``queue: still waiting for anna.png x
hello.wav on http://a:8188 (running), 12 min 30 s so far`` (:meth:`Progress.waiting`). ``-q`` / ``--quiet``: none of
these lines (errors, warnings and the results stay)."""
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

    def __init__(self, total: int, every_s: float | None = None, clock=None, steps: int = STEPS, quiet: bool = False):
        self.total, self.every_s, self.quiet = total, EVERY_S if every_s is None else every_s, quiet
        self.clock = clock or time.monotonic
        self.step = max(1, -(-total // max(1, steps)))
        self.over: int | None = None  # jobs over (done or failed) at the last line; None: no line yet
        self.said_at = 0.0
        self.lines = 0
        self.beat_at: float | None = None  # when the last line of any kind was said (None: none yet)

    def update(self, done: int, failed: int, waiting: int, where: dict[str, int] | None = None) -> None:
        """The run now: ``done`` jobs finished (their files), ``failed``, ``waiting`` (queued or not yet sent);
        ``where``: the jobs waiting on each server (several servers)."""
        over, now = done + failed, self.clock()
        if self.over is None:
            if not waiting:  # nothing to wait for: the results say it all
                return
        elif over == self.over or (over - self.over < self.step and now - self.said_at < self.every_s and waiting):
            return
        self.over, self.said_at, self.beat_at = over, now, now
        line = f"queue: {done}/{self.total} done, {failed} failed, {waiting} waiting"
        busy = [(url, n) for url, n in (where or {}).items() if n]
        if busy and waiting:
            shown = ", ".join(f"{url}: {n}" for url, n in busy[:SHOWN_SERVERS])
            rest = f", {len(busy) - SHOWN_SERVERS} more server(s)" if len(busy) > SHOWN_SERVERS else ""
            line += f" (on {shown}{rest})"
        self._say(line)

    def waiting(self, job: str, server: str, since: float, place: str | None = None) -> None:
        """The run is waiting for ``job`` on ``server`` since ``since`` (this clock's time); ``place``: what the
        server's /queue said of it (``running``, ``3rd in its queue``; None: not asked yet). Said at most every
        ``every_s`` seconds after the last line of any kind, and only once a line said how far the run is."""
        now = self.clock()
        if self.beat_at is None or now - self.beat_at < self.every_s:
            return
        self.beat_at = now
        self._say(f"queue: still waiting for {job} on {server}" + (f" ({place})" if place else "")
                  + f", {duration(now - since)} so far")

    def _say(self, line: str) -> None:
        if not self.quiet:
            self.lines += 1
            sys.stderr.write(printable(line) + "\n")


def duration(seconds: float) -> str:
    """``seconds`` as a person reads them: ``45 s``, ``12 min 30 s``, ``3 h 5 min``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
