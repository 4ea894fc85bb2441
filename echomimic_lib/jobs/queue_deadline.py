"""An overall deadline for one HTTP exchange of ``echomimic queue`` (standard library only).

urllib's ``timeout`` bounds each socket operation, not the exchange: a server that sends a byte every few seconds
holds a request open for as long as it likes (the client reads at most 64 MiB, which at that pace is forever).
:class:`Deadline` opens a request like ``urllib.request.urlopen`` (same proxies and HTTPS context) but notes the
connection's socket, and once the request is sent and the answer awaited starts a timer: when the answer has not come
whole within the deadline the socket is shut down, so the read blocked on it returns, and :attr:`Deadline.expired`
says why. (Sending is bounded by the socket timeout as before: ``sendall`` counts its timeout over the whole send.)
Stopping the timer waits for its thread, so none is left behind however many exchanges a run makes.

Why a timer thread and not a socket timeout recomputed from the time left before each read: http.client reads the
status line, headers and body through a buffered file over the socket, so the reads cannot be reached without
wrapping the socket (and the TLS socket) in a class of our own; one thread a process, watching every deadline, would
outlive the run and need its own queue of deadlines. A short-lived timer per exchange (a request every 2 s or so while
waiting) costs little and shuts the same socket whatever reads from it.
"""
from __future__ import annotations

import contextlib
import signal
import socket
import threading
import urllib.request


class Deadline:
    """``with Deadline(seconds) as d: resp = d.open(request, timeout)``: the answer must come whole within ``seconds``
    of the request being sent; after that the connection is shut (:attr:`expired` True). Leaving the ``with`` stops
    the timer."""

    def __init__(self, seconds: float):
        self.seconds, self.expired = float(seconds), False
        self._socks: list = []
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def open(self, req, timeout: float):
        """``urlopen(req, timeout)`` watched by this deadline; a redirect is not followed (an ``HTTPError`` 3xx)."""
        return urllib.request.build_opener(_Http(self), _Https(self), _NoRedirect()).open(req, timeout=timeout)

    def add(self, sock) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                _shut(sock)

    def start(self) -> None:
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(self.seconds, self._expire)
                self._timer.daemon = True
                with _stop_signals_held():
                    self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                _shut(sock)

    def stop(self) -> None:
        """Cancel the timer and wait for its thread to end (at once: it only waits on the cancelled event, or finishes
        shutting the sockets), so no thread outlives the exchange."""
        with self._lock:
            timer = self._timer
            if timer is not None:
                timer.cancel()
        if timer is not None and timer is not threading.current_thread() and timer.is_alive():
            timer.join()  # (outside the lock: an expiring timer takes it; a thread whose start a Ctrl-C cut short is
            # not alive yet, cannot be joined, and ends at once, cancelled)

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def _stop_signals_held():
    """SIGINT and SIGTERM held back (blocked) for this thread while inside, then delivered: the timer's thread, started
    inside, inherits the block and never takes them (a Ctrl-C the timer thread took would not wake the main thread's
    blocked read until the server answered), and a Ctrl-C cannot land inside ``Thread.start`` (its thread half started:
    ``join`` then raised "cannot join thread before it is started" instead of the one interrupted line). No
    ``pthread_sigmask`` (Windows): as before."""
    mask = getattr(signal, "pthread_sigmask", None)
    held = {getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name)}
    if mask is None or not held:
        yield
        return
    before = mask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, before)  # (a signal that came meanwhile is handled now, the thread started whole)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # (urllib then raises the 3xx as an HTTPError)


def _shut(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError, AttributeError):  # already closed
        pass


def _watched(http_class, deadline: Deadline):
    class Watched(http_class):
        def connect(self):
            super().connect()
            deadline.add(self.sock)

        def getresponse(self):
            deadline.start()  # the request is sent: from now on the answer's deadline runs
            return super().getresponse()

    return Watched


def _watching(handler_class):
    """``handler_class`` (urllib's HTTP or HTTPS handler) opening its connections through :func:`_watched`."""
    class Watching(handler_class):
        def __init__(self, deadline: Deadline):
            super().__init__()
            self.deadline = deadline

        def do_open(self, http_class, req, **kw):
            return super().do_open(_watched(http_class, self.deadline), req, **kw)

    return Watching


_Http, _Https = _watching(urllib.request.HTTPHandler), _watching(urllib.request.HTTPSHandler)
