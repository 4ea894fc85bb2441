"""``echomimic queue --server A --server B``: jobs spread by queue depth over two stand-in ComfyUI servers on
127.0.0.1; one of them goes down with jobs queued, they are resubmitted to the other; results.jsonl records all."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from echomimic_lib.jobs.queue_client import main as queue_main
from tests._http_stub import JsonHandler, start

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows" / "api" / "v1_audio.json"


class StubComfy(JsonHandler):
    """Uploads, /prompt, /queue and GET /prompt's queue_remaining (prompts not yet finished), /history (a prompt
    finishes ``delay`` s after it came); with ``die_after`` it shuts itself down that many seconds after its first
    prompt."""

    state: dict

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        st = self.state
        if self.path == "/upload/image":
            name = body.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
            st["uploads"].append(name)
            return self._reply(200, {"name": name, "subfolder": "", "type": "input"})
        if self.path == "/prompt":
            prompt = json.loads(body)["prompt"]
            pid = f"{st['tag']}{len(st['prompts']) + 1}"
            prefix = next(v["inputs"]["filename_prefix"] for v in prompt.values() if v["class_type"] == "SaveVideo")
            st["prompts"].append((pid, prefix, time.monotonic()))
            if st.get("die_after") is not None and len(st["prompts"]) == 1:
                threading.Timer(st["die_after"], st["kill"]).start()
            return self._reply(200, {"prompt_id": pid, "number": len(st["prompts"]), "node_errors": {}})
        self._reply(404, {})

    def do_GET(self):
        st, now = self.state, time.monotonic()
        if self.path in ("/queue", "/prompt"):  # (GET /prompt: the depth, as ComfyUI's get_queue_info says it)
            waiting = [[0, pid] for pid, _, t in st["prompts"] if now - t < st["delay"]]
            if self.path == "/prompt":
                return self._reply(200, {"exec_info": {"queue_remaining": len(waiting)}})
            return self._reply(200, {"queue_running": waiting[:1], "queue_pending": waiting[1:]})
        pid = self.path.rsplit("/", 1)[-1]
        for p, prefix, t in st["prompts"]:
            if p == pid and now - t >= st["delay"]:
                return self._reply(200, {pid: {"status": {"status_str": "success", "completed": True}, "outputs": {
                    "21": {"images": [{"filename": f"{prefix.split('/')[-1]}_00001_.mp4", "subfolder": "echomimic"}]}}}})
        self._reply(200, {})


def _start(tag: str, delay: float, die_after: float | None = None):
    state = {"tag": tag, "uploads": [], "prompts": [], "delay": delay, "die_after": die_after}
    url, state["kill"] = start(type("H", (StubComfy,), {"state": state}))
    return url, state


@pytest.fixture
def media(tmp_path):
    faces, speech = tmp_path / "faces", tmp_path / "speech"
    faces.mkdir()
    speech.mkdir()
    for name in ("anna.png", "bob.jpg"):
        (faces / name).write_bytes(b"img-" + name.encode())
    for name in ("hello.wav", "bye.mp3"):
        (speech / name).write_bytes(b"aud-" + name.encode())
    return faces, speech


def test_jobs_spread_by_queue_depth_and_a_dead_servers_jobs_are_resubmitted(media, tmp_path, monkeypatch):
    import echomimic_lib.jobs.batch.comfy_servers as cs

    monkeypatch.setattr(cs, "queue_spread", _fast(cs.queue_spread))
    url_a, a = _start("a", delay=0.3)
    url_b, b = _start("b", delay=60.0, die_after=0.5)  # takes jobs, then goes down before finishing any
    try:
        rc = queue_main([str(WORKFLOW), "--portraits", str(media[0]), "--audios", str(media[1]), "--server", url_a,
                         "--server", url_b, "--results", str(tmp_path / "out")])
    finally:
        a["kill"]()
    assert rc == 0
    assert len(b["prompts"]) == 2  # spread: B got half of the four jobs while it was up
    recs = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["status"] == "ok" and r["server"] == url_a for r in recs)
    moved = {prefix for _, prefix, _ in b["prompts"]}
    assert len(a["prompts"]) == 4 and moved <= {prefix for _, prefix, _ in a["prompts"]}  # B's jobs resubmitted to A
    by_name = {r["name"]: r for r in recs}
    for prefix in moved:
        rec = by_name[prefix.replace("/", "__")]
        assert rec["attempts"] == 2 and rec["output"] == f"echomimic/{prefix.split('/')[-1]}_00001_.mp4"
    assert sorted(a["uploads"]) == ["anna.png", "bob.jpg", "bye.mp3", "hello.wav"]  # each file once per server


def _fast(fn):
    def call(*args, **kw):
        kw.setdefault("poll", 0.05)
        return fn(*args, **kw)

    return call


def test_no_server_answers(media, tmp_path, capsys):
    rc = queue_main([str(WORKFLOW), "--portraits", str(media[0]), "--audios", str(media[1]), "--server",
                     "http://127.0.0.1:9", "--server", "http://127.0.0.1:7", "--results", str(tmp_path)])
    assert rc == 1
    recs = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["status"] == "error" and "no ComfyUI server answers" in r["error"] for r in recs)
