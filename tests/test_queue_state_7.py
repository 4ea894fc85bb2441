"""``echomimic queue``, round 7: on a live server, ``--resume`` sees an input replaced under its name (the plan's
inputs mark, not only the upload name the server chose); ``--resume`` with one unreachable server lists the finished
jobs from the state and names the server and the jobs left; and what a daily batch queuer runs into."""
from __future__ import annotations

import pytest

from tests.test_batch_hunt_5 import WORKFLOW, _comfy_handler, _queue, media  # noqa: F401  (fixtures)
from tests.test_queue_state_5 import _saved, no_wait, servers  # noqa: F401  (fixtures)
from tests.test_queue_state_6 import _replace


# ------------------------------------------------------------------------------- 1. an input replaced, same server
@pytest.mark.parametrize("same_size", [False, True])
def test_resume_on_the_same_live_server_renders_again_only_the_job_whose_input_was_replaced(servers, media, capsys,
                                                                                           no_wait, same_size):
    """The server gives the replaced file its old name back (an upload that overwrites, an input folder cleaned since):
    the prompt is the same text, but the job is not the same; before, its old video was listed."""
    url, state, _ = servers()
    assert _queue(url, media, "--wait") == 0
    _replace(media[0] / "anna.png", b"another picture of anna", same_size)
    capsys.readouterr()
    assert _queue(url, media, "--resume") == 0
    out = capsys.readouterr().out
    assert state["prompts"] == ["p1", "p2", "p3"]  # anna's job only (bob's is unchanged: listed, not rendered)
    assert "anna.png x hello.wav -> echomimic/anna__hello [p3] echomimic/p3.mp4" in out, out
    assert "bob.png x hello.wav -> echomimic/bob__hello [p2] echomimic/p2.mp4" in out, out
    rec = _saved(media[0] / ".echomimic_queue.json")["servers"][url]["echomimic/anna__hello"]
    assert rec["prompt_id"] == "p3" and rec["attempts"] == 1
    assert _queue(url, media, "--resume") == 0  # and once rendered, it is finished
    assert state["prompts"] == ["p1", "p2", "p3"]


def test_resume_over_several_live_servers_renders_again_only_the_job_whose_input_was_replaced(servers, media, tmp_path,
                                                                                             capsys, no_wait):
    from tests.test_queue_state_5 import _records

    a_url, a_state, _ = servers()
    b_url, b_state, _ = servers()
    results = ["--results", str(tmp_path / "r")]
    assert _queue(a_url, media, "--server", b_url, *results) == 0
    done = a_state["prompts"] + b_state["prompts"]
    _replace(media[0] / "anna.png", b"another picture of anna")
    assert _queue(a_url, media, "--server", b_url, *results, "--resume") == 0
    assert len(a_state["prompts"] + b_state["prompts"]) == len(done) + 1  # anna's job only (before: none)
    recs = {r["name"]: r for r in _records(tmp_path / "r")}
    assert recs["echomimic__anna__hello"]["status"] == "ok" and not recs["echomimic__anna__hello"].get("resumed")
    assert recs["echomimic__bob__hello"]["status"] == "ok" and recs["echomimic__bob__hello"].get("resumed")


# ------------------------------------------------------------------------------- 2. --resume, the one server unreachable
def test_resume_with_the_one_server_unreachable_lists_the_finished_jobs_and_names_those_left(servers, media, capsys,
                                                                                           no_wait):
    url, state, stop = servers({"p2": "error"})
    assert _queue(url, media, "--wait") == 1  # anna's job finished (p1), bob's failed (p2)
    (media[0] / "carl.png").write_bytes(b"img-carl")  # a portrait added since
    before = _saved(media[0] / ".echomimic_queue.json")["servers"]
    stop()
    capsys.readouterr()
    assert _queue(url, media, "--resume") == 2
    out, err = capsys.readouterr()
    assert "anna.png x hello.wav -> echomimic/anna__hello [p1] echomimic/p1.mp4" in out, (out, err)  # (before: nothing)
    assert "bob.png x hello.wav -> echomimic/bob__hello [p2]" in out and "CUDA out of memory" in out, out
    assert "carl" not in out
    assert f"cannot reach ComfyUI at {url}" in err and "is it running" in err, err
    assert "1 of 3 job(s) finished" in err and "1 failed" in err, err
    assert "not queued: carl.png x hello.wav" in err and "--resume" in err.splitlines()[-1], err
    assert "Traceback" not in err
    assert _saved(media[0] / ".echomimic_queue.json")["servers"] == before  # nothing lost


