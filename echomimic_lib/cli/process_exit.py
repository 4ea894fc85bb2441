"""How a command-line process ends when it is told to stop or its reader goes away (``echomimic`` and
``echomimic-train``; the entry points wrap their work in :func:`run_command`).

- SIGINT (Ctrl-C) raises ``KeyboardInterrupt`` as always; SIGTERM (a job scheduler preempting the job, ``kill``,
  ``timeout``) raises :class:`Terminated`, a ``KeyboardInterrupt``, so the same clean-up runs (temporary files
  removed, a batch's ``results.jsonl`` rewritten whole). One line on stderr, no traceback; exit code 130 for
  SIGINT, 143 for SIGTERM (128 + the signal number, what a shell shows for a process the signal ended).
- stdout (or stderr) closed by its reader (``echomimic-train plan ... | head -1``): no error line, no traceback; exit code 141
  (128 + SIGPIPE, what the shell reports for ``cat`` in the same pipe, so ``set -o pipefail`` sees the usual code).

The SIGTERM handler is installed only while :func:`run_command` runs (never at import), only in the main thread,
and only where SIGTERM still has its default action (a program embedding the CLI keeps its own handler); the
previous handler is restored afterwards.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

EXIT_SIGINT = 130  # 128 + SIGINT
EXIT_SIGTERM = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's ``KeyboardInterrupt`` (and caught wherever that is)."""


def interrupt_exit_code(exc: BaseException) -> int:
    return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT


def interrupt_word(exc: BaseException) -> str:
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the clean-up short
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises():
    """While inside: SIGTERM raises :class:`Terminated` (see the module's notes for when it is left alone)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _closed(stream) -> bool:
    """Whether ``stream`` is a pipe or socket whose reader has gone (poll reports an error on it)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (tests): never "closed by its reader"
        return False
    try:
        import select

        poller = select.poll()
    except (ImportError, AttributeError):  # no poll (Windows): a broken pipe reaching the top is stdout's
        return True
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def output_closed() -> bool:
    """Whether stdout's reader went away, or stderr's (``2>&1 | head``): a broken pipe then ends the command quietly."""
    return _closed(sys.stdout) or _closed(sys.stderr)


def _silence(stream) -> None:
    """Point ``stream``'s file descriptor at the null device: what is still buffered, and the flush at exit, go
    nowhere instead of raising ``BrokenPipeError`` again ("Exception ignored ... BrokenPipeError")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def broken_pipe_exit() -> int:
    """The reader of stdout (or stderr) went away: silence the closed one(s); the exit code."""
    for stream in (sys.stdout, sys.stderr):
        if _closed(stream):
            _silence(stream)
    return EXIT_BROKEN_PIPE


def _say(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr gone too
        pass


def run_command(body, interrupted_note: str = "") -> int:
    """``body()`` (the parsed command) with SIGTERM raising :class:`Terminated`; an interrupt that reaches this far
    (while parsing, importing, ...) gives one line and its exit code; stdout is flushed here, so that a closed pipe is
    noticed while it can still be answered quietly (:func:`broken_pipe_exit`)."""
    with sigterm_raises():
        try:
            rc = body()
            sys.stdout.flush()
            return rc
        except KeyboardInterrupt as exc:
            _say(f"\n{interrupt_word(exc)}{interrupted_note}\n")
            return interrupt_exit_code(exc)
        except BrokenPipeError:
            if not output_closed():
                raise
            return broken_pipe_exit()
        except SystemExit:  # argparse after --help or a usage error: its text is still buffered
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                if not output_closed():
                    raise
                return broken_pipe_exit()
            raise
