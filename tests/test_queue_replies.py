"""``echomimic queue --wait`` reads ComfyUI's /history: a reply of another shape (a proxy's JSON, another service on
the port, an older server) is a QueueError naming the address, never an AttributeError / TypeError traceback. The
client only lists the saved files' names as the server gives them; it downloads nothing, so no name is written to."""
from __future__ import annotations

import pytest

from echomimic_lib.jobs import queue_client as qc


@pytest.mark.parametrize("entry,words", [
    ("garbage", ["an entry of type str"]),
    ([1, 2], ["an entry of type list"]),
    ({"status": "done"}, ["its status is not an object"]),
    ({"status": {"status_str": "success"}, "outputs": [1, 2]}, ["its outputs are not an object"]),
])
def test_a_history_reply_of_another_shape_is_a_clear_error(entry, words, monkeypatch):
    monkeypatch.setattr(qc, "_request", lambda url, *a, **k: {"p1": entry})
    with pytest.raises(qc.QueueError) as info:
        qc.wait_for("http://127.0.0.1:8188", "p1", timeout=5, poll=0)
    msg = str(info.value)
    assert "http://127.0.0.1:8188/history/p1" in msg and "is this ComfyUI's address" in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("status,words", [
    ({"status_str": "error", "messages": [["execution_error", "not a dict"], "junk", [1]]}, "failed: see the ComfyUI log"),
    ({"status_str": "error", "messages": [["execution_error", {"exception_message": " boom "}]]}, "failed: boom"),
    ({"status_str": "error", "messages": [["execution_interrupted", {}]]}, "was cancelled (interrupted)"),
])
def test_failed_prompts_say_why_whatever_the_messages_hold(status, words, monkeypatch):
    monkeypatch.setattr(qc, "_request", lambda url, *a, **k: {"p1": {"status": status}})
    with pytest.raises(qc.QueueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        qc.wait_for("http://s", "p1", timeout=5, poll=0)


def test_saved_files_skip_items_of_another_shape():
    entry = {"outputs": {"9": {"images": [{"subfolder": "echomimic", "filename": "a.mp4"}, "junk", 3], "gifs": None},
                         "10": "junk", "11": {"gifs": [{"filename": "../b.mp4"}]}}}
    assert qc.outcome("http://s", "p", entry) == (None, ["echomimic/a.mp4", "../b.mp4"])  # names listed, nothing written