def test_resume_with_the_one_server_unreachable_and_nothing_finished_is_the_one_line_as_before(servers, media, capsys):
    url, _, stop = servers()
    stop()
    assert _queue(url, media, "--resume") == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and f"cannot reach ComfyUI at {url}" in err, err


# ------------------------------------------------------------------------------- 3. a workflow that cannot run
def _counting(state: dict):
    """The stand-in ComfyUI, counting the uploads it takes."""
    base = _comfy_handler(state)

    class Counting(base):
        def do_POST(self):
            if self.path == "/upload/image":
                state["uploads"] = state.get("uploads", 0) + 1
            return super().do_POST()

    return Counting


def _edited(tmp_path, edit) -> str:
    import json

    flow = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    edit(flow)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(flow), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("several", [False, True])
def test_a_link_to_a_node_id_no_longer_in_the_workflow_is_refused_before_any_upload(servers, media, tmp_path, capsys,
                                                                                    several):
    from echomimic_lib.jobs.queue_client import main as queue_main

    def dangle(flow):
        del flow["4"]  # EchoMimicReferencePrep, still linked from the sampler's reference and mask
    url, state, _ = servers(handler=_counting)
    extra = ["--server", servers(handler=_counting)[0], "--results", str(tmp_path / "r")] if several else ["--wait"]
    code = queue_main([_edited(tmp_path, dangle), "--portraits", str(media[0]), "--audios", str(media[1]), "--server",
                       url, *extra])
    err = capsys.readouterr().err
    assert code == 2 and state.get("uploads", 0) == 0 and state["prompts"] == [], (code, err, state)
    assert "node 6 (EchoMimicSampler)" in err and "'reference'" in err and "node 4" in err, err
    assert "Export (API)" in err, err


def test_a_workflow_with_no_load_image_node_is_refused_before_any_upload(servers, media, tmp_path, capsys):
    from echomimic_lib.jobs.queue_client import main as queue_main

    def no_image(flow):
        del flow["1"]
        flow["4"]["inputs"]["image"] = "anna.png"  # (no link left to it)
    url, state, _ = servers(handler=_counting)
    code = queue_main([_edited(tmp_path, no_image), "--portraits", str(media[0]), "--audios", str(media[1]), "--server",
                       url, "--wait"])
    err = capsys.readouterr().err
    assert code == 2 and state.get("uploads", 0) == 0, (code, err, state)  # (before: both files uploaded first)
    assert "no LoadImage node" in err, err


# ------------------------------------------------------------------------------- 4. many jobs
def test_the_state_is_written_one_job_a_line_by_json_s_c_encoder(servers, media, monkeypatch):
    """The state file is rewritten after each prompt: with thousands of jobs, Python's own encoder (``indent``) took
    most of a run's time (800 jobs: 84 of 132 s in json's _iterencode_dict); one job a line keeps it readable."""
    import json

    url, state, _ = servers()

    def slow(*args, **kwargs):
        raise AssertionError("the state was encoded with json's pure-Python encoder")
    monkeypatch.setattr(json.encoder, "_make_iterencode", slow)
    assert _queue(url, media, "--wait") == 0
    text = (media[0] / ".echomimic_queue.json").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if '"prompt_id"' in line]
    assert len(lines) == 2 and all(line.strip().startswith('"echomimic/') for line in lines), text
    assert json.loads(text)["servers"][url]["echomimic/anna__hello"]["files"] == ["echomimic/p1.mp4"]


def test_a_second_run_on_the_same_jobs_is_refused_naming_the_first_also_with_many_jobs(tmp_path):
    """The check of another live run's jobs takes one pass (it was one set of the other run's jobs per job of this
    run: 30 000 jobs each, about 10^9 steps)."""
    from echomimic_lib.jobs.queue_state import QueueState, StateInUse

    prefixes = [f"echomimic/p{i}__a" for i in range(3000)]
    first = QueueState(tmp_path / "state.json")
    first.claim(prefixes)
    built = []

    class Counting(set):
        def __init__(self, *a):
            built.append(1)
            super().__init__(*a)
    import builtins
    real = builtins.set
    builtins.set = Counting
    try:
        with pytest.raises(StateInUse, match="3000 of the same job"):
            QueueState(tmp_path / "state.json").claim(prefixes)
    finally:
        builtins.set = real
    first.release()
    assert len(built) < 10, len(built)  # (before: one per job, 3002)


