"""How a command-line process ends when it is told to stop or its reader goes away (``echomimic`` and
``echomimic-train``; the entry points wrap their work in :func:`run_command`).

- SIGINT (Ctrl-C) raises ``KeyboardInterrupt`` as always; SIGTERM (a job scheduler preempting the job, ``kill``,
  ``timeout``) raises :class:`Terminated`, a ``KeyboardInterrupt``, so the same clean-up runs (temporary files
  removed, a batch's ``results.jsonl`` rewritten whole). One line on stderr, no traceback; exit code 130 for
  SIGINT, 143 for SIGTERM (128 + the signal number, what a shell shows for a process the signal ended).
- A second SIGINT or SIGTERM while the clean-up of the first runs is ignored: the clean-up finishes, and the exit code
  is the first signal's (``kill -9`` still ends the process at once).
- stdout (or stderr) closed by its reader (``echomimic-train plan ... | head -1``): no error line, no traceback; exit code 141
  (128 + SIGPIPE, what the shell reports for ``cat`` in the same pipe, so ``set -o pipefail`` sees the usual code).
  ``--help`` (or a usage error) written into such a pipe too: the parsers are :class:`PipeAwareParser`, whose failed
  write is not swallowed as argparse's own is.

The handlers are installed only while :func:`run_command` runs (never at import), only in the main thread, and
only for a signal that still has Python's default handling (SIGINT raising ``KeyboardInterrupt``, SIGTERM ending the
process): a program embedding the CLI keeps its own handlers. The previous handlers are restored afterwards.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
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


@contextlib.contextmanager
def stop_signals_raise():
    """While inside: SIGTERM raises :class:`Terminated`, SIGINT ``KeyboardInterrupt``; the first of them makes both
    ignored, so that a second one does not cut the clean-up short (see the module's notes for when a signal is left
    alone)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {sig: signal.getsignal(sig) for sig in defaults}
    ours = [sig for sig in defaults if previous[sig] is defaults[sig]]

    def stop(signum, frame):
        for sig in ours:  # from here on the clean-up runs to its end
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    for sig in ours:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig in ours:
            signal.signal(sig, previous[sig])


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


class PipeAwareParser(argparse.ArgumentParser):
    """argparse drops a failed write of its help or usage text, so ``echomimic --help | head -1`` ended with 0 where the
    output was unbuffered or longer than the buffer: here a broken pipe to a reader that went away is raised, and
    :func:`run_command` ends with 141. Sub-command parsers are of the parent's class unless given another."""

    def _print_message(self, message, file=None):
        if not message:
            return
        file = file or sys.stderr
        try:
            file.write(message)
            file.flush()  # a closed pipe shows here, whether the text fitted the buffer or not
        except BrokenPipeError:
            raise
        except (AttributeError, OSError):  # as argparse: no stream (pythonw), or another failed write
            pass

    def parse_known_args(self, args=None, namespace=None):
        """A command's parser (one without sub-commands) names a misspelt ``--option`` itself, with the option meant
        (``--refrence: did you mean --reference?``), before argparse would say that the option meant is missing or
        leave the unknown word to the top-level parser's usage."""
        if args is not None and not any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            unknown = _unknown_options(self, list(args))
            if unknown:
                self.error("unrecognized arguments: " + " ".join(unknown) + "".join(
                    f"; {name}: did you mean {close[0]}?" for name in (word.split("=", 1)[0] for word in unknown)
                    if (close := difflib.get_close_matches(name, self._option_string_actions, 1, 0.75))))
        return super().parse_known_args(args, namespace)


def _unknown_options(parser: argparse.ArgumentParser, args: list) -> list:
    """The ``--words`` of ``args`` (before a lone ``--``) that are none of ``parser``'s options nor a prefix of one."""
    known = [o for o in parser._option_string_actions if o.startswith("--")]
    unknown = []
    for word in args:
        if word == "--":
            break
        name = word.split("=", 1)[0] if isinstance(word, str) else ""
        if name.startswith("--") and len(name) > 2 and name not in known and not (
                parser.allow_abbrev and any(o.startswith(name) for o in known)):
            unknown.append(word)
    return unknown


def _say(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr gone too
        pass


def run_command(body, interrupted_note: str = "") -> int:
    """``body()`` (the parsed command) with SIGINT and SIGTERM raising (:func:`stop_signals_raise`); an interrupt that
    reaches this far (while parsing, importing, ...) gives one line and its exit code; stdout is flushed here, so that a
    closed pipe is noticed while it can still be answered quietly (:func:`broken_pipe_exit`)."""
    with stop_signals_raise():
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
