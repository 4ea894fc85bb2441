"""Sampling progress from Ray actors to the batch driver, as the local workers send it down their pipes.

Three parts, each a plain class or function (nothing here imports Ray; :mod:`.ray_backend` passes it in):

- :class:`ProgressSink`, a small Ray actor on the driver's node holding the events, at most ``size`` of them:
  when the driver lags, the oldest are dropped (the newest step is the one worth showing).
- :class:`ProgressSender`, in each render actor, the ``progress(done, total)`` callback of a job. Each event is
  one fire-and-forget call to the sink (the render never waits on it); at most ``limit`` calls may be
  unanswered, further events are dropped. Once the sink is found dead or unresponsive the sender stops
  sending: progress never fails or slows a row. :meth:`ProgressSender.flush` waits (briefly) at the end of a
  job until its events are in the sink, so the driver, which drains the sink before it records a finished
  job, sees every step of it before its ``done``, as from a local worker.
- :func:`forward`, on the driver: the drained events as ``("progress", actor, job, (done, total))``, the event
  of :meth:`.workers.LocalPool.run`, so the display, the log and ``BatchOptions.on_event`` take them unchanged.
  An event is ``(wid, name, attempt, done, total)``; one whose actor no longer renders that attempt of that
  job (it died and the job went elsewhere, or the job is done) is dropped.
"""
from __future__ import annotations

import logging
from collections import deque

log = logging.getLogger(__name__)

SINK_SIZE = 10_000   # events the sink holds between two drains
IN_FLIGHT = 64       # unanswered sends per actor before events are dropped
FLUSH_S = 2.0        # at most this long at the end of a job for its events to reach the sink
DRAIN_S = 10.0       # at most this long for the driver to get the sink's events


class ProgressSink:
    """The events of every actor until the driver drains them; ``dropped`` counts those pushed out."""

    def __init__(self, size: int = SINK_SIZE):
        self.events, self.dropped = deque(maxlen=max(1, size)), 0

    def put(self, event) -> None:
        if len(self.events) == self.events.maxlen:
            self.dropped += 1
        self.events.append(event)

    def drain(self) -> list:
        events = list(self.events)
        self.events.clear()
        return events


class ProgressSender:
    """Actor side. ``ray``: the Ray module (or a stand-in with ``wait`` and ``get``); ``sink``: a handle whose
    ``put.remote(event)`` returns a reference, or None (no progress)."""

    def __init__(self, ray, sink, wid: int, limit: int = IN_FLIGHT, flush_s: float = FLUSH_S):
        self.ray, self.sink, self.wid, self.limit, self.flush_s = ray, sink, wid, limit, flush_s
        self.in_flight, self.dropped = [], 0

    def for_job(self, job):
        """The ``progress(done, total)`` callback of ``job`` (this attempt of it)."""
        tag = (self.wid, job.name, job.attempts)

        def progress(done, total):
            self.send((*tag, int(done), int(total)))
        return progress

    def send(self, event) -> None:
        if self.sink is None:
            return
        try:
            self._settle(timeout=0)
            if len(self.in_flight) >= self.limit:
                self.dropped += 1
                return
            self.in_flight.append(self.sink.put.remote(event))
        except Exception as exc:  # noqa: BLE001 - whatever Ray says, the render goes on without progress
            self._give_up(exc)

    def flush(self) -> None:
        """Wait at most ``flush_s`` for the events sent to be in the sink; a sink that does not answer in that
        time is given up (a hung sink costs one job one wait, not every job)."""
        if self.sink is None or not self.in_flight:
            return
        try:
            self._settle(timeout=self.flush_s)
            if self.in_flight:
                self._give_up(f"no answer in {self.flush_s:g} s")
        except Exception as exc:  # noqa: BLE001
            self._give_up(exc)

    def _settle(self, timeout: float) -> None:
        """Drop the answered sends; an answer that is an error (the sink died) raises."""
        if not self.in_flight:
            return
        done, self.in_flight = self.ray.wait(self.in_flight, num_returns=len(self.in_flight), timeout=timeout)
        if done:
            self.ray.get(done, timeout=0)

    def _give_up(self, why) -> None:
        log.warning("Ray actor %s: no more sampling progress to the driver (%s); the rows go on.", self.wid,
                    str(why).strip().splitlines()[0] if str(why).strip() else type(why).__name__)
        self.sink, self.in_flight = None, []


def forward(events, busy, on_event) -> int:
    """Hand ``events`` (``(wid, name, attempt, done, total)``) to ``on_event`` as ``("progress", actor, job,
    (done, total))`` where ``busy`` (any -> (actor, job)) still has that actor on that attempt of that job;
    the others are dropped. Returns how many were handed on."""
    current = {(w.wid, job.name, job.attempts): (w, job) for w, job in busy.values()}
    n = 0
    for wid, name, attempt, done, total in events:
        hit = current.get((wid, name, attempt))
        if hit is not None:
            on_event("progress", hit[0], hit[1], (done, total))
            n += 1
    return n


def drain(ray, sink, busy, on_event, timeout: float = DRAIN_S):
    """Driver side: get the sink's events and :func:`forward` them. Returns the sink, or None once it cannot be
    reached (the batch goes on, its bar counting finished rows only)."""
    if sink is None:
        return None
    try:
        events = ray.get(sink.drain.remote(), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - a lost sink loses the progress, not the batch
        log.warning("the Ray actors' sampling progress is lost (%s); the batch goes on.",
                    (str(exc).strip().splitlines() or [type(exc).__name__])[0])
        return None
    forward(events, busy, on_event)
    return sink
