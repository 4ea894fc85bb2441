"""Third trust audit, ``echomimic queue``: an answer of any size is read up to a limit (a wrong address can stream
without end), and a refused request's answer of any shape is explained, never a traceback."""
from __future__ import annotations

import json

import pytest

from echomimic_lib.jobs import queue_client as qc
from tests._http_stub import JsonHandler, start


def test_the_reply_limit_is_a_generous_module_constant():
    assert qc.MAX_REPLY_BYTES == 64 * 1024 * 1024


class Endless(JsonHandler):
    """Answers GET with a body larger than the (lowered) limit: no Content-Length (read until closed), or a declared
    one far over the limit."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path.startswith("/declared"):
            self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
            self.wfile.write(b"{")
            return
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b'{"x": "' + b"a" * 20000 + b'"}')


@pytest.mark.parametrize("path", ["/history/p1", "/declared"])
def test_a_reply_over_the_limit_is_a_queue_error_naming_the_server_and_the_limit(path, monkeypatch):
    monkeypatch.setattr(qc, "MAX_REPLY_BYTES", 4096)
    url, stop = start(Endless)
    try:
        with pytest.raises(qc.QueueError) as info:
            qc._request(url + path, timeout=10)
    finally:
        stop()
    msg = str(info.value)
    assert url in msg and "larger than 4096 bytes" in msg and "ComfyUI's address" in msg, msg


def test_a_reply_within_the_limit_is_read_whole(monkeypatch):
    monkeypatch.setattr(qc, "MAX_REPLY_BYTES", 64 * 1024)
    url, stop = start(Endless)
    try:
        reply = qc._request(url + "/history/p1", timeout=10)
    finally:
        stop()
    assert reply == {"x": "a" * 20000}


def test_the_default_limit_is_named_in_mib(monkeypatch):
    url, stop = start(Endless)
    try:
        monkeypatch.setattr(qc, "MAX_REPLY_BYTES", 2 * 2**20)
        with pytest.raises(qc.QueueError, match="larger than 2 MiB"):
            qc._request(url + "/declared", timeout=10)
    finally:
        stop()


REFUSALS = {
    "/str": ({"error": "prompt has no outputs"}, ["HTTP 400", "prompt has no outputs"]),
    "/list": (["not", "an", "object"], ["HTTP 400", "not", "object"]),
    "/node-str": ({"error": {"message": "invalid prompt"}, "node_errors": {"5": "junk"}}, ["invalid prompt", "node 5", "junk"]),
    "/errors-str": ({"node_errors": {"7": {"class_type": "X", "errors": "bad value"}}}, ["node 7 (X)", "bad value"]),
    "/errors-items": ({"node_errors": {"7": {"errors": ["plain", {"message": "m", "details": "d"}]}}}, ["plain", "m: d"]),
    "/null": (None, ["HTTP 400", "null"]),
}


class Refuses(JsonHandler):
    def do_GET(self):
        data = json.dumps(REFUSALS[self.path][0]).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.parametrize("path", sorted(REFUSALS))
def test_a_refusal_of_any_shape_is_explained(path):
    url, stop = start(Refuses)
    try:
        with pytest.raises(qc.QueueError) as info:
            qc._request(url + path, timeout=10)
    finally:
        stop()
    msg = str(info.value)
    assert all(w in msg for w in REFUSALS[path][1]), msg
