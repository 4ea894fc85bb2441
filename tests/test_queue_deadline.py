"""The deadline of one ``echomimic queue`` request (echomimic_lib/jobs/queue_deadline.py) and Ctrl-C: a SIGINT that
lands while the deadline's timer thread is being started (the moment the request is sent: "Ctrl-C during the first
upload") is the one interrupted line, never "RuntimeError: cannot join thread before it is started" (a stress run of
that window hit it twice in 200 tries); the timer's thread never takes SIGINT / SIGTERM, so the main thread's blocked
read is the one they wake."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import pytest

from echomimic_lib.jobs import queue_deadline
from echomimic_lib.jobs.queue_deadline import Deadline

needs_signals = pytest.mark.skipif(not hasattr(signal, "pthread_sigmask") or
                                   threading.current_thread() is not threading.main_thread(),
                                   reason="POSIX signal masks, in the main thread")


def _sigint_during_start(monkeypatch):
    """Timers whose start() is hit by a SIGINT before their thread exists (the signal is raised in this thread)."""
    started = []

    class Hit(threading.Timer):
        def start(self):
            started.append(self)
            signal.raise_signal(signal.SIGINT)
            super().start()

    monkeypatch.setattr(queue_deadline.threading, "Timer", Hit)
    return started


@needs_signals
def test_a_ctrl_c_while_the_timer_starts_is_a_keyboard_interrupt_and_stop_is_clean(monkeypatch):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    started = _sigint_during_start(monkeypatch)
    try:
        deadline = Deadline(30)
        with pytest.raises(KeyboardInterrupt):
            deadline.start()
        deadline.stop()  # (before: RuntimeError "cannot join thread before it is started", a traceback at Ctrl-C)
    finally:
        signal.signal(signal.SIGINT, previous)
    timer = started[0]
    timer.join(5)
    assert not timer.is_alive() and timer.finished.is_set()  # cancelled: it never shuts a socket later
    assert not deadline.expired


@needs_signals
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task/<tid>/status")
def test_the_timer_thread_never_takes_sigint_or_sigterm():
    deadline = Deadline(30)
    try:
        deadline.start()
        timer = deadline._timer
        status = Path(f"/proc/self/task/{timer.native_id}/status").read_text()
        blocked = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
        for sig in (signal.SIGINT, signal.SIGTERM):
            assert blocked >> (sig - 1) & 1, (sig, hex(blocked))  # (before: 0, so either could land there)
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, set()) & {signal.SIGINT, signal.SIGTERM}  # ours unblocked
    finally:
        deadline.stop()
    assert not deadline._timer.is_alive()
