"""``echomimic queue``, round 11: over several servers each job's server is picked by the depth ComfyUI itself says in
GET /prompt (``{"exec_info": {"queue_remaining": N}}``: running + pending), never by fetching every queued prompt from
GET /queue (answers that grow with the queue, past the client's 64 MiB cap with ~8,000 prompts queued); a server
without it is asked /queue as before. A file given as ``--state`` that is no state file (a video given by mistake) is
refused with the advice to give --state a file of its own, never to delete it."""
from __future__ import annotations

import pytest

from tests.test_batch_hunt_5 import _comfy_handler, _queue, media  # noqa: F401  (fixtures)
from tests.test_queue_state_5 import _records, no_wait, servers  # noqa: F401  (fixtures)


def _counting(backlog: int, exec_info: bool = True):
    """The stand-in with ``backlog`` prompts of other clients queued, plus each of ours until its /history is asked
    (both in /queue and, with ``exec_info``, in GET /prompt's queue_remaining); ``state["gets"]``: the paths asked."""

    def handler(state):
        base = _comfy_handler(state)
        state["gets"], state["unasked"] = [], set()

        class Counting(base):
            def do_POST(self):
                before = len(state["prompts"])
                super().do_POST()
                state["unasked"].update(state["prompts"][before:])

            def do_GET(self):
                state["gets"].append(self.path)
                waiting = backlog + len(state["unasked"])
                if self.path == "/queue":
                    items = [[n, f"other{n}", {}, {}, []] for n in range(waiting)]
                    return self._reply(200, {"queue_running": items[:1], "queue_pending": items[1:]})
                if self.path == "/prompt":
                    return self._reply(200, {"exec_info": {"queue_remaining": waiting}} if exec_info else {})
                state["unasked"].discard(self.path.rsplit("/", 1)[-1])
                return super().do_GET()

        return Counting

    return handler


@pytest.mark.parametrize("exec_info", [True, False])
def test_the_depth_comes_from_get_prompt_never_the_whole_queue(servers, media, tmp_path, no_wait, exec_info):
    a_url, a, _ = servers(handler=_counting(2000, exec_info))
    b_url, b, _ = servers(handler=_counting(1999, exec_info))
    assert _queue(a_url, media, "--server", b_url, "--results", str(tmp_path / "r")) == 0
    # job 1: A 2000, B 1999 -> B (then 2000); job 2: a tie -> A, the server named first
    assert (len(a["prompts"]), len(b["prompts"])) == (1, 1)
    recs = _records(tmp_path / "r")
    assert [r["server"] for r in recs] == [b_url, a_url] and all(r["status"] == "ok" for r in recs)
    for state in (a, b):
        if exec_info:
            assert "/queue" not in state["gets"] and state["gets"].count("/prompt") == 2, state["gets"]
        else:  # (a server without queue_remaining: its /queue, as before; GET /prompt asked once)
            assert state["gets"].count("/queue") == 2 and state["gets"].count("/prompt") == 1, state["gets"]


def _refused(path):
    from echomimic_lib.jobs.queue_client import QueueError, QueueState

    before = path.read_bytes()
    with pytest.raises(QueueError) as info:
        QueueState(path)
    assert path.read_bytes() == before  # never written
    return str(info.value)


@pytest.mark.parametrize("data", [b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 8,
                                  b"RIFF$\x00\x00\x00WAVEfmt ", b"hello, a text file\n", b"[1, 2, 3]\n"])
def test_a_file_that_is_no_state_file_is_never_said_to_be_deleted(tmp_path, data):
    video = tmp_path / "take1.mp4"
    video.write_bytes(data)
    msg = _refused(video)
    assert str(video) in msg and "not an `echomimic queue` state file" in msg, msg
    assert "give --state a file of its own" in msg and "delete" not in msg, msg


def test_a_damaged_state_file_keeps_its_advice(tmp_path):
    state = tmp_path / ".echomimic_queue.json"
    state.write_bytes(b'{\n "version": 2,\n "servers": {\n  "http://127.0.0.1:8188": {"ech')
    msg = _refused(state)
    assert "cannot be read" in msg and "delete it or move it away" in msg, msg