def test_the_state_is_parsed_again_only_when_another_run_wrote_it(servers, media, monkeypatch):
    """Each prompt rewrites the state: it was parsed again each time too (10 000 jobs: 0.17 s a write), also when no
    other run had touched it; a record another run writes meanwhile is still kept."""
    from echomimic_lib.jobs import queue_state

    reads, real = [], queue_state.read_state
    monkeypatch.setattr(queue_state, "read_state", lambda path: reads.append(path) or real(path))
    url, _, _ = servers()
    assert _queue(url, media, "--wait") == 0
    assert len(reads) <= 2, len(reads)  # (the run's first look and its claim; before: 8, one per write)
    path = media[0] / ".echomimic_queue.json"
    book = queue_state.QueueState(path)
    book.record(url, "echomimic/anna__hello", "f", "p9")
    other = queue_state.QueueState(path)  # another run, writing between two of this one's writes
    other.record(url, "echomimic/carl__hello", "f", "p7")
    book.record(url, "echomimic/bob__hello", "f", "p8")
    saved = _saved(path)["servers"][url]
    assert {k: v["prompt_id"] for k, v in saved.items()} == {"echomimic/anna__hello": "p9", "echomimic/bob__hello": "p8",
                                                             "echomimic/carl__hello": "p7"}


# ------------------------------------------------------------------------------- 5. an output prefix ComfyUI refuses
@pytest.mark.parametrize("prefix", ["../renders", "/srv/renders", "", "day1/../..", "day1/./x", "C:/renders", "\\\\nas\\x"])
@pytest.mark.parametrize("several", [False, True])
def test_a_prefix_outside_comfyui_s_output_folder_is_refused_before_any_upload(servers, media, tmp_path, capsys, prefix,
                                                                               several):
    """ComfyUI refuses to save outside its output folder only when the video is rendered (each job's GPU time lost);
    an empty --prefix made every job's prefix absolute (/anna__hello)."""
    url, state, _ = servers(handler=_counting)
    extra = ["--server", servers(handler=_counting)[0], "--results", str(tmp_path / "r")] if several else ["--wait"]
    assert _queue(url, media, "--prefix", prefix, *extra) == 2
    err = capsys.readouterr().err
    assert state.get("uploads", 0) == 0 and state["prompts"] == [], state
    assert f"--prefix {prefix!r}" in err and "output folder" in err and "echomimic" in err, err


def test_a_nested_prefix_is_kept(servers, media, capsys):
    url, state, _ = servers()
    assert _queue(url, media, "--prefix", "clients/day 1", "--dry-run") == 0
    assert "-> clients/day 1/anna__hello [dry run]" in capsys.readouterr().out
    assert _queue(url, media, "--prefix", "clients/", "--dry-run") == 0  # (a trailing slash: ComfyUI takes it)


# ------------------------------------------------------------------------------- 6. a 500 while a prompt was sent
def _failing_prompt(state: dict, which: int):
    """The stand-in ComfyUI, whose ``which``-th POST /prompt answers 500 (after taking it: ComfyUI may have queued it)."""
    base = _comfy_handler(state)

    class Failing(base):
        def do_POST(self):
            if self.path == "/prompt":
                state["posts"] = state.get("posts", 0) + 1
                if state["posts"] == which:
                    self.rfile.read(int(self.headers["Content-Length"]))
                    return self._text(500, "500 Internal Server Error\n\nServer got itself in trouble")
            return super().do_POST()

    return Failing


@pytest.mark.parametrize("which", [1, 2])
def test_a_500_to_a_prompt_says_it_may_be_queued_not_that_it_was_not(servers, media, capsys, which):
    url, state, _ = servers(handler=lambda s: _failing_prompt(s, which))
    assert _queue(url, media, "--wait") == 2
    err = capsys.readouterr().err
    job = ["anna.png", "bob.png"][which - 1] + " x hello.wav"
    assert "HTTP 500" in err and f"The prompt of {job} was being sent to {url}" in err and "may be queued" in err, err
    assert f"not queued: {job}" not in err and "--resume" in err, err  # (before: listed as not queued)
