"""Whether a ComfyUI server still holds a prompt while it renders (a restarted server has lost its queue), asked cheaply.

ComfyUI's ``GET /prompt`` says how many prompts it has running + pending (``{"exec_info": {"queue_remaining": N}}``, a
few bytes whatever the queue); ``GET /queue`` holds every queued workflow in full (megabytes with a long queue). So each
``QUEUE_CHECK_S`` the count is asked: 0 means nothing is queued there (a prompt not in /history either was lost); the
whole /queue (which says whether it holds *this* prompt, and where) only when the count changed since it was last asked,
every ``QUEUE_FULL_S`` otherwise (a restart that another client filled again), or from a server that says no count. A
/queue that cannot be read (past the client's 64 MiB, an error page) is said once, not passed over quietly.
"""
from __future__ import annotations

import sys
import time

from ..errors import printable
from .queue_replies import QueueError, in_queue, queue_place

EMPTY = {"queue_running": [], "queue_pending": []}
PASSING = (429, 502, 503, 504)  # a busy server's or its proxy's answers that pass (as queue_client.passing)


class QueueWatch:
    """One server's queue as a wait sees it. ``request(url, timeout=)``: the client's JSON GET (raises its QueueError);
    ``every``: the seconds between two looks (the client's QUEUE_CHECK_S), ``full_every``: between two whole /queue
    answers while the count stays the same (QUEUE_FULL_S)."""

    def __init__(self, server: str, request, timeout: float | None, every: float, full_every: float):
        self.server, self.request, self.timeout, self.every, self.full_every = server, request, timeout, every, full_every
        self.queue = None  # the last look's answer (None: it said nothing about single prompts); EMPTY when the count is 0
        self.last = None  # the last whole /queue answer read (for where a prompt is: it may be a look or more old)
        self.counts = True  # whether GET /prompt says queue_remaining
        self._next, self._full_at, self._full_count, self._said = float("-inf"), float("-inf"), None, False

    def look(self) -> bool:
        """Ask again when ``every`` seconds have passed since the last look (True: asked). A server that cannot be
        reached raises (the caller's /history finds it too); any other failed answer says nothing."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next, count = now + self.every, self._count()
        if count == 0:
            self.queue = EMPTY
        elif count is None or count != self._full_count or now >= self._full_at + self.full_every:
            self._full_at, self._full_count = now, count
            self.queue = self._whole(count)
            if self.queue is not None:
                self.last = self.queue
        else:
            self.queue = None
        return True

    def holds(self, prompt_id: str) -> bool | None:
        """What the last look says of ``prompt_id``: queued or running (True), not there (False), not said (None)."""
        return None if self.queue is None else in_queue(self.queue, prompt_id)

    def place(self, prompt_id: str):
        """Where the last whole /queue had ``prompt_id`` (``running``, ``queued, 3 prompt(s) before it``); None: not read."""
        return None if self.last is None else queue_place(self.last, prompt_id)

    def _count(self):
        if not self.counts:
            return None
        try:
            said = self.request(f"{self.server}/prompt", timeout=self.timeout).get("exec_info")
        except QueueError as exc:
            if "cannot reach" in str(exc):
                raise
            if getattr(exc, "code", None) in PASSING or getattr(exc, "no_answer", False) or getattr(exc, "broken", False):
                return None  # (in passing: a proxy's 502, no answer in time; the count is asked again at the next look)
            said = None
        left = said.get("queue_remaining") if isinstance(said, dict) else None
        if isinstance(left, int) and not isinstance(left, bool) and left >= 0:
            return left
        self.counts = False  # (an older server or a proxy: its /queue from now on)
        return None

    def _whole(self, count):
        try:
            return self.request(f"{self.server}/queue", timeout=self.timeout)
        except QueueError as exc:  # (too large, an error page, no answer)
            if "cannot reach" in str(exc):
                raise
            if not self._said:
                self._said = True
                then = ("a restart is found only once its queue is empty (GET /prompt's count)" if count is not None else
                        "a restart that loses the prompt is not noticed (the server says no count in GET /prompt): the "
                        "wait ends at its timeout")
                sys.stderr.write(printable(f"note: {exc}; whether the server still holds the prompts waited for cannot "
                                           f"be read there, so {then}.") + "\n")
            return None
